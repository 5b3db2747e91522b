"""Remote exceptions come back as instances of their own class, with the remote traceback."""

from __future__ import annotations

import pickle

import pytest

from actors.exceptions import BackPressureError, RemoteError, RequestCancelledError, rebuild_remote_error


class Custom(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"code {code}")
        self.code = code


def test_rebuilt_error_is_an_instance_with_attributes_and_traceback() -> None:
    err = rebuild_remote_error(Custom(7), Custom, "Custom", "code 7", "Traceback: line 1")
    assert isinstance(err, Custom)
    assert err.code == 7  # type: ignore[attr-defined]
    assert type(err).__name__ == "Custom"
    assert "code 7" in str(err) and "Traceback: line 1" in str(err)
    with pytest.raises(Custom):
        raise err


def test_rebuilt_error_pickles_again() -> None:
    err = rebuild_remote_error(ValueError("v"), ValueError, "ValueError", "v", "tb")
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, ValueError) and "tb" in str(again)


def test_os_errors_and_type_only_fallbacks() -> None:
    err = rebuild_remote_error(FileNotFoundError(2, "nope"), FileNotFoundError, "x", "y", "tb")
    assert isinstance(err, FileNotFoundError) and err.errno == 2
    only_type = rebuild_remote_error(None, KeyError, "KeyError", "'k'", "tb")
    assert isinstance(only_type, KeyError)
    unknown = rebuild_remote_error(None, None, "mod.Gone", "message", "tb")
    assert isinstance(unknown, RemoteError) and "mod.Gone: message" in str(unknown)


def test_serve_errors_pickle_and_cancelled_is_asyncio_cancelled() -> None:
    import asyncio

    err = pickle.loads(pickle.dumps(BackPressureError(3, 2, 429, 7.5, "Retry later.")))
    assert str(err) == err.message == ("Request dropped due to backpressure (num_queued_requests=3, "
                                       "max_queued_requests=2). Retry later.")
    assert (err.status_code, err.retry_after_s) == (429, 7.5)
    assert isinstance(RequestCancelledError("x"), asyncio.CancelledError)


def test_a_backpressure_error_from_another_process_keeps_its_http_answer() -> None:
    # Given a BackPressureError raised downstream, as a caller rebuilds it (with the traceback)
    err = rebuild_remote_error(BackPressureError(1, 1, 429, 2.0), None, "", "", "Traceback ...")
    # Then it is still one, its status and message intact, the traceback only in str()
    assert isinstance(err, BackPressureError) and (err.status_code, err.retry_after_s) == (429, 2.0)
    assert err.message.startswith("Request dropped due to backpressure") and "Traceback" not in err.message
    assert "Traceback ..." in str(err)


def test_every_public_exception_is_exported() -> None:
    """``from actors.exceptions import *`` gives what a Ray user catches, ours included."""
    import actors.exceptions as module

    public = {name for name, value in vars(module).items()
              if isinstance(value, type) and issubclass(value, BaseException) and not name.startswith("_")
              and value.__module__ == module.__name__ and name != "RemoteError"}
    assert public <= set(module.__all__)
    assert "RequestLostError" in module.__all__


def test_every_error_mqserve_raises_has_one_root() -> None:
    """One ``except MQServeError`` catches every error of mqserve's own, from any layer."""
    import importlib
    import pkgutil

    import actors
    import broker
    import gateway
    from actors.exceptions import MQServeError

    own = []
    for package in (actors, broker, gateway):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            own += [value for value in vars(module).values()
                    if isinstance(value, type) and issubclass(value, Exception)
                    and value.__module__ == module.__name__]
    assert len(own) >= 10
    assert [cls.__qualname__ for cls in own if not issubclass(cls, MQServeError)] == []
