"""What travels through Redis: request messages and outcomes, as bytes.

A request message is a Dramatiq message (the fields of ``dramatiq.Message``) pickled
with plain pickle: it holds only strings, numbers and one opaque ``payload`` blob,
the cloudpickled call arguments, which the replica unpickles after resolving any
chained results. An outcome is one tag byte and a cloudpickle blob.

Whoever can write to Redis could make a process unpickle anything. With
``MQSERVE_SECRET`` set, every blob that will be unpickled (messages, outcomes, stream
entries, deployment code) is sealed with an HMAC-SHA256 of the secret, and
:func:`unseal` refuses unsigned or forged blobs *before* anything is unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import pickle
import traceback
import types
import uuid
from collections import ChainMap
from dataclasses import dataclass
from typing import Any

import cloudpickle

from . import clock
from .errors import ForgedMessageError

#: Name of the Dramatiq actor every replica declares; all requests go to it.
REQUEST_ACTOR = "mqserve_request"
#: Dramatiq queue name of requests (each replica consumes one deployment's queue).
REQUEST_QUEUE = "serve"
#: Length of a request id: a UUID4 in hex.
REQUEST_ID_LEN = 32
#: The message option holding the user-visible request id (when it is not the message id).
REQUEST_ID_OPTION = "request_id"
#: The message option of a background request: the TTL (ms) of its outcome and record.
BACKGROUND_OPTION = "background"
#: The message option holding the request's deadline (Redis time, ms), when it has one.
DEADLINE_OPTION = "deadline_ms"


logger = logging.getLogger("mqserve.codec")

_OK = b"o"
_ERR = b"e"
#: Marks a sealed blob; no pickle starts with a NUL byte.
_SEAL = b"\x00mq1"
_MAC_LEN = 32


_key: bytes | None = None


def use_secret(secret: str | None) -> None:
    """Seal and check every blob with ``secret`` from now on (None: seal nothing). Each
    process sets it once as it starts, from its settings (``MQSERVE_SECRET``)."""
    global _key
    _key = secret.encode() if secret else None


def seal(data: bytes) -> bytes:
    """``data`` with an HMAC of the secret in front (unchanged without a secret)."""
    key = _key
    if key is None:
        return data
    return _SEAL + hmac.new(key, data, hashlib.sha256).digest() + data


def unseal(data: bytes) -> bytes:
    """The body of a sealed blob, checked; raises (and logs) :class:`ForgedMessageError`."""
    try:
        return _unseal(data)
    except ForgedMessageError as e:
        logger.error("mqserve: %s", e)
        raise


def _unseal(data: bytes) -> bytes:
    key = _key
    sealed = data.startswith(_SEAL)
    if key is None:
        if sealed:
            raise ForgedMessageError("a message signed with MQSERVE_SECRET reached a process without it: "
                                     "set the same MQSERVE_SECRET on every mqserve process")
        return data
    if not sealed:
        raise ForgedMessageError("refused an unsigned message (MQSERVE_SECRET is set here, so every "
                                 "mqserve process must have the same secret)")
    start = len(_SEAL) + _MAC_LEN
    body = data[start:]
    if not hmac.compare_digest(data[len(_SEAL):start], hmac.new(key, body, hashlib.sha256).digest()):
        raise ForgedMessageError("refused a message whose signature does not match MQSERVE_SECRET")
    return body


def new_request_id() -> str:
    return uuid.uuid4().hex


def encode_request(
    *,
    req_id: str,
    method: str,
    payload: bytes,
    refs: tuple[str, ...] = (),
    reply_to: str = "",
    stream: bool = False,
    http: bool = False,
    socket: bool = False,
    model: str = "",
    request_id: str | None = None,
    background_ttl_ms: int = 0,
    deadline_ms: int = 0,
) -> bytes:
    """The queued form of one call; ``reply_to`` is the caller's inbox key.

    ``stream``: the outcome goes to the request's stream (a generator call).
    ``http``: the payload is an HTTP request snapshot for the ingress (see gateway).
    ``socket``: ... of a WebSocket connection (``broker.sockets``), never run twice.
    ``model``: the multiplexed model id (``options["multiplexed_model_id"]``, only if set).
    ``deadline_ms``: when the request must be done by, in Redis's time (ms; 0: none).
    ``request_id``: the user-visible request id (``X-Request-Id``), shared by every call
    made while serving one request; only written when given, as a call that starts a
    request (from a driver, or the gateway without the header) uses its own id
    ``req_id`` (see :func:`request_id_of`), so it costs nothing there.
    ``background_ttl_ms``: a background request (``options["background"]``, only if set),
    whose outcome and status record are kept that long (``broker.background``).
    ``message_timestamp`` is Redis's time in ms (see :mod:`broker.clock`), as the
    replica that judges the request's age may run on a machine whose clock differs;
    0 if this process has not read Redis's clock yet (age unknown).
    """
    sent_at = clock.now()
    options: dict[str, Any] = {"reply_to": reply_to, "stream": stream, "http": http}
    if socket:
        options["socket"] = True
    if model:
        options["multiplexed_model_id"] = model
    if background_ttl_ms:
        options[BACKGROUND_OPTION] = int(background_ttl_ms)
    if deadline_ms:
        options[DEADLINE_OPTION] = deadline_ms
    if request_id is not None and request_id != req_id:
        options[REQUEST_ID_OPTION] = request_id
    return seal(pickle.dumps(
        {
            "queue_name": REQUEST_QUEUE,
            "actor_name": REQUEST_ACTOR,
            "args": (method, payload, refs),
            "kwargs": {},
            "options": options,
            "message_id": req_id,
            "message_timestamp": 0 if sent_at is None else int(sent_at * 1000),
        },
        protocol=pickle.HIGHEST_PROTOCOL,
    ))


def request_id_of(message_id: str, options: dict[str, Any]) -> str:
    """The user-visible request id of a decoded message (see :func:`encode_request`)."""
    return options.get(REQUEST_ID_OPTION) or message_id


def retried_request(fields: dict[str, Any]) -> bytes:
    """The message of a decoded request again, counting one more attempt (``options["attempt"]``)."""
    options = {**fields["options"], "attempt": int(fields["options"].get("attempt", 0)) + 1}
    return seal(pickle.dumps({**fields, "options": options}, protocol=pickle.HIGHEST_PROTOCOL))


def decode_request(data: bytes) -> dict[str, Any]:
    """The fields of a queued message, ready for ``dramatiq.Message(**fields)``."""
    fields = pickle.loads(unseal(data))
    if not isinstance(fields, dict) or fields.get("actor_name") != REQUEST_ACTOR:
        raise ValueError("not an mqserve request message")
    return fields


#: Types plain pickle handles exactly as cloudpickle does, ten times faster.
_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})


_cloudpickle_code_reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _code_reduce(code: types.CodeType) -> Any:
    """Pickle a code object as cloudpickle does, but keep its file name.

    cloudpickle 3.1.3 writes ``co_filename = "<dynamic-code>"`` into every function it
    pickles by value (for deterministic bytes), which leaves remote tracebacks and
    ``mqserve run`` errors without the user's file and line. The name is put back on
    the other side; the bytes stay deterministic for the same source file.
    """
    ctor, args = _cloudpickle_code_reduce(code)
    return _code_with_filename, (ctor, args, code.co_filename)


def _code_with_filename(ctor: Any, args: tuple[Any, ...], filename: str) -> types.CodeType:
    code: types.CodeType = ctor(*args)
    return code if code.co_filename == filename else code.replace(co_filename=filename)


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle ships no types: its Pickler is Any
    dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)


def dumps(obj: Any) -> bytes:
    """cloudpickle, keeping the source file names of code pickled by value: the one
    pickler for everything that may hold user code (arguments, results, exceptions,
    stream items, deployment specs)."""
    with io.BytesIO() as out:
        _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return out.getvalue()



def encode_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    if all(type(a) in _PLAIN for a in args) and all(type(v) in _PLAIN for v in kwargs.values()):
        return pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    return dumps((args, kwargs))


def decode_args(payload: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args, kwargs = pickle.loads(payload)
    return args, kwargs


def encode_value(value: Any) -> bytes:
    """An outcome holding a return value; raises if the value cannot be pickled."""
    if type(value) in _PLAIN:
        return seal(_OK + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    return seal(_OK + dumps(value))


@dataclass(frozen=True)
class RemoteFailure:
    """An exception raised on a replica, with what is needed to raise it again here.

    ``exception`` is the original object when it survived pickling both ways;
    otherwise ``exc_type`` (the class, if it could be pickled) and ``type_name`` and
    ``message`` let the caller build a stand-in.
    """

    exception: BaseException | None
    exc_type: type | None
    type_name: str
    message: str
    traceback: str


def encode_error(exc: BaseException) -> bytes:
    """An outcome holding an exception; never fails, whatever the exception holds."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc_blob = _try_dumps(exc)
    type_blob = _try_dumps(type(exc))
    parts = (exc_blob, type_blob, f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), tb)
    return seal(_ERR + pickle.dumps(parts, protocol=pickle.HIGHEST_PROTOCOL))


