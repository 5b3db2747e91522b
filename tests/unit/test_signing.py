"""MQSERVE_SECRET: sealed blobs, and refusal of unsigned or forged ones before unpickling."""

from __future__ import annotations

import pickle

import pytest

from actors.config import Settings
from broker import codec


class Boom:
    ran = False

    def __reduce__(self):
        return (Boom._explode, ())

    @staticmethod
    def _explode():
        Boom.ran = True


def test_without_a_secret_blobs_are_plain() -> None:
    codec.use_secret(None)
    assert codec.seal(b"abc") == b"abc"
    assert codec.decode_outcome(codec.encode_value(5)) == (True, 5)


def test_signed_round_trip_and_refusals() -> None:
    codec.use_secret("s3cret")
    raw = codec.encode_request(req_id="a" * 32, method="__call__", payload=b"x")
    assert codec.decode_request(raw)["message_id"] == "a" * 32
    assert codec.decode_outcome(codec.encode_value([1, 2])) == (True, [1, 2])
    forged = pickle.dumps(Boom())
    with pytest.raises(codec.ForgedMessageError, match="unsigned"):
        codec.decode_request(forged)
    with pytest.raises(codec.ForgedMessageError, match="unsigned"):
        codec.decode_outcome(forged)
    tampered = raw[:-1] + bytes([raw[-1] ^ 1])
    with pytest.raises(codec.ForgedMessageError, match="does not match"):
        codec.decode_request(tampered)
    codec.use_secret("other")
    with pytest.raises(codec.ForgedMessageError, match="does not match"):
        codec.decode_request(raw)
    codec.use_secret(None)
    with pytest.raises(codec.ForgedMessageError, match="without it"):
        codec.decode_request(raw)
    assert not Boom.ran


def test_the_secret_is_a_setting_that_is_never_printed() -> None:
    settings = Settings.from_env({"MQSERVE_SECRET": "hunter2"})
    assert settings.secret == "hunter2" and "hunter2" not in repr(settings)
    assert Settings.from_env({}).secret is None
