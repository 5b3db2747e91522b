# File name: hello_client.py  (Ray Serve's client for `serve run hello:language_classifier`)
# Run `mqserve run examples.hello:language_classifier` first, in another terminal.
import requests

response = requests.post(
    "http://localhost:8000", json={"language": "spanish", "name": "Dora"}
)
greeting = response.text
print(greeting)