def decode_outcome(data: bytes) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, RemoteFailure)``."""
    data = unseal(data)
    tag, body = data[:1], data[1:]
    if tag == _OK:
        return True, pickle.loads(body)
    if tag == _ERR:
        exc_blob, type_blob, type_name, message, tb = pickle.loads(body)
        return False, RemoteFailure(_try_loads(exc_blob), _try_loads(type_blob), type_name, message, tb)
    raise ValueError(f"unknown outcome tag {tag!r}")


def failure_summary(outcome: bytes) -> tuple[str, str] | None:
    """The exception type's name and message of an error outcome (None for a value),
    without unpickling the exception or its class: for status records and the CLI."""
    if not is_error(outcome):
        return None
    _, _, type_name, message, _ = pickle.loads(unseal(outcome)[1:])
    return str(type_name), str(message)


def is_error(outcome: bytes) -> bool:
    """Whether an outcome holds an exception, from its tag alone (for access logs: no
    seal check, nothing unpickled)."""
    start = len(_SEAL) + _MAC_LEN if outcome.startswith(_SEAL) else 0
    return outcome[start:start + 1] == _ERR


def error_summary(outcome: bytes) -> tuple[str, str]:
    """The exception type's qualified name and message of an error outcome, reading only
    the plain strings stored beside the pickled exception (which stays unpickled)."""
    exc_blob, type_blob, type_name, message, tb = pickle.loads(unseal(outcome)[1:])
    return str(type_name), str(message)


def _try_dumps(obj: Any) -> bytes | None:
    try:
        return dumps(obj)
    except Exception:
        return None


def _try_loads(blob: bytes | None) -> Any:
    if blob is None:
        return None
    try:
        return pickle.loads(blob)
    except Exception:
        return None
