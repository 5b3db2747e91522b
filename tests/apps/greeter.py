"""An app for the CLI tests: its greeting comes from user_config."""
from starlette.requests import Request

from actors import serve


@serve.deployment(user_config={"greeting": "Hello"})
class Greeter:
    def __init__(self) -> None:
        self.greeting = "unset"

    def reconfigure(self, config: dict) -> None:
        self.greeting = config["greeting"]

    async def __call__(self, request: Request) -> str:
        return f"{self.greeting} {request.query_params.get('name', 'you')}"


app = Greeter.bind()


@serve.deployment
class Broken:
    def __init__(self) -> None:
        raise ValueError("cannot load the model")


broken = Broken.bind()
not_an_app = 42
