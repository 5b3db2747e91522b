"""`mqserve queue`: depth, --peek, --drop and --purge against a real cluster (issue 14, part 3).

A `Gate` deployment has one slot; a call tagged "hold" keeps it until the test releases
it, so the calls after it wait in the queue. Each call the deployment runs appends its
tag to a Redis list the test reads: a dropped request must never appear there.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest
import redis

from actors import serve
from actors.exceptions import RequestCancelledError
from actors.runtime import cli
from broker import codec
from tests.cluster import poll
from tests.conftest import ROOT


@serve.deployment(max_ongoing_requests=1)
class Gate:
    def __init__(self, redis_url: str, ran_key: str) -> None:
        self.redis = redis.Redis.from_url(redis_url)
        self.ran_key = ran_key

    def __call__(self, tag: str, *extra) -> str:
        self.redis.rpush(self.ran_key, tag)
        if tag == "hold":
            self.redis.blpop([self.ran_key + ":release"], timeout=60)
        return tag


@pytest.fixture
def gate(serve_instance, redis_url: str, namespace: str, monkeypatch):
    """The Gate app with its slot held; yields (app name, client, ran key, namespace). The
    hold is released at the end, whatever happened."""
    monkeypatch.setenv("MQSERVE_REDIS_URL", redis_url)  # the CLI's Redis, as an operator would set it
    app = f"gate{uuid.uuid4().hex[:6]}"
    ran_key = f"{namespace}:test:{app}:ran"
    handle = serve.run(Gate.bind(redis_url, ran_key), name=app, route_prefix=None)
    client = redis.Redis.from_url(redis_url)
    held = handle.remote("hold")
    poll(lambda: client.lrange(ran_key, 0, -1) == [b"hold"], what="the slot to be held")
    try:
        yield app, handle, client, ran_key
    finally:
        client.lpush(ran_key + ":release", 1)
        assert held.result(timeout_s=30) == "hold"
        serve.delete(app)
        client.delete(ran_key, ran_key + ":release")


def _cli(capsys, *args: str) -> tuple[int, dict | str]:
    code = cli.main(list(args))
    out = capsys.readouterr().out
    return code, (json.loads(out) if "--json" in args and code == 0 else out)


def _queued(capsys, app: str) -> int:
    _, report = _cli(capsys, "queue", "--json")
    return next(d["queued"] for d in report["deployments"] if d["app"] == app)


def _message(args: tuple, kwargs: dict, *, sent_ms: int, reply_to: str, deadline_ms: int | None = None) -> bytes:
    """A request message as a caller writes it, with its timestamp and deadline chosen."""
    fields = codec.decode_request(codec.encode_request(req_id=codec.new_request_id(), method="__call__",
                                                       payload=codec.encode_args(args, kwargs), reply_to=reply_to))
    fields["message_timestamp"] = sent_ms
    if deadline_ms is not None:
        fields["options"]["deadline_ms"] = deadline_ms
    return codec.seal(pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL))


class _Trap:
    """Unpickling this makes a directory: proof that whoever unpickled it ran its pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_depth_and_peek_describe_waiting_requests_without_unpickling(gate, capsys, namespace, tmp_path) -> None:
    app, handle, client, ran_key = gate
    # Given two calls waiting behind the held slot, one with a deadline, sent 100 s ago by Redis's clock
    now_ms = int(codec_time_ms(client))
    trap = str(tmp_path / "unpickled")
    inbox = f"{namespace}:inbox:opclient"
    old = _message(("x", np.arange(4), _Trap(trap)), {"scale": 2.5}, sent_ms=now_ms - 100_000, reply_to=inbox,
                   deadline_ms=now_ms + 60_000)
    client.lpush(f"{namespace}:q:{app}:Gate", old)
    waiting = handle.remote("waiting", 7)
    client.hset(f"{namespace}:counts:{app}:Gate", mapping={"expired": 3, "failed": 1})
    poll(lambda: _queued(capsys, app) == 2, what="two queued requests")

    # When the operator looks at the queues
    code, report = _cli(capsys, "queue", "--json")
    assert code == 0
    dep = next(d for d in report["deployments"] if d["app"] == app)
    # Then the deployment shows its depth, its oldest age in Redis time, its replica busy, and its counts
    assert dep["deployment"] == "Gate" and dep["queued"] == 2
    assert 99 <= dep["oldest_age_s"] < 130
    assert list(dep["in_flight"].values()) == [1] and dep["expired"] == 3 and dep["failed"] == 1
    _, text = _cli(capsys, "queue")
    assert app in text and "Gate" in text

    # When it peeks
    code, peek = _cli(capsys, "queue", app, "Gate", "--peek", "5", "--json")
    first, second = peek["requests"]
    # Then the oldest comes first, with its caller, deadline and argument types, nothing unpickled
    assert first["caller"] == "opclient" and first["deadline_ms"] == now_ms + 60_000 and first["method"] == "__call__"
    assert first["args"] == ["str", "numpy.ndarray", "posix.mkdir", "scale=float"] and first["size"] > 0
    assert second["id"] == waiting._req_id and second["args"] == ["str", "int"] and second["deadline_ms"] is None
    assert second["caller"] and second["age_s"] < 60
    assert not os.path.exists(trap)
    _, text = _cli(capsys, "queue", app, "Gate", "--peek", "1")
    assert first["id"] in text and re.search(r"in (59\.\d|60\.0) s", text) and "numpy.ndarray" in text
    assert second["id"] not in text

    # Finally: purge, and the crafted request's inbox holds the error its caller would get
    assert _cli(capsys, "queue", app, "Gate", "--purge", "--yes", "--json")[1]["dropped"] == 2
    ok, failure = codec.decode_outcome(client.rpop(inbox)[32:])
    assert not ok and isinstance(failure.exception, RequestCancelledError)
    with pytest.raises(RequestCancelledError):
        waiting.result(timeout_s=10)
    client.delete(inbox, f"{namespace}:counts:{app}:Gate")


