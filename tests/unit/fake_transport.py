"""An in-memory stand-in for a caller's Redis connections (:class:`broker.calls.Transport`).

It knows the few commands a caller sends, records every pipeline executed (a caller
sends each batch as one) and every batch written on an event loop's send line
(:class:`FakeLine`: run when written, answered when the test lets it), and keeps lists a
test pushes replies to, as replicas push them to a caller's inbox. Scripts do not run:
each answers what the test says it does (``answers``), or NOSCRIPT while it is in
``unloaded``, so a test sets the scene for one reply of Redis at a time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.exceptions import NoScriptError

from broker import calls, scripts

_SCRIPTS = {script.sha: script.name for script in scripts.ALL}
_SOURCES = {script.source: script.name for script in scripts.ALL}


@dataclass(frozen=True)
class Command:
    """One command or script call of a pipeline: a script by its file's name (``enqueue``)."""

    name: str
    args: tuple[Any, ...]
    keys: tuple[str, ...] = ()  # a script's keys
    options: dict[str, Any] = field(default_factory=dict)


class FakeRedis:
    """The sync client; :meth:`transport` also gives an asyncio client per event loop."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.lists: dict[str, deque[bytes]] = {}
        self.strings: dict[str, Any] = {}
        self.streams: dict[str, list[tuple[bytes, dict[bytes, bytes]]]] = {}
        #: Every pipeline executed, in order.
        self.batches: list[list[Command]] = []
        #: What each script (by name) or command answers: a value, an exception object
        #: (an error reply), or a function of the :class:`Command`.
        self.answers: dict[str, Any] = {"enqueue": 1, "watch": None, "cancel": 0, "settle": 0, "complete": 1,
                                        "lrem": 0, "withdraw": 0}
        #: Scripts whose pipeline fails as if the connection dropped, and those pipelines.
        self.severed: set[str] = set()
        self.lost: list[list[Command]] = []
        self.run_id = "run-1"
        self.xreads: list[dict[str, Any]] = []
        #: Lists a sync client is blocked on (in BLPOP) right now.
        self.waiting: set[str] = set()
        #: Scripts (by name) not in Redis's script cache: they answer NOSCRIPT until loaded.
        self.unloaded: set[str] = set()
        #: Every send line opened, in order; while ``refuse_lines`` is set, opening one
        #: raises it.
        self.lines: list[FakeLine] = []
        self.refuse_lines: Exception | None = None
        self.closed = False
        self._pushed: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def transport(self) -> calls.Transport:
        return calls.Transport(self, lambda: FakeAsyncRedis(self), self._open_line)  # type: ignore[arg-type]

    async def _open_line(self, client: FakeAsyncRedis) -> FakeLine:
        await asyncio.sleep(0)  # a connection takes a round trip or two
        if self.refuse_lines is not None:
            raise self.refuse_lines
        line = FakeLine(self)
        with self.cond:
            self.lines.append(line)
            self.cond.notify_all()
        return line

    # What a test does -----------------------------------------------------------------------
    def sent(self, name: str) -> list[Command]:
        """Every command or script call ``name`` executed so far."""
        with self.cond:
            return [c for batch in self.batches for c in batch if c.name == name]

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float = 5.0, what: str = "condition") -> Any:
        """Wait until ``predicate`` holds; it is checked again whenever a pipeline runs or a
        list changes."""
        with self.cond:
            value = self.cond.wait_for(predicate, timeout_s)
        if not value:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        return value

    def add_entries(self, key: str, *entries: dict[bytes, bytes]) -> None:
        with self.cond:
            stream = self.streams.setdefault(key, [])
            for fields in entries:
                stream.append((f"{len(stream) + 1}-0".encode(), fields))
            self.cond.notify_all()

    # The sync client --------------------------------------------------------------------------
    def pipeline(self, transaction: bool = False) -> _Pipeline:
        return _Pipeline(self)

    def time(self) -> tuple[int, int]:
        now = time.time()
        return int(now), int(now % 1 * 1_000_000)

    def blpop(self, keys: list[str], timeout: float) -> tuple[bytes, bytes] | None:
        with self.cond:
            self.waiting.update(keys)
            self.cond.notify_all()
            try:
                self.cond.wait_for(lambda: self._first(keys), timeout)
                return self._pop_first(keys)
            finally:
                self.waiting.difference_update(keys)

    def lpush(self, key: str, *values: bytes) -> int:
        with self.cond:
            items = self.lists.setdefault(key, deque())
            items.extendleft(values)
            self.cond.notify_all()
            pushed, self._pushed = self._pushed, []
        for loop, event in pushed:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed: nobody waits there
                pass
        return len(items)

    def delete(self, *keys: str) -> int:
        with self.cond:
            return self._remove(keys)

    def xread(self, streams: dict[str, Any], count: int | None = None, block: int | None = None) -> Any:
        with self.cond:
            self.xreads.append(dict(streams))
            self.cond.wait_for(lambda: self._unread(streams), (block or 0) / 1000)
            return self._unread(streams) or None

    def close(self) -> None:
        self.closed = True

    # Inside --------------------------------------------------------------------------------
    def execute(self, commands: list[Command]) -> list[Any]:
        with self.cond:
            if any(c.name in self.severed for c in commands):
                self.lost.append(commands)
                self.cond.notify_all()
                raise redis.ConnectionError("connection lost (fake)")
            self.batches.append(commands)
            results = [self._run(c) for c in commands]
            self.cond.notify_all()
        return results

    def _run(self, c: Command) -> Any:
        if c.name in self.unloaded:
            return NoScriptError("NOSCRIPT No matching script (fake)")
        if c.name in self.answers:
            answer = self.answers[c.name]
            return answer(c) if callable(answer) else answer
        if c.name == "set":
            if c.options.get("nx") and c.args[0] in self.strings:
                return None
            self.strings[c.args[0]] = c.args[1]
            return True
        if c.name == "get":
            return self.strings.get(c.args[0])
        if c.name in ("unlink", "delete"):
            return self._remove(c.args)
        if c.name == "lpop":
            items = self.lists.get(c.args[0])
            taken = [items.popleft() for _ in range(min(len(items), c.args[1]))] if items else []
            return taken or None
        if c.name == "info":
            return {"run_id": self.run_id}
        if c.name == "time":
            return self.time()
        if c.name == "script-load":
            return c.args[0]
        raise NotImplementedError(f"the fake does not know {c.name}")

    def _remove(self, keys: Iterable[str]) -> int:
        return sum(store.pop(k, None) is not None for k in keys for store in (self.strings, self.lists, self.streams))

    def _first(self, keys: list[str]) -> str | None:
        return next((k for k in keys if self.lists.get(k)), None)

    def _pop_first(self, keys: list[str]) -> tuple[bytes, bytes] | None:
        key = self._first(keys)
        return None if key is None else (key.encode(), self.lists[key].popleft())

    def _unread(self, streams: dict[str, Any]) -> list[Any]:
        out = []
        for key, last in streams.items():
            after = _entry_id(last)
            entries = [(i, f) for i, f in self.streams.get(key, []) if _entry_id(i) > after]
            if entries:
                out.append([key.encode(), entries])
        return out


class _Pipeline:
    def __init__(self, fake: FakeRedis) -> None:
        self.fake = fake
        self.commands: list[Command] = []

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        self.commands.append(Command(_SCRIPTS[sha], keys_and_args[numkeys:], keys_and_args[:numkeys]))

    def __getattr__(self, name: str) -> Callable[..., None]:
        def queue(*args: Any, **options: Any) -> None:
            self.commands.append(Command(name, args, options=options))
        return queue

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        results = self.fake.execute(self.commands)
        if raise_on_error:
            for res in results:
                if isinstance(res, Exception):
                    raise res
        return results


class _AsyncPipeline(_Pipeline):
    async def execute(self, raise_on_error: bool = True) -> list[Any]:  # type: ignore[override]
        return super().execute(raise_on_error)


class FakeAsyncRedis:
    """The asyncio client of one event loop, on the same data."""

    def __init__(self, fake: FakeRedis) -> None:
        self.fake = fake
        self.closed = False

    def pipeline(self, transaction: bool = False) -> _AsyncPipeline:
        return _AsyncPipeline(self.fake)

    async def blpop(self, keys: list[str], timeout: float) -> tuple[bytes, bytes] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            pushed = asyncio.Event()
            with self.fake.cond:  # listen before looking, or a push in between is missed
                self.fake._pushed.append((loop, pushed))
                item = self.fake._pop_first(keys)
            try:
                if item is not None or loop.time() >= deadline:
                    return item
                await asyncio.wait_for(pushed.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                pass
            finally:
                with self.fake.cond:
                    if (loop, pushed) in self.fake._pushed:
                        self.fake._pushed.remove((loop, pushed))

    async def xread(self, streams: dict[str, Any], count: int | None = None, block: int | None = None) -> Any:
        """Never blocks (it would block the loop): a test adds the entries before reading."""
        return self.fake.xread(streams, count, 0)

    async def delete(self, *keys: str) -> int:
        return self.fake.delete(*keys)

    async def script_load(self, source: str) -> str:
        name = _SOURCES[source]
        with self.fake.cond:
            self.fake.unloaded.discard(name)
        self.fake.execute([Command("script-load", (name,))])
        return name

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        (reply,) = self.fake.execute([Command(_SCRIPTS[sha], keys_and_args[numkeys:], keys_and_args[:numkeys])])
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def aclose(self) -> None:
        self.closed = True


class FakeLine:
    """An event loop's send line: a batch runs when it is written (it is recorded as a
    pipeline, in ``batches``, and in ``written``), and its replies come back in order, at
    once or, while ``held``, once the test calls :meth:`release`. :meth:`sever` drops the
    connection; so does writing a script in ``FakeRedis.severed``."""

    def __init__(self, fake: FakeRedis) -> None:
        self.fake = fake
        self.written: list[list[Command]] = []  # the batches, in order
        self.writes: list[int] = []  # how many batches each write held
        self.held = False
        self.lost = False
        self.closed = False
        self._replies: deque[tuple[Any, list[Any]]] = deque()
        self._changed = asyncio.Event()

    @property
    def ready(self) -> bool:
        return not self.lost and not self.closed

    def send(self, ops: list[tuple[scripts.Batch, Any]]) -> None:
        self.writes.append(len(ops))
        for op in ops:
            commands = [_command(args) for args, _ in op[0].commands()]
            self.written.append(commands)
            try:
                replies = self.fake.execute(commands)
            except redis.ConnectionError:
                self.sever()
            self._replies.append((op, [] if self.lost else replies))
        self._changed.set()

    def release(self) -> None:
        """Let the replies held so far (and later ones) come back."""
        self.held = False
        self._changed.set()

    def sever(self) -> None:
        self.lost = True
        self._changed.set()

    async def next(self) -> tuple[Any, list[Any]]:
        while self.lost or self.held or not self._replies:
            if self.lost:
                raise redis.ConnectionError("connection lost (fake line)")
            self._changed.clear()
            await self._changed.wait()
        return self._replies.popleft()

    def abandon(self) -> list[Any]:
        self.lost = True
        ops = [op for op, _ in self._replies]
        self._replies.clear()
        return ops

    async def close(self) -> None:
        self.closed = True
        with self.fake.cond:
            self.fake.cond.notify_all()


def _command(args: tuple[Any, ...]) -> Command:
    """A command as a :class:`FakeLine` gets it (packed by ``Batch.commands``)."""
    if args[0] == "EVALSHA":
        numkeys = args[2]
        return Command(_SCRIPTS[args[1]], args[3 + numkeys:], args[3:3 + numkeys])
    return Command(args[0].lower(), args[1:])


def _entry_id(entry_id: str | bytes) -> tuple[int, int]:
    ms, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")
    return int(ms), int(seq)
