"""Cluster mode on one machine: several workers and gateways sharing one Redis.

Each test gets its own namespace, so it can kill workers without disturbing others.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from actors import serve
from actors.config import user_config_tag
from actors.exceptions import DeployFailedError
from tests.cluster import LocalCluster, cluster_on, free_port, poll
from tests.conftest import ROOT


@pytest.fixture
def fresh(redis_url: str) -> Iterator[LocalCluster]:
    """An empty cluster (no worker, no gateway) with this process's serve connected to it."""
    with cluster_on(redis_url, workers=0, prefix="cl", MQSERVE_WORKER_WAIT_S="3") as (local, _):
        yield local


@serve.deployment
class Whoami:
    def __call__(self, delay: object = 0.0) -> int:
        if isinstance(delay, float):  # HTTP calls pass a Request
            time.sleep(delay)
        return os.getpid()


@serve.deployment
class Slow:
    async def __call__(self, delay: float) -> int:
        await asyncio.sleep(delay)
        return os.getpid()


def test_replicas_spread_over_workers_and_respect_max_replicas(fresh: LocalCluster) -> None:
    fresh.add_worker("w-a")
    fresh.add_worker("w-b", max_replicas=1)
    handle = serve.run(Whoami.options(num_replicas=4).bind(), name="spread")
    assert fresh.replicas_by_worker("spread", "Whoami") == {"w-a": 3, "w-b": 1}
    pids = {handle.remote(0.05).result(timeout_s=30) for _ in range(40)}
    assert len(pids) >= 2
    status = serve.status()
    assert status.applications["spread"].deployments["Whoami"].replicas_per_worker == {"w-a": 3, "w-b": 1}
    assert set(status.workers) == {"w-a", "w-b"} and status.workers["w-b"]["max_replicas"] == 1


def test_no_worker_fails_the_deploy_with_advice(fresh: LocalCluster) -> None:
    with pytest.raises(DeployFailedError, match="No mqserve worker is running.*mqserve worker"):
        serve.run(Whoami.bind(), name="lonely")


def test_dead_worker_replicas_restart_elsewhere_and_queued_requests_are_served(fresh: LocalCluster) -> None:
    fresh.add_worker("w-a")
    fresh.add_worker("w-b")
    handle = serve.run(Whoami.options(num_replicas=2).bind(), name="survive")
    assert fresh.replicas_by_worker("survive", "Whoami") == {"w-a": 1, "w-b": 1}
    fresh.kill_worker("w-a")
    killed_at = time.monotonic()
    # Calls made while the cluster has not noticed yet are queued, then served.
    responses = [handle.remote(0.01) for _ in range(20)]
    poll(lambda: fresh.replicas_by_worker("survive", "Whoami") == {"w-b": 2}, timeout_s=30,
         what="both replicas running on the surviving worker")
    replaced_in = time.monotonic() - killed_at
    assert all(isinstance(r.result(timeout_s=30), int) for r in responses)
    assert replaced_in < 10, f"replicas replaced after {replaced_in:.1f} s"
    assert "w-a" not in fresh.registry.nodes()


def test_a_gateway_or_worker_takes_over_the_controller(fresh: LocalCluster) -> None:
    port = free_port()
    fresh.add_gateway(port)
    poll(lambda: (fresh.registry.leader() or "").startswith("gateway-"), what="the gateway to lead")
    fresh.add_worker("w-a")
    fresh.add_worker("w-b")
    serve.run(Whoami.bind(), name="first", route_prefix="/first")  # placed by the gateway's controller
    fresh.gateways.pop(port).kill()
    leader = poll(lambda: fresh.registry.leader() in ("w-a", "w-b") and fresh.registry.leader(),
                  timeout_s=15, what="a worker to take over")
    fresh.kill_worker(leader)
    other = "w-b" if leader == "w-a" else "w-a"
    poll(lambda: fresh.registry.leader() == other, timeout_s=15, what="the last worker to take over")
    handle = serve.run(Whoami.bind(), name="second", route_prefix="/second")
    assert isinstance(handle.remote().result(timeout_s=30), int)
    assert fresh.replicas_by_worker("second", "Whoami") == {other: 1}


