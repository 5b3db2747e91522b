"""Sends the calls made on one event loop: a request is on its way to Redis by the time
``.remote()`` returns, as in Ray (issue 12).

Ray's ``.remote()`` hands the request to the router's own event loop thread, which sends
it at once, whatever the calling coroutine does next. Here the calling loop sends it
itself: each op (an ``Add`` that puts its commands in a batch, a ``Done`` that takes the
reply of the first) is written on the loop's :class:`~broker.sendline.SendLine` the
moment it is posted: packed, and handed to the connection's transport, whose ``write``
tries ``send()`` at once. So the bytes are in the kernel before ``.remote()`` returns:
no hop to another thread, no round trip, nothing that blocks the loop. One reader task
takes the replies in the order the ops were written and calls each op's ``Done`` on the
loop.

Why not the alternatives:

- one pipeline per loop step (what this replaced): everything posted during a step went
  out at the start of the next, so a coroutine that called ``.remote()`` and then did
  blocking or long work delayed its own request by that long;
- a sender thread, as Ray's router loop: a thread hop per call (tens of microseconds
  and the GIL), on every call, to protect against a blocked loop;
- sending on the threads' sync client from the loop: a blocking round trip on the loop.

Writing each op at once costs one ``send()`` per op where a step's pipeline cost one per
step; Redis still reads whatever has arrived in one go, and answers everything one read
brought in one write, so under load the round trips stay batched.

The line is not always there: it is opened with the sender (on the loop's first call),
and again after it was lost. Meanwhile ops go out as before, in one pipeline per loop step, which redis-py
retries across a reconnect. A lost line fails the ops it had not answered with the
error, as a failed pipeline does; the next op opens another (or, if opening failed, the
first op ``RECONNECT_PAUSE_S`` later). A NOSCRIPT reply (Redis restarted, its script
cache empty) runs that op's script calls again on the loop's client, loading the script.
Order: ops written on the line reach Redis in the order they were posted; an op sent by
the step pipeline while the line was opening may reach it after a later op written on
the new line (no order is promised between calls of different steps).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from broker import scripts
from broker.sendline import Line

from . import bridge

logger = logging.getLogger("actors.runtime.caller")

#: Seconds to wait after failing to open a line before trying again (ops go out by the
#: step pipeline meanwhile); also the pause of a listener after losing Redis.
RECONNECT_PAUSE_S = 0.5

#: Adds an operation's commands to a batch; ``Done`` gets the reply of the first (or the
#: error).
Add = Callable[[scripts.Batch], None]
Done = Callable[[Any], None]


class LoopSender:
    """Sends the ops posted on one event loop, on its line, or by step while it has none."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Any,
                 open_line: Callable[[Any], Awaitable[Line]]) -> None:
        self.loop = loop
        self.client = client  # the loop's redis.asyncio client: step pipelines, script reloads
        self._open_line = open_line
        self._line: Line | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # held while they run
        self._line_tasks: list[asyncio.Task[None]] = []  # opening and reading the line
        self._opening = False
        self._retry_at = 0.0
        self._closed = False
        self._stepped: bridge.StepBatch[tuple[Add, Done]] = bridge.StepBatch(loop, self._flush)
        self._open()  # now: the loop's first call is on its way

    def post(self, add: Add, done: Done) -> None:
        """Send an op from the loop's thread: at once if the line is up, else with the
        others posted during this step."""
        line = self._line
        if line is not None and line.ready:
            batch = scripts.Batch()
            add(batch)
            if len(batch):
                line.send(batch, (batch, done))
            else:
                _call(done, None)
            return
        self._stepped.post((add, done))
        if line is None:
            self._open()

    def close(self) -> None:
        """Stop reading and close the line; on the loop's thread. Ops not answered yet are
        left as they are, as the loop's end leaves them."""
        self._closed = True
        for task in self._line_tasks:
            task.cancel()

    # The line ------------------------------------------------------------------------------
    def _open(self) -> None:
        if self._opening or self._closed or self.loop.time() < self._retry_at:
            return
        self._opening = True
        self._line_tasks = [self._start(self._connect())]

    def _start(self, coro: Any) -> asyncio.Task[None]:
        # A context of its own: the task outlives the request whose call started it.
        task = contextvars.Context().run(self.loop.create_task, coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _connect(self) -> None:
        try:
            line = await self._open_line(self.client)
        except Exception as e:  # Redis unreachable (or refusing us): step pipelines have retries
            self._retry_at = self.loop.time() + RECONNECT_PAUSE_S
            logger.info("mqserve: could not open a send line (%s); sending by step meanwhile", e)
            return
        finally:
            self._opening = False
        if self._closed:
            await line.close()
            return
        self._line = line
        self._line_tasks = [self._start(self._read(line))]

    async def _read(self, line: Line) -> None:
        try:
            while True:
                (batch, done), replies = await line.next()
                if scripts.unloaded(replies):  # Redis restarted: load the script, run it again
                    replies = await batch.retry_async(self.client, replies)
                _call(done, replies[0])
        except Exception as e:
            unanswered = line.abandon()
            if not isinstance(e, (redis.RedisError, OSError)):  # a bug; the line may be out of step
                logger.exception("mqserve: reading a send line failed; %d call(s) fail", len(unanswered))
            elif unanswered:
                logger.warning("mqserve: send line lost Redis (%s); %d call(s) fail", e, len(unanswered))
            else:  # idle: e.g. Redis's idle client timeout; the next call opens another
                logger.info("mqserve: send line closed (%s)", e)
            for _, done in unanswered:
                _call(done, e)
        finally:
            if self._line is line:
                self._line = None
            await line.close()

    # By step --------------------------------------------------------------------------------
    def _flush(self, ops: list[tuple[Add, Done]]) -> None:
        self._start(self._execute(ops))

    async def _execute(self, ops: list[tuple[Add, Done]]) -> None:
        batch = scripts.Batch()
        starts = []
        for add, _ in ops:
            starts.append(len(batch))
            add(batch)
        try:
            results = await batch.execute_async(self.client)
        except (redis.RedisError, OSError) as e:
            results = [e] * len(batch)
        ends = starts[1:] + [len(batch)]
        for (_, done), start, end in zip(ops, starts, ends):
            _call(done, results[start] if start < end else None)


def _call(done: Done, reply: Any) -> None:
    """Give an op its reply; a failing ``Done`` must not stop the others'."""
    try:
        done(reply)
    except Exception:
        logger.exception("mqserve: handling the reply of a call failed")
