"""Sends the calls made on one event loop: a request is on its way to Redis by the time
``.remote()`` returns, as in Ray (issue 12), and the calls of one loop step still share
one write.

Ray's ``.remote()`` hands the request to the router's own event loop thread, which sends
it at once, whatever the calling coroutine does next. Here the calling loop sends it
itself, on its :class:`~broker.sendline.SendLine`: a connection of its own, written
synchronously (asyncio's ``write`` tries ``send()`` at once). An op is an ``Add`` that
puts its commands in a batch and a ``Done`` that takes the reply of the first:

- the first op of a loop step is written before ``post`` returns: its bytes are in the
  kernel, with no hop to another thread, no round trip, nothing that blocks the loop;
- the others of that step are held, and written together when the step ends (at the
  start of the next), in one write;
- if the step lasts more than ``OVERRUN_S`` (user code blocking the loop), a thread
  (:class:`~actors.runtime.bridge.Overrun`) takes the ops held and sends them on the
  threads' client, whatever the loop is doing.

One reader task takes the line's replies in the order the ops were written and calls
each op's ``Done`` on the loop (that of an op the thread sent runs on the thread, as a
thread's own calls do).

Why hold the others: writing every op at once costs a ``send()`` per op instead of one
per step, and Redis then wakes for each, reads and answers each alone, and so does the
reader here: on the send path alone (64 coroutines calling in a loop, 2-core VM) that
was about 40 % more CPU per call in the caller and three times as much in Redis, where
a step's write is about as cheap as the pipeline it replaced. Holding costs latency
only while the step runs on: the held ops wait for the coroutines the step still
resumes (microseconds to a millisecond or so), and at most ``OVERRUN_S`` plus a GIL
hand-over if the step blocks. A coroutine that calls ``.remote()`` alone in its step
and then blocks (the case of issue 12) has its request written at once.

Why not the alternatives:

- one pipeline per loop step for every op (what this replaced): a coroutine that called
  ``.remote()`` and then did blocking or long work delayed its own request by that long;
- every op written at once: the cost above, on every call of a busy loop;
- a sender thread for every op, as Ray's router loop: a thread hop per call (tens of
  microseconds and the GIL), on every call, to protect against a blocked loop;
- sending on the threads' sync client from the loop: a blocking round trip on the loop.

The line is not always there: it is opened with the sender (on the loop's first call),
and again after it was lost. Meanwhile, every op is held and goes out at the end of its
step (or by the thread) in one pipeline on the loop's client, which redis-py retries
across a reconnect. A lost line fails the ops it had not answered with the error, as a
failed pipeline does; the next op opens another (or, if opening failed, the first op
``RECONNECT_PAUSE_S`` later). A NOSCRIPT reply (Redis restarted, its script cache
empty) runs that op's script calls again on the loop's client, loading the script.
Order: the ops written on one line reach Redis in the order they were posted; an op
sent by a pipeline or by the thread may reach it after a later op (no order is promised
between calls in flight together).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
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
#: Longest a loop step may run on before a thread sends the ops it holds. Longer than
#: the steps of a busy loop (each resumes many coroutines), far shorter than work that
#: blocks.
OVERRUN_S = 0.01
OVERRUN = bridge.Overrun(OVERRUN_S)

#: Adds an operation's commands to a batch; ``Done`` gets the reply of the first (or the
#: error).
Add = Callable[[scripts.Batch], None]
Done = Callable[[Any], None]
#: An op: its commands, and what takes the reply.
Op = tuple[scripts.Batch, Done]


class LoopSender:
    """Sends the ops posted on one event loop: the first of each step at once on the
    loop's line, the others at the end of the step (see the module's docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Any, sync_client: redis.Redis,
                 open_line: Callable[[Any], Awaitable[Line]]) -> None:
        self.loop = loop
        self.client = client  # the loop's redis.asyncio client: pipelines, script reloads
        self.sync_client = sync_client  # the threads' client: ops sent by the overrun thread
        self._open_line = open_line
        self._line: Line | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # held while they run
        self._line_tasks: list[asyncio.Task[None]] = []  # opening and reading the line
        self._opening = False
        self._retry_at = 0.0
        self._closed = False
        self._in_step = False  # an op was posted in this step (its end is scheduled)
        self._held: list[Op] = []  # ops of this step not sent yet; the overrun thread may take them
        self._lock = threading.Lock()  # for _held
        self._open()  # now: the loop's first call is on its way

    def post(self, add: Add, done: Done) -> None:
        """Send an op from the loop's thread: at once if it is the first of this step
        and the line is up, else with the end of the step."""
        batch = scripts.Batch()
        add(batch)
        if not len(batch):
            _call(done, None)
            return
        line = self._line
        if not self._in_step:
            self._in_step = True
            self.loop.call_soon(self._end_step)
            if line is not None and line.ready:
                line.send([(batch, done)])
                return
        with self._lock:
            self._held.append((batch, done))
            first = len(self._held) == 1
        if first:
            OVERRUN.arm(self, self._take_over)
        if line is None:
            self._open()

    def close(self) -> None:
        """Stop reading and close the line; on the loop's thread. Ops not answered yet are
        left as they are, as the loop's end leaves them."""
        self._closed = True
        for task in self._line_tasks:
            task.cancel()

    # The end of a step, or its overrun ------------------------------------------------------
    def _end_step(self) -> None:
        self._in_step = False
        with self._lock:
            ops, self._held = self._held, []
        if not ops:
            return
        OVERRUN.disarm(self)
        line = self._line
        if line is not None and line.ready:
            line.send(ops)
        else:
            self._start(self._execute(ops))

    def _take_over(self) -> None:
        """On the overrun thread: the step still runs; send what it holds from here."""
        with self._lock:
            ops, self._held = self._held, []
        if not ops:
            return
        batch, starts = _merged(ops)
        try:
            results = batch.execute(self.sync_client)
        except redis.RedisError as e:
            results = [e] * len(batch)
        _deliver(ops, starts, results)

    async def _execute(self, ops: list[Op]) -> None:
        batch, starts = _merged(ops)
        try:
            results = await batch.execute_async(self.client)
        except (redis.RedisError, OSError) as e:
            results = [e] * len(batch)
        _deliver(ops, starts, results)

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

def _merged(ops: list[Op]) -> tuple[scripts.Batch, list[int]]:
    """One batch of the ops' commands, and where each op's begin in it."""
    batch = scripts.Batch()
    starts = []
    for one, _ in ops:
        starts.append(len(batch))
        batch.extend(one)
    return batch, starts


def _deliver(ops: list[Op], starts: list[int], results: list[Any]) -> None:
    for (_, done), start in zip(ops, starts):
        _call(done, results[start])


def _call(done: Done, reply: Any) -> None:
    """Give an op its reply; a failing ``Done`` must not stop the others'."""
    try:
        done(reply)
    except Exception:
        logger.exception("mqserve: handling the reply of a call failed")