def codec_time_ms(client: redis.Redis) -> float:
    sec, usec = client.time()
    return sec * 1000 + usec / 1000


def _blocked_result(response) -> tuple[threading.Thread, list]:
    """A thread blocked in ``response.result()``, as a real caller is; its outcome lands in the list."""
    got: list = []

    def wait() -> None:
        try:
            got.append(response.result(timeout_s=60))
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            got.append(e)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, got


def test_drop_and_purge_cancel_blocked_callers_and_the_requests_never_run(gate, capsys) -> None:
    app, handle, client, ran_key = gate
    dropped, purged_a, purged_b = handle.remote("dropped"), handle.remote("purged-a"), handle.remote("purged-b")
    poll(lambda: _queued(capsys, app) == 3, what="three queued requests")
    waiter, got = _blocked_result(dropped)

    # Drop one: its blocked caller gets RequestCancelledError at once
    code, out = _cli(capsys, "queue", app, "Gate", "--drop", dropped._req_id, "--yes", "--json")
    assert code == 0 and out["dropped"] == [dropped._req_id]
    waiter.join(timeout=10)
    assert len(got) == 1 and isinstance(got[0], RequestCancelledError), got
    assert "dropped from the queue" in str(got[0])
    assert _queued(capsys, app) == 2

    # Purge the rest: both callers get it
    waiters = [_blocked_result(r) for r in (purged_a, purged_b)]
    code, out = _cli(capsys, "queue", app, "Gate", "--purge", "--yes")
    assert code == 0 and "Dropped 2 request(s)" in out
    for thread, result in waiters:
        thread.join(timeout=10)
        assert len(result) == 1 and isinstance(result[0], RequestCancelledError), result

    # Release the slot: the next call runs, and none of the dropped ever did
    client.lpush(ran_key + ":release", 1)
    assert handle.remote("after").result(timeout_s=30) == "after"
    assert client.lrange(ran_key, 0, -1) == [b"hold", b"after"]


def test_drop_needs_a_terminal_or_yes_and_a_waiting_id(gate, capsys, redis_url, namespace) -> None:
    app, handle, client, ran_key = gate
    waiting = handle.remote("waiting")
    poll(lambda: _queued(capsys, app) == 1, what="a queued request")
    env = {**os.environ, "PYTHONPATH": ROOT, "MQSERVE_NAMESPACE": namespace}
    for action in (["--drop", waiting._req_id], ["--purge"]):
        # A real process whose stdin is no terminal, without --yes: refused, nothing dropped
        proc = subprocess.run([sys.executable, "-m", "actors.runtime.cli", "queue", app, "Gate", *action,
                               "--redis-url", redis_url], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and "pass --yes" in proc.stderr, proc.stderr
        assert _queued(capsys, app) == 1
    # A terminal whose user answers no: nothing dropped
    opts = cli_opts(app, drop=waiting._req_id)
    from actors.runtime import queue_cmd
    from broker.queues import Queues

    queues = cli.registry_for(opts, Queues)
    with pytest.raises(cli.CLIError, match="Nothing was dropped"):
        queue_cmd.run(opts, queues, ask=lambda question: "n", interactive=True)
    # ... and yes: dropped
    assert queue_cmd.run(opts, queues, ask=lambda question: "y", interactive=True) == 0
    with pytest.raises(RequestCancelledError):
        waiting.result(timeout_s=10)
    # An id that does not wait: a clear error
    assert cli.main(["queue", app, "Gate", "--drop", "0" * 32, "--yes"]) == 1
    assert f"No request {'0' * 32} waits in {app}/Gate" in capsys.readouterr().err
    assert cli.main(["queue", app, "Nope", "--peek", "1"]) == 1
    assert "has no deployment named 'Nope'" in capsys.readouterr().err


def cli_opts(app: str, **action):
    import argparse

    base = {"app": app, "deployment": "Gate", "peek": None, "drop": None, "purge": False, "yes": False,
            "json": False, "redis_url": None}
    return argparse.Namespace(**{**base, **action})
