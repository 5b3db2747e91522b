# Ray Serve's "Key Concepts" ingress examples (MostBasicIngress, FastAPIIngress); only imports changed.
# Needs `requests` and `fastapi` installed (pip install requests fastapi).
import requests
from starlette.requests import Request

from actors import serve


@serve.deployment
class MostBasicIngress:
    async def __call__(self, request: Request) -> str:
        name = (await request.json())["name"]
        return f"Hello {name}!"


app = MostBasicIngress.bind()
serve.run(app)
assert (
    requests.get("http://127.0.0.1:8000/", json={"name": "Corey"}).text
    == "Hello Corey!"
)
print(requests.get("http://127.0.0.1:8000/", json={"name": "Corey"}).text)

from fastapi import FastAPI  # noqa: E402
from fastapi.responses import PlainTextResponse  # noqa: E402

fastapi_app = FastAPI()


@serve.deployment
@serve.ingress(fastapi_app)
class FastAPIIngress:
    @fastapi_app.get("/{name}")
    async def say_hi(self, name: str) -> str:
        return PlainTextResponse(f"Hello {name}!")


app = FastAPIIngress.bind()
serve.run(app)
assert requests.get("http://127.0.0.1:8000/Corey").text == "Hello Corey!"
print(requests.get("http://127.0.0.1:8000/Corey").text)