def test_autoscaling_follows_queue_depth_up_and_down(fresh: LocalCluster) -> None:
    fresh.add_worker("w-a")
    fresh.add_worker("w-b")
    auto = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2,
            "upscale_delay_s": 0, "downscale_delay_s": 1}
    handle = serve.run(Slow.options(autoscaling_config=auto, max_ongoing_requests=2).bind(), name="auto")
    assert sum(fresh.replicas_by_worker("auto", "Slow").values()) == 1
    stop = time.monotonic() + 60

    def running() -> int:
        return sum(fresh.replicas_by_worker("auto", "Slow").values())

    peak = 0
    while time.monotonic() < stop and peak < 4:  # keep 8 requests queued or running
        batch = [handle.remote(0.3) for _ in range(8)]
        for r in batch:
            r.result(timeout_s=30)
        peak = max(peak, running())
    assert peak == 4
    assert serve.status().applications["auto"].deployments["Slow"].target_replicas == 4
    poll(lambda: running() == 1 and len(fresh.registry.replicas("auto", "Slow")) == 1, timeout_s=30,
         what="scaling back down to min_replicas")
    # As in Ray, the status says the autoscaler brought it there; the app ran all along
    dep = poll(lambda: (d := serve.status().applications["auto"].deployments["Slow"]).status == "HEALTHY" and d,
               timeout_s=10, what="the deployment to be HEALTHY")
    assert dep.status_trigger == "DOWNSCALE_COMPLETED"
    assert serve.status().applications["auto"].status == "RUNNING"


def test_scale_to_zero_and_back_on_the_first_request(fresh: LocalCluster) -> None:
    fresh.add_worker("w-a")
    port = free_port()
    fresh.add_gateway(port)
    auto = {"min_replicas": 0, "max_replicas": 2, "initial_replicas": 0,
            "upscale_delay_s": 0, "downscale_delay_s": 0.5}
    handle = serve.run(Whoami.options(autoscaling_config=auto).bind(), name="zero", route_prefix="/zero")
    assert fresh.registry.replicas("zero", "Whoami") == {}
    assert serve.status().applications["zero"].status == "RUNNING"
    assert isinstance(handle.remote().result(timeout_s=30), int)  # queued, a replica starts, served
    poll(lambda: fresh.registry.replicas("zero", "Whoami") == {}, timeout_s=30, what="scaling to zero")
    # Over HTTP too: the request waits for a replica instead of failing.
    r = httpx.post(f"http://127.0.0.1:{port}/zero", json=0, timeout=30)
    assert r.status_code == 200 and isinstance(r.json(), int)


APP_MODULE = '''
from actors import serve
from helper import shout

@serve.deployment(num_replicas=2)
class Shouter:
    def __call__(self, request):
        return shout(request.query_params["word"])

app = Shouter.bind()
'''


