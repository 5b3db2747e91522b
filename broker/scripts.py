"""Lua scripts, loaded from ``broker/lua`` once and run by SHA.

redis-py's ``Script`` objects re-check ``SCRIPT EXISTS`` on every pipeline execution;
that is a round trip on the hot path, so we call EVALSHA ourselves and reload only on
``NOSCRIPT`` (after a Redis restart or ``SCRIPT FLUSH``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.commands.core import CoreCommands
from redis.exceptions import NoScriptError


def _lua(name: str) -> str:
    return resources.files(__package__).joinpath(f"lua/{name}.lua").read_text()


class Script:
    """One Lua file; call it on a client, or queue it on a pipeline.

    ``uses`` names Lua files of shared functions (``mux.lua``), each put in place of its
    marker line (``--@mux``) in the script, in order (a file put in may have markers of the
    files named after it: ``bg_enqueue.lua`` puts in ``enqueue.lua``, which uses ``mux.lua``):
    Redis has no ``require``, and one copy of the routing rules is safer than one per script.
    Where the marker stands matters, as Lua creates the functions each time it passes there:
    ``enqueue.lua`` has it in the branch of multiplexed deployments only, so other requests
    do not pay for them."""

    def __init__(self, name: str, *, uses: Sequence[str] = ()) -> None:
        self.name = name
        self.source = _lua(name)
        for lib in uses:
            marker = f"--@{lib}\n"
            if marker not in self.source:
                raise ValueError(f"lua/{name}.lua uses {lib}.lua but has no '--@{lib}' line to put it in")
            self.source = self.source.replace(marker, _lua(lib), 1)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def __call__(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    def queue(self, pipe: Any, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Add a call to ``pipe`` (a :class:`Batch` runs it again if the script was not loaded)."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)


ENQUEUE = Script("enqueue", uses=("mux",))
COMPLETE = Script("complete")
WATCH = Script("watch")
CANCEL = Script("cancel", uses=("mux",))
WITHDRAW = Script("withdraw", uses=("mux",))
REQUEUE = Script("requeue", uses=("mux",))
SETTLE = Script("settle")
LEAD = Script("lead")
RESIGN = Script("resign")
TAKE = Script("take")
RERANK = Script("rerank")
# Background requests (broker/background.py); enqueue.lua runs unchanged inside bg_enqueue.lua.
BG_ENQUEUE = Script("bg_enqueue", uses=("bg", "enqueue", "mux"))
BG_START = Script("bg_start", uses=("bg",))
BG_COMPLETE = Script("bg_complete", uses=("bg",))
BG_READ = Script("bg_read", uses=("bg",))
BG_CANCEL = Script("bg_cancel", uses=("bg", "mux"))
ALL = (ENQUEUE, COMPLETE, WATCH, CANCEL, WITHDRAW, REQUEUE, SETTLE, LEAD, RESIGN, TAKE, RERANK,
       BG_ENQUEUE, BG_START, BG_COMPLETE, BG_READ, BG_CANCEL)


def complete(batch: Batch, keys: Any, req_id: str, outcome: bytes, *, reply_to: str, processing_key: str,
             raw: bytes, ttl_ms: int, publish: bool = True) -> None:
    """Queue ``complete.lua`` for one request: publish its outcome (unless ``publish`` is
    off: a streamed response) and drop ``raw`` from ``processing_key``."""
    batch.script(COMPLETE,
                 (keys.result(req_id), keys.watchers(req_id), processing_key, reply_to, keys.detached(req_id),
                  keys.reads(req_id), keys.cancelled(req_id)),
                 (req_id, outcome, ttl_ms, raw, 1 if publish else 0))


def load_all(client: redis.Redis) -> None:
    """Load every script, so that pipelines can use EVALSHA straight away."""
    for script in ALL:
        client.script_load(script.source)


class Batch:
    """Commands and script calls sent in one pipeline (one round trip).

    After a Redis restart the script cache is empty and every EVALSHA answers NOSCRIPT;
    only those calls are run again (loading the script), so nothing runs twice.
    Errors of single commands come back as exception objects in the result list.
    """

    def __init__(self) -> None:
        #: (script, "", (keys, args)) for a script call; (None, name, (args, options)) for a command.
        self._calls: list[tuple[Script | None, str, tuple[Any, ...]]] = []

    def __len__(self) -> int:
        return len(self._calls)

    def script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
        self._calls.append((script, "", (tuple(keys), tuple(args))))

    def command(self, name: str, *args: Any, **options: Any) -> None:
        self._calls.append((None, name, (args, options)))

    def extend(self, other: Batch) -> None:
        """Add ``other``'s calls after these (their results follow these results)."""
        self._calls.extend(other._calls)

    def execute(self, client: redis.Redis) -> list[Any]:
        results: list[Any] = self._fill(client.pipeline(transaction=False)).execute(raise_on_error=False)
        for i, script, args in self._noscript(results):
            try:
                results[i] = script(client, *args)
            except redis.RedisError as e:
                results[i] = e
        return results

    async def execute_async(self, client: Any) -> list[Any]:
        """The same on a ``redis.asyncio`` client."""
        results: list[Any] = await self._fill(client.pipeline(transaction=False)).execute(raise_on_error=False)
        return await self.retry_async(client, results)

    async def retry_async(self, client: Any, results: list[Any]) -> list[Any]:
        """Run again, on a ``redis.asyncio`` client, the calls whose result in ``results``
        (this batch's, however it was sent) is NOSCRIPT, loading their scripts first."""
        for i, script, (keys, args) in self._noscript(results):
            try:
                await client.script_load(script.source)
                results[i] = await client.evalsha(script.sha, len(keys), *keys, *args)
            except redis.RedisError as e:
                results[i] = e
        return results

    def commands(self) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        """Each call as redis-py would send it: the command's arguments, and the options
        its reply is parsed with. For a connection that writes them by hand."""
        out: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        for script, name, call in self._calls:
            if script is None:
                args, options = call
                out.append(getattr(_ARGS, name)(*args, **options))
            else:
                keys, args = call
                out.append((("EVALSHA", script.sha, len(keys), *keys, *args), {}))
        return out

    def _fill(self, pipe: Any) -> Any:
        for script, name, call in self._calls:
            if script is None:
                args, options = call
                getattr(pipe, name)(*args, **options)
            else:
                script.queue(pipe, *call)
        return pipe

    def _noscript(self, results: list[Any]) -> list[tuple[int, Script, Any]]:
        return [(i, script, args) for i, (script, _, args) in enumerate(self._calls)
                if script is not None and isinstance(results[i], NoScriptError)]


def unloaded(results: list[Any]) -> bool:
    """Whether a script call among ``results`` found its script not loaded (NOSCRIPT)."""
    return any(isinstance(res, NoScriptError) for res in results)


class _Arguments(CoreCommands):
    """redis-py's command methods, returning the arguments and options they would send."""

    _event_dispatcher: Any = None  # declared by redis-py's command protocol; unused here

    def execute_command(self, *args: Any, **options: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, options


_ARGS = _Arguments()
