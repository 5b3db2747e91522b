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
