"""broker.pickled: argument types read from pickle opcodes, with nothing unpickled."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import os
import pickle

import numpy as np
import pytest

from broker import codec, pickled


@dataclasses.dataclass
class Point:
    x: int = 1


class _Trap:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize("args, kwargs, expected", [
    ((), {}, []),
    ((1, "a", b"x", None, True, 2.5, [1], (1,), {1: 2}, {3}, frozenset(), bytearray(b"x")), {},
     ["int", "str", "bytes", "None", "bool", "float", "list", "tuple", "dict", "set", "frozenset", "bytearray"]),
    ((np.arange(3), np.arange(6).reshape(2, 3).T, np.float64(2.0), np.int32(3)), {"z": np.zeros(2, dtype=object)},
     ["numpy.ndarray", "numpy.ndarray", "numpy.float64", "numpy.int32", "z=numpy.ndarray"]),
    ((Point(), collections.OrderedDict(a=1), datetime.date(2026, 1, 1)), {"f": lambda x: x},
     [f"{__name__}.Point", "collections.OrderedDict", "datetime.date", "f=function"]),
])
def test_argument_types(args, kwargs, expected) -> None:
    assert pickled.describe_call(codec.encode_args(args, kwargs)) == expected


def test_a_class_defined_by_value_is_named_after_its_module_and_name() -> None:
    class Local:
        pass

    assert pickled.describe_call(codec.encode_args((Local(),), {})) == [f"{__name__}.Local"]


def test_nothing_is_run(tmp_path) -> None:
    target = str(tmp_path / "made")
    payload = codec.encode_args((_Trap(target),), {})
    assert pickled.describe_call(payload) == ["posix.mkdir"]
    assert not os.path.exists(target)
    pickle.loads(payload)  # the same bytes, unpickled, would have run it
    assert os.path.exists(target)


def test_http_snapshots_show_method_and_path() -> None:
    snapshot = {"path": "/orders/7", "method": "POST", "headers": [(b"a", b"b")], "body": b"{}"}
    payload = pickle.dumps(((snapshot,), {}), protocol=pickle.HIGHEST_PROTOCOL)
    assert pickled.describe_http(payload) == "HTTP POST /orders/7"
    assert pickled.describe_http(pickle.dumps(((dict(snapshot, method=None),), {}))) == "HTTP /orders/7"
    assert pickled.describe_http(b"junk", "WebSocket") == "WebSocket"


@pytest.mark.parametrize("payload", [b"", b"junk", pickle.dumps(((1,), {}))[:-3], pickle.dumps([1, 2])])
def test_what_cannot_be_followed_is_a_question_mark(payload: bytes) -> None:
    assert pickled.describe_call(payload) == ["?"]
