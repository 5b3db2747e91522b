"""An app for the request timeout tests: it answers after ``?s=`` seconds."""
import asyncio

from starlette.requests import Request

from actors import serve


@serve.deployment
class Sleeper:
    async def __call__(self, request: Request) -> str:
        await asyncio.sleep(float(request.query_params.get("s", "0")))
        return "awake"


app = Sleeper.bind()
