"""Request messages and outcomes survive the trip through bytes."""

from __future__ import annotations

import threading

import dramatiq

from broker import codec


def test_request_round_trip_is_a_dramatiq_message() -> None:
    payload = codec.encode_args((1, "a"), {"k": [1, 2]})
    raw = codec.encode_request(req_id="r" * 32, method="m", payload=payload, refs=("x" * 32,), reply_to="inbox")
    message = dramatiq.Message(**codec.decode_request(raw))
    assert message.actor_name == codec.REQUEST_ACTOR
    assert message.message_id == "r" * 32
    assert message.args == ("m", payload, ("x" * 32,))
    assert message.options == {"reply_to": "inbox", "stream": False, "http": False}


def test_decode_refuses_foreign_messages() -> None:
    import pickle

    import pytest

    with pytest.raises(ValueError):
        codec.decode_request(pickle.dumps({"actor_name": "other"}))


def test_values_round_trip_including_closures() -> None:
    k = 3
    ok, fn = codec.decode_outcome(codec.encode_value(lambda x: x * k))
    assert ok and fn(2) == 6
    assert codec.decode_outcome(codec.encode_value(None)) == (True, None)
    assert codec.decode_outcome(codec.encode_value({"a": (1, 2.5)})) == (True, {"a": (1, 2.5)})


def test_error_keeps_the_exception_and_traceback() -> None:
    try:
        raise KeyError("missing")
    except KeyError as e:
        blob = codec.encode_error(e)
    ok, failure = codec.decode_outcome(blob)
    assert not ok
    assert isinstance(failure.exception, KeyError)
    assert "raise KeyError" in failure.traceback
    assert failure.type_name == "builtins.KeyError"


def test_unpicklable_exception_falls_back_to_type_and_message() -> None:
    class Holding(Exception):
        pass

    exc = Holding("has a lock")
    exc.lock = threading.Lock()  # type: ignore[attr-defined]
    ok, failure = codec.decode_outcome(codec.encode_error(exc))
    assert not ok and failure.exception is None
    assert failure.exc_type is not None and failure.exc_type.__name__ == "Holding"
    assert failure.message == "has a lock"


def test_code_pickled_by_value_keeps_its_file_name(tmp_path, monkeypatch) -> None:
    """cloudpickle 3.1.3 renames every shipped function's file to "<dynamic-code>";
    remote tracebacks need the real name (and line numbers) back, nested code too."""
    import importlib
    import pickle
    import sys
    import traceback

    import cloudpickle
    import pytest

    path = tmp_path / "shipped_mod.py"
    path.write_text("def outer(n):\n    def inner():\n        raise KeyError(n)\n    return inner\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("shipped_mod")
    cloudpickle.register_pickle_by_value(module)
    try:
        blob = codec.dumps(module.outer)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        sys.modules.pop("shipped_mod")
    outer = pickle.loads(blob)
    assert outer.__module__ == "shipped_mod" and "shipped_mod" not in sys.modules  # came by value
    assert outer.__code__.co_filename == str(path)
    with pytest.raises(KeyError) as info:
        outer(3)()
    frame = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (frame.filename, frame.lineno, frame.line) == (str(path), 3, "raise KeyError(n)")


def test_the_user_visible_request_id_travels_only_when_it_is_not_the_call_s_own() -> None:
    # A call that starts a request (a driver's, or the gateway's without X-Request-Id)
    # uses its own id: nothing more is written.
    own = codec.decode_request(codec.encode_request(req_id="a" * 32, method="m", payload=b""))
    assert codec.REQUEST_ID_OPTION not in own["options"]
    assert codec.request_id_of(own["message_id"], own["options"]) == "a" * 32
    # A call made while serving a request carries that request's id.
    child = codec.decode_request(codec.encode_request(req_id="b" * 32, method="m", payload=b"",
                                                      request_id="client-id-1"))
    assert codec.request_id_of(child["message_id"], child["options"]) == "client-id-1"


def test_is_error_reads_the_outcome_tag_sealed_or_not() -> None:
    assert not codec.is_error(codec.encode_value(1))
    assert codec.is_error(codec.encode_error(ValueError("x")))
    codec.use_secret("s3cret")
    try:
        assert codec.is_error(codec.encode_error(ValueError("x")))
        assert not codec.is_error(codec.encode_value(1))
    finally:
        codec.use_secret(None)
    assert not codec.is_error(b"")  # a streamed call's outcome
