"""MQSERVE_SECRET: sealed blobs, and refusal of unsigned or forged ones before unpickling."""

from __future__ import annotations

import pickle

import pytest

from broker import codec


class Boom:
    ran = False

    def __reduce__(self):
        return (Boom._explode, ())

    @staticmethod
    def _explode():
        Boom.ran = True


def test_without_a_secret_blobs_are_plain(monkeypatch) -> None:
    monkeypatch.delenv("MQSERVE_SECRET", raising=False)
    assert codec.seal(b"abc") == b"abc"
    assert codec.decode_outcome(codec.encode_value(5)) == (True, 5)


def test_signed_round_trip_and_refusals(monkeypatch) -> None:
    monkeypatch.setenv("MQSERVE_SECRET", "s3cret")
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
    monkeypatch.setenv("MQSERVE_SECRET", "other")
    with pytest.raises(codec.ForgedMessageError, match="does not match"):
        codec.decode_request(raw)
    monkeypatch.delenv("MQSERVE_SECRET")
    with pytest.raises(codec.ForgedMessageError, match="without it"):
        codec.decode_request(raw)
    assert not Boom.ran