def _mqserve(args: list[str], cwd: str, redis_url: str, namespace: str, timeout: float = 90):
    env = {**os.environ, "MQSERVE_NAMESPACE": namespace, "PYTHONPATH": ROOT}
    env.pop("MQSERVE_REDIS_URL", None)
    return subprocess.run([sys.executable, "-m", "actors.runtime.cli", *args, "--redis-url", redis_url], cwd=cwd,
                          env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_deploy_status_delete_from_another_process(fresh: LocalCluster, redis_url: str, tmp_path) -> None:
    """The app's files exist only where `mqserve deploy` runs: its code travels by pickle."""
    (tmp_path / "shoutapp.py").write_text(textwrap.dedent(APP_MODULE))
    (tmp_path / "helper.py").write_text("def shout(word):\n    return word.upper() + '!'\n")
    fresh.add_worker("w-a")
    fresh.add_worker("w-b")
    port = free_port()
    fresh.add_gateway(port)
    ns = fresh.namespace
    done = _mqserve(["deploy", "shoutapp:app", "--name", "shout", "--route-prefix", "/shout"], str(tmp_path),
                    redis_url, ns)
    assert done.returncode == 0, done.stderr
    assert "Shouter 2/2" in done.stdout and f"http://127.0.0.1:{port}/shout" in done.stdout
    assert httpx.get(f"http://127.0.0.1:{port}/shout", params={"word": "hey"}).text == "HEY!"
    table = _mqserve(["status"], str(tmp_path), redis_url, ns).stdout
    assert "shout" in table and "RUNNING" in table and "w-a: 1, w-b: 1" in table and "(controller)" in table
    assert _mqserve(["delete", "shout"], str(tmp_path), redis_url, ns).returncode == 0
    assert fresh.registry.apps() == {}
    missing = _mqserve(["delete", "shout"], str(tmp_path), redis_url, ns)
    assert missing.returncode == 1 and "no application named 'shout'" in missing.stderr
    poll(lambda: fresh.registry.replicas("shout", "Shouter") == {}, what="replicas to stop")


def test_deploy_reports_the_constructor_error(fresh: LocalCluster, redis_url: str, tmp_path) -> None:
    (tmp_path / "broken.py").write_text(textwrap.dedent('''
        from actors import serve

        @serve.deployment
        class Broken:
            def __init__(self):
                raise RuntimeError("no model file")

        app = Broken.bind()
    '''))
    fresh.add_worker("w-a")
    done = _mqserve(["deploy", "broken:app"], str(tmp_path), redis_url, fresh.namespace)
    assert done.returncode == 1
    assert "RuntimeError: no model file" in done.stderr and "broken.py" in done.stderr


def test_remote_traceback_shows_user_source_the_worker_lacks(fresh: LocalCluster, tmp_path,
                                                             monkeypatch) -> None:
    """Code travels by value with its source: a worker on another machine (here: the
    file is gone once deployed) still shows the failing line, under its file name."""
    (tmp_path / "faulty.py").write_text(textwrap.dedent('''
        from actors import serve

        @serve.deployment
        class Faulty:
            def __call__(self, n):
                raise LookupError(f"no entry {n}")  # the line the traceback shows

        app = Faulty.bind()
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    import faulty  # type: ignore[import-not-found]

    fresh.add_worker("w-a")
    handle = serve.run(faulty.app, name="faulty", route_prefix="/faulty")
    os.remove(tmp_path / "faulty.py")
    with pytest.raises(LookupError) as info:
        handle.remote(7).result(timeout_s=30)
    remote = str(info.value)
    assert "no entry 7" in remote
    assert f'File "{tmp_path / "faulty.py"}", line 7' in remote
    assert 'raise LookupError(f"no entry {n}")  # the line the traceback shows' in remote
    sys.modules.pop("faulty", None)


def test_driver_exit_leaves_cluster_apps_running(fresh: LocalCluster, redis_url: str) -> None:
    fresh.add_worker("w-a")
    code = textwrap.dedent('''
        from actors import serve
        from tests.integration.test_cluster import Whoami
        serve.run(Whoami.bind(), name="kept", route_prefix="/kept")
    ''')
    env = {**os.environ, "PYTHONPATH": ROOT, "MQSERVE_REDIS_URL": redis_url, "MQSERVE_NAMESPACE": fresh.namespace}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=90)
    assert done.returncode == 0, done.stderr
    assert isinstance(serve.get_app_handle("kept").remote().result(timeout_s=30), int)


def test_many_concurrent_calls_through_two_gateways(fresh: LocalCluster) -> None:
    fresh.add_worker("w-a")
    ports = [free_port(), free_port()]
    for port in ports:
        fresh.add_gateway(port)
    serve.run(Whoami.options(num_replicas=2).bind(), name="gw", route_prefix="/")

    def call(i: int) -> int:
        return httpx.post(f"http://127.0.0.1:{ports[i % 2]}/", json=0, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(call, range(64))) == {200}


def test_run_on_a_cluster_deletes_its_app_at_ctrl_c(fresh: LocalCluster, redis_url: str) -> None:
    fresh.add_worker("w-a")
    port = free_port()
    fresh.add_gateway(port)
    env = {**os.environ, "MQSERVE_NAMESPACE": fresh.namespace, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-m", "actors.runtime.cli", "run", "examples.hello:language_classifier",
                             "--redis-url", redis_url], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "press Ctrl-C" in line:
                break
        assert f"http://127.0.0.1:{port}/" in "".join(lines), lines
        r = httpx.post(f"http://127.0.0.1:{port}/", json={"language": "spanish", "name": "Dora"}, timeout=30)
        assert r.text == "Hola Dora"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert fresh.registry.apps() == {}
        assert "w-a" in fresh.registry.nodes()  # the cluster stays
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@serve.deployment(user_config={"greeting": "Bonjour"})
class Crème:
    def reconfigure(self, config: dict) -> None:
        self.greeting = config["greeting"]

    def __call__(self, who: object = "HTTP") -> tuple:
        return (f"{self.greeting}, {who if isinstance(who, str) else 'HTTP'}!", os.getpid())


def test_an_app_whose_name_is_not_ascii_works_everywhere(redis_url: str) -> None:
    with cluster_on(redis_url, gateway=True, prefix="cl", MQSERVE_DEPLOY_TIMEOUT_S="20") as (cluster, port):
        # Given an app and a deployment whose names are not ASCII
        handle = serve.run(Crème.bind(), name="café", route_prefix="/café")
        greeting, pid = handle.remote("Zoë").result(timeout_s=30)
        assert greeting == "Bonjour, Zoë!"
        r = httpx.get(f"http://127.0.0.1:{port}/café", timeout=30)
        assert r.status_code == 200 and r.json()[0] == "Bonjour, HTTP!"
        # When only its user_config changes, the running replica applies it in place
        handle = serve.run(Crème.options(user_config={"greeting": "Salut"}).bind(), name="café",
                           route_prefix="/café")
        assert handle.remote("Zoë").result(timeout_s=30) == ("Salut, Zoë!", pid)
        assert serve.status().applications["café"].deployments["Crème"].status == "HEALTHY"
        assert 'application="café"' in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        # And it can be deleted
        serve.delete("café")
        assert "café" not in serve.status().applications
        assert cluster.registry.replicas("café", "Crème") == {}


@serve.deployment(user_config={"refuse": False})
class Picky:
    def __init__(self) -> None:
        self.attempts = 0

    def reconfigure(self, config: dict) -> None:
        self.attempts += 1
        if config["refuse"]:
            raise ValueError("refused")

    def tries(self) -> int:
        return self.attempts


def test_a_replica_closes_its_event_subscription_before_subscribing_again(redis_url: str) -> None:
    with cluster_on(redis_url, prefix="cl") as (cluster, _):
        handle = serve.run(Picky.bind(), name="picky", route_prefix=None)
        reg, keys = cluster.registry, cluster.registry.keys
        subscribers = lambda: reg.redis.pubsub_numsub(keys.events)[0][1]  # noqa: E731
        poll(lambda: subscribers() == 1, what="the replica's subscription alone")
        # When its event follower fails (here: reconfigure refuses a new user_config,
        # written as serve.run writes it)
        spec = reg.deployment("picky", "Picky")
        reg.redis.hset(keys.deployment("picky", "Picky"), "config",
                       json.dumps({**spec["config"], "user_config": {"refuse": True}}))
        reg.redis.publish(keys.events, json.dumps({"app": "picky", "state": "DEPLOYED"}))
        # Then the failed subscription is closed at once, not left open until replaced
        poll(lambda: subscribers() == 0, timeout_s=5, interval_s=0.005, what="the failed subscription to close")
        poll(lambda: subscribers() == 1, what="the replica to subscribe again")
        # And subscribing again does not retry the refused config: a deploy must ask again
        assert handle.tries.remote().result(timeout_s=30) == 2
        reg.redis.publish(keys.events, json.dumps({"app": "picky", "state": "DEPLOYED"}))
        poll(lambda: subscribers() == 0, timeout_s=5, interval_s=0.005, what="the refusal to close it again")
        # A user_config written while the replica is not listening (no event reaches it)
        reg.redis.hset(keys.deployment("picky", "Picky"), "config",
                       json.dumps({**spec["config"], "user_config": {"refuse": False, "v": 2}}))
        # is applied when it subscribes again
        poll(lambda: reg.replicas("picky", "Picky") and all(
            r.get("user_config_tag") == user_config_tag({"refuse": False, "v": 2})
            for r in reg.replicas("picky", "Picky").values()), what="the missed user_config to be applied")
        assert handle.tries.remote().result(timeout_s=30) == 4
