"""A connection that puts commands on the wire the moment they are sent, and reads their
replies in order.

redis-py's asyncio client writes a command only once its coroutine runs, and a caller
on an event loop cannot run one without yielding to the loop. A :class:`SendLine` writes
synchronously instead: :meth:`SendLine.send` packs a :class:`~broker.scripts.Batch` and
hands its bytes to the connection's transport, whose ``write`` tries ``send()`` at once,
so the commands are in the kernel before ``send`` returns, without a round trip and
without blocking. Several batches may go in one write. Redis answers the commands of
one connection in the order it got them, so one reader (:meth:`SendLine.next`) matches
replies to batches by position.

The line is one connection of its own (made by the client's pool, with the client's
settings: password, TLS, client name, database; not lent to anything else). Error
replies come back as exception objects, as a pipeline's do with
``raise_on_error=False``; a NOSCRIPT among them is for the sender to deal with (see
:meth:`broker.scripts.Batch.retry_async`). A lost connection is not reopened: the line
is done (:attr:`SendLine.ready` is False), the batches it did not answer are given back
by :meth:`SendLine.abandon`, and the owner opens another. An op is a batch and whatever
its sender keeps with it (here, what to do with the reply).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import redis
from redis.exceptions import ResponseError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .scripts import Batch

#: How the reply of one command is parsed: its name and its options (redis-py's).
_Parse = tuple[Any, dict[str, Any]]


class Line(Protocol):
    """What a sender needs of a line (a :class:`SendLine`, or a test's fake)."""

    @property
    def ready(self) -> bool:
        """Whether :meth:`send` may be called: the connection is up, as far as is known."""

    def send(self, ops: Sequence[tuple[Batch, Any]]) -> None:
        """Write the batches of these ops (a batch and anything; no batch empty) now, in
        one write; :meth:`next` gives each op back with its replies."""

    async def next(self) -> tuple[tuple[Batch, Any], list[Any]]:
        """The oldest op not answered yet, with one reply per command of its batch;
        raises ``redis.ConnectionError`` (or ``OSError``) once the connection is lost."""

    def abandon(self) -> list[tuple[Batch, Any]]:
        """The ops sent and not answered; the line sends nothing more."""

    async def close(self) -> None:
        """Close the connection."""


class SendLine:
    """One connection of a ``redis.asyncio`` client, for writing commands at once."""

    def __init__(self, client: aioredis.Redis, conn: Any) -> None:
        self._callbacks = client.response_callbacks
        self._conn = conn
        self._waiting: deque[tuple[tuple[Batch, Any], list[_Parse]]] = deque()
        self._lost = False

    @classmethod
    async def open(cls, client: aioredis.Redis) -> SendLine:
        """Connect a new line with ``client``'s settings; raises ``redis.RedisError`` or
        ``OSError`` if Redis cannot be reached."""
        conn = client.connection_pool.make_connection()
        await conn.connect()
        return cls(client, conn)

    @property
    def ready(self) -> bool:
        writer = self._conn._writer
        return not self._lost and writer is not None and not writer.transport.is_closing()

    def send(self, ops: Sequence[tuple[Batch, Any]]) -> None:
        packed: list[tuple[Any, ...]] = []
        for op in ops:
            commands = op[0].commands()
            packed += [args for args, _ in commands]
            self._waiting.append((op, [(args[0], options) for args, options in commands]))
        self._conn._writer.writelines(self._conn.pack_commands(packed))

    async def next(self) -> tuple[tuple[Batch, Any], list[Any]]:
        # Read before looking at what waits: while nothing does, this notices a lost
        # connection at once.
        reply = await self._read()
        if not self._waiting:
            self._lost = True
            raise redis.ConnectionError("a reply came for no command sent on this line")
        op, parses = self._waiting[0]
        replies = [self._parse(reply, parses[0])]
        for parse in parses[1:]:
            replies.append(self._parse(await self._read(), parse))
        self._waiting.popleft()
        return op, replies

    def abandon(self) -> list[tuple[Batch, Any]]:
        self._lost = True
        ops = [op for op, _ in self._waiting]
        self._waiting.clear()
        return ops

    async def close(self) -> None:
        self._lost = True
        await self._conn.disconnect(nowait=True)

    async def _read(self) -> Any:
        try:
            return await self._conn.read_response()
        except ResponseError as e:  # an error reply: the connection is fine
            return e
        except BaseException:
            self._lost = True
            raise

    def _parse(self, reply: Any, parse: _Parse) -> Any:
        name, options = parse
        callback = self._callbacks.get(name)
        if callback is None or isinstance(reply, ResponseError):
            return reply
        return callback(reply, **options)
