"""What a pickled call holds, read from its opcodes without running it.

``mqserve queue --peek`` shows operators what a waiting request carries. Unpickling a
request's arguments would run whatever its pickle asks for (any callable, with any
arguments), in the operator's process and with the operator's rights, and would need
the application's code and dependencies installed there. So nothing here calls
``pickle.loads``: :func:`pickletools.genops` parses the opcodes (it only reads bytes),
and a small abstract machine follows the pickle's stack far enough to name the type of
each top-level argument (``int``, ``str``, ``numpy.ndarray``, ``myapp.Order``). Strings
are kept as the data they are, so an HTTP snapshot (plain values, see
``gateway/app.py``) shows its method and path.

A pickle this machine does not follow (an opcode it does not know, a truncated blob)
is described as ``?``: the operator sees less, never something wrong.
"""

from __future__ import annotations

import pickletools
from dataclasses import dataclass, field
from typing import Any

from .errors import BrokerError

#: Items kept per container: enough to name the arguments, bounded for huge lists.
_KEEP = 64

#: Callables whose result is an instance of their first argument (a class).
_INSTANCE_OF_FIRST = ("copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__",
                      "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
#: Callables that build a numpy array from a buffer (numpy's pickle protocol 5 path).
_NDARRAY = ("numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer")
#: numpy's scalar constructor: its first argument is the dtype.
_NUMPY_SCALAR = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
#: numpy dtype codes as numpy names its scalar types.
_DTYPES = {"b1": "bool", "i1": "int8", "i2": "int16", "i4": "int32", "i8": "int64", "u1": "uint8",
           "u2": "uint16", "u4": "uint32", "u8": "uint64", "f2": "float16", "f4": "float32", "f8": "float64",
           "c8": "complex64", "c16": "complex128"}

_SCALARS = {
    "int": ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"),
    "float": ("FLOAT", "BINFLOAT"),
    "str": ("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"),
    "bytes": ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8"),
    "bytearray": ("BYTEARRAY8",),
}
_SCALAR_OF = {name: kind for kind, names in _SCALARS.items() for name in names}


class Unreadable(BrokerError, ValueError):
    """The pickle uses something this reader does not follow."""


@dataclass
class Value:
    """One value on the abstract stack: its type's name, and what we could keep of it."""

    type: str
    #: str, int, bool constants (data, never code); a global's or a class's dotted name.
    value: Any = None
    items: list[Value] = field(default_factory=list)
    pairs: list[tuple[Value, Value]] = field(default_factory=list)
    #: A global (a class or a function), or a class built by value (cloudpickle).
    is_global: bool = False


_MARK = Value("<mark>")


def describe_call(payload: bytes) -> list[str]:
    """The type of each argument of a pickled ``(args, kwargs)`` call payload
    (``codec.encode_args``): ``["int", "numpy.ndarray", "scale=float"]``; ``["?"]`` if
    the pickle could not be followed."""
    call = _call(payload)
    if call is None:
        return ["?"]
    args, kwargs = call
    return [_name(a) for a in args.items] + [f"{k.value}={_name(v)}" for k, v in kwargs.pairs]


def describe_http(payload: bytes, label: str = "HTTP") -> str:
    """``"HTTP GET /path"`` for the payload of an HTTP request (its snapshot of plain
    values, ``gateway/app.py``; ``label`` "WebSocket" for a connection), or the label
    alone if it cannot be read."""
    call = _call(payload)
    if call is None or not call[0].items or call[0].items[0].type != "dict":
        return label
    snapshot = {k.value: v.value for k, v in call[0].items[0].pairs if k.type == "str"}
    words = [label, snapshot.get("method"), snapshot.get("path")]
    return " ".join(w for w in words if isinstance(w, str) and w)


def _call(payload: bytes) -> tuple[Value, Value] | None:
    try:
        top = read(payload)
    except Unreadable:
        return None
    if top.type != "tuple" or len(top.items) != 2 or top.items[0].type != "tuple" or top.items[1].type != "dict":
        return None
    return top.items[0], top.items[1]


def _name(v: Value) -> str:
    return v.type[len("builtins."):] if v.type.startswith("builtins.") else v.type


def read(data: bytes) -> Value:
    """The abstract value a pickle would build; raises :class:`Unreadable`."""
    stack: list[Value] = []
    memo: dict[int, Value] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name == "STOP":
                if len(stack) != 1:
                    raise Unreadable("the pickle did not end with one value")
                return stack[0]
            _step(name, arg, stack, memo)
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as e:
        raise Unreadable(str(e)) from None
    raise Unreadable("the pickle has no STOP")


def _step(name: str, arg: Any, stack: list[Value], memo: dict[int, Value]) -> None:  # noqa: C901 - one opcode table
    kind = _SCALAR_OF.get(name)
    if kind is not None:
        stack.append(Value(kind, arg if kind in ("str", "int") else None))
    elif name in ("PROTO", "FRAME", "READONLY_BUFFER"):
        pass
    elif name == "MARK":
        stack.append(_MARK)
    elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
        stack.append(Value("None") if name == "NONE" else Value("bool", name == "NEWTRUE"))
    elif name == "NEXT_BUFFER":
        stack.append(Value("buffer"))
    elif name in ("EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
        stack.append(Value(name[len("EMPTY_"):].lower()))
    elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
        n = int(name[-1])
        items, stack[-n:] = stack[-n:], []
        stack.append(Value("tuple", items=items))
    elif name in ("TUPLE", "LIST", "FROZENSET"):
        stack.append(Value(name.lower(), items=_pop_mark(stack)[:_KEEP]))
    elif name == "DICT":
        flat = _pop_mark(stack)
        stack.append(Value("dict", pairs=list(zip(flat[::2], flat[1::2]))[:_KEEP]))
    elif name in ("APPEND", "APPENDS", "ADDITEMS"):
        items = [stack.pop()] if name == "APPEND" else _pop_mark(stack)
        target = stack[-1]
        target.items.extend(items[:max(0, _KEEP - len(target.items))])
    elif name in ("SETITEM", "SETITEMS"):
        flat = stack[-2:] if name == "SETITEM" else _pop_mark(stack)
        if name == "SETITEM":
            del stack[-2:]
        target = stack[-1]
        target.pairs.extend(list(zip(flat[::2], flat[1::2]))[:max(0, _KEEP - len(target.pairs))])
    elif name == "POP":
        stack.pop()
    elif name == "POP_MARK":
        _pop_mark(stack)
    elif name == "DUP":
        stack.append(stack[-1])
    elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
        memo[int(arg)] = stack[-1]
    elif name == "MEMOIZE":
        memo[len(memo)] = stack[-1]
    elif name in ("GET", "BINGET", "LONG_BINGET"):
        stack.append(memo[int(arg)])
    elif name in ("GLOBAL", "INST"):
        module, _, qualname = str(arg).partition(" ")
        ref = Value(f"{module}.{qualname}", is_global=True)
        stack.append(ref if name == "GLOBAL" else _instance(ref, _pop_mark(stack)))
    elif name == "STACK_GLOBAL":
        attr, owner = stack.pop(), stack.pop()
        stack.append(Value(f"{owner.value}.{attr.value}", is_global=True))
    elif name in ("EXT1", "EXT2", "EXT4"):
        stack.append(Value("extension", is_global=True))
    elif name == "REDUCE":
        args = stack.pop()
        stack.append(_called(stack.pop(), args))
    elif name == "NEWOBJ":
        args = stack.pop()
        stack.append(_instance(stack.pop(), args.items))
    elif name == "NEWOBJ_EX":
        del stack[-2:]  # kwargs, args
        stack.append(_instance(stack.pop(), []))
    elif name == "OBJ":
        cls, *built = _pop_mark(stack)
        stack.append(_instance(cls, built))
    elif name == "BUILD":
        stack.pop()  # the state: the object keeps its type
    elif name in ("PERSID", "BINPERSID"):
        if name == "BINPERSID":
            stack.pop()
        stack.append(Value("persistent"))
    else:
        raise Unreadable(f"opcode {name} is not followed")


def _pop_mark(stack: list[Value]) -> list[Value]:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items, stack[i:] = stack[i + 1:], []
            return items
    raise Unreadable("MARK expected")


def _instance(cls: Value, args: list[Value]) -> Value:
    """An object built by calling ``cls``: named after the class when we know it."""
    return Value(cls.type if cls.is_global else "?")


def _called(fn: Value, args: Value) -> Value:
    """What ``fn(*args)`` returns, as far as its name tells."""
    name, items = fn.type, args.items
    if not fn.is_global:
        return Value("?")
    if name.endswith(("._make_skeleton_class", "._make_skeleton_enum")) and len(items) > 1:
        # cloudpickle builds a class defined by value: (type, name, bases, namespace, ...)
        module = next((v.value for k, v in (items[3].pairs if len(items) > 3 else []) if k.value == "__module__"),
                      None)
        return Value(f"{module}.{items[1].value}" if isinstance(module, str) else str(items[1].value),
                     is_global=True)
    if name.endswith("._class_setstate") and items:
        return items[0]  # returns the class it completed
    if name.endswith(("._make_function", "._make_cell", "._builtin_type")):
        return Value("function" if name.endswith("._make_function") else "?", is_global=name.endswith("_type"))
    if name in _INSTANCE_OF_FIRST and items:
        return _instance(items[0], items[1:])
    if name in _NDARRAY:
        return Value("numpy.ndarray")
    if name in _NUMPY_SCALAR and items:
        code = items[0].value if items[0].type == "numpy.dtype" else None
        return Value(f"numpy.{_DTYPES.get(code, 'generic')}" if isinstance(code, str) else "numpy.generic")
    if name == "numpy.dtype" and items:
        return Value("numpy.dtype", items[0].value)
    return Value(name)
