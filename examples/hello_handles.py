"""Deploy examples/hello.py and call its responders through Python handles.

Run from the repository root: ``python examples/hello_handles.py``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from actors import serve  # noqa: E402
from examples.hello import language_classifier  # noqa: E402

serve.run(language_classifier)
spanish = serve.get_deployment_handle("SpanishResponder")
french = serve.get_deployment_handle("FrenchResponder")
print(spanish.say_hello.remote("Dora").result())
print(french.options(method_name="say_hello").remote("Dora").result())
serve.shutdown()
