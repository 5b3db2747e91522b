"""Applications side by side, and deployments that cannot travel to a replica."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from actors import serve
from actors.exceptions import DeploymentUnavailableError, RayServeException
from actors.handle import DeploymentHandle


@serve.deployment
class Model:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __call__(self) -> tuple[str, int]:
        return self.tag, os.getpid()


@serve.deployment
class Front:
    """An ingress that calls a deployment named like one in another application."""

    def __init__(self, model: DeploymentHandle) -> None:
        self.model = model

    async def __call__(self) -> str:
        tag, _ = await self.model.remote()
        return f"front:{tag}"


def test_the_same_deployment_name_in_two_apps_gives_two_deployments(serve_instance) -> None:
    # Given two applications that each have a deployment named "Model", with other
    # arguments and another number of replicas
    one = serve.run(Model.bind("one"), name="app-one", route_prefix="/one")
    two = serve.run(Front.bind(Model.options(num_replicas=2).bind("two")), name="app-two", route_prefix="/two")
    # Then each application reaches its own
    assert one.remote().result()[0] == "one"
    assert two.remote().result() == "front:two"
    model_one = serve.get_deployment_handle("Model", app_name="app-one")
    model_two = serve.get_deployment_handle("Model", app_name="app-two")
    pids_one = {model_one.remote().result()[1] for _ in range(10)}
    answers_two = [model_two.remote().result() for _ in range(10)]
    assert {tag for tag, _ in answers_two} == {"two"}
    assert not pids_one & {pid for _, pid in answers_two}  # no replica is shared
    status = serve.status().applications
    assert status["app-one"].deployments["Model"].replica_states == {"RUNNING": 1}
    assert status["app-two"].deployments["Model"].replica_states == {"RUNNING": 2}
    # When one application is upgraded, then deleted, the other's deployment is untouched
    serve.run(Model.bind("one-v2"), name="app-one", route_prefix="/one")
    assert model_two.remote().result()[0] == "two"
    serve.delete("app-one")
    with pytest.raises(DeploymentUnavailableError):
        model_one.remote().result(timeout_s=10)
    assert two.remote().result() == "front:two"
    assert serve.status().applications["app-two"].deployments["Model"].replica_states == {"RUNNING": 2}
    serve.delete("app-two")


@serve.deployment
class Holder:
    def __init__(self, thing: object = None) -> None:
        self.thing = thing

    def __call__(self) -> str:
        return "ok"


@serve.deployment
class LockedAtClassLevel:
    guard = threading.Lock()

    def __call__(self) -> str:
        return "ok"


def test_a_lock_bound_as_an_argument_fails_serve_run_naming_the_deployment(serve_instance) -> None:
    # When a deployment is bound with a lock (it cannot be pickled to reach a replica)
    with pytest.raises(TypeError, match=r"Deployment 'Holder'.*argument.*_thread.lock") as caught:
        serve.run(Holder.bind(threading.Lock()), name="locked-arg", route_prefix="/locked-arg")
    # Then serve.run fails at once, as a ServeException too, and deploys nothing
    assert isinstance(caught.value, RayServeException)
    assert "__init__" in str(caught.value)  # says what to do instead
    assert "locked-arg" not in serve.status().applications


def test_a_socket_nested_in_the_arguments_fails_serve_run(serve_instance) -> None:
    with socket.socket() as sock, pytest.raises(TypeError, match=r"Deployment 'Holder'.*argument 'thing'.*socket"):
        serve.run(Holder.bind(thing={"conn": [sock]}), name="socket-arg", route_prefix="/socket-arg")
    assert "socket-arg" not in serve.status().applications


def test_a_lock_held_by_the_class_fails_serve_run_naming_the_deployment(serve_instance) -> None:
    with pytest.raises(TypeError, match=r"Deployment 'LockedAtClassLevel'.*class.*_thread.lock"):
        serve.run(LockedAtClassLevel.bind(), name="locked-class", route_prefix="/locked-class")
    assert "locked-class" not in serve.status().applications


def test_an_unpicklable_deployment_leaves_the_running_version_serving(serve_instance) -> None:
    handle = serve.run(Holder.bind("fine"), name="keeps", route_prefix="/keeps")
    # When an upgrade of the app cannot be pickled
    with pytest.raises(TypeError, match="Deployment 'Holder'"):
        serve.run(Holder.bind(threading.Lock()), name="keeps", route_prefix="/keeps")
    # Then the running version still answers
    assert handle.remote().result() == "ok"
    assert serve.status().applications["keeps"].status == "RUNNING"
    serve.delete("keeps")
