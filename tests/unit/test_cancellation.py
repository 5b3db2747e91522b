"""Cancellations on a replica: the calls a request made are cancelled with it."""

from __future__ import annotations

from concurrent.futures import Future

from actors.runtime.cancellation import Cancellations, Children, children, current_request


def _in_request(req_id: str, fn) -> None:
    token = current_request.set(req_id)
    try:
        fn()
    finally:
        current_request.reset(token)


def test_calls_made_outside_a_request_are_nobody_s_children() -> None:
    tree = Children()
    cancelled: list[str] = []
    tree.adopt(lambda: cancelled.append("orphan"))
    tree.cancel("any")
    assert cancelled == []


def test_a_request_s_calls_are_cancelled_with_it_but_not_later_ones() -> None:
    tree = Children()
    cancelled: list[str] = []
    _in_request("parent", lambda: tree.adopt(lambda: cancelled.append("a")))
    _in_request("other", lambda: tree.adopt(lambda: cancelled.append("b")))
    tree.cancel("parent")
    assert cancelled == ["a"]
    # A call made after its request was cancelled (cleanup code) is left alone, as in Ray
    _in_request("parent", lambda: tree.adopt(lambda: cancelled.append("cleanup")))
    assert cancelled == ["a"]
    # A request that ended leaves its calls alone
    tree.forget("other")
    tree.cancel("other")
    assert cancelled == ["a"]


def test_hearing_a_cancellation_cancels_the_children_before_the_task_ends() -> None:
    """The task's end forgets its children, so they must be cancelled first."""
    cancels = Cancellations()
    task: Future[None] = Future()
    cancels.start("running", task)
    task.add_done_callback(lambda _: children.forget("running"))  # as Requests.run does
    cancelled: list[str] = []
    _in_request("running", lambda: children.adopt(lambda: cancelled.append("child")))
    cancels.heard("running")
    assert task.cancelled() and cancelled == ["child"]
