"""Replica side of streamed calls: drive the user's generator into the response stream.

A sync generator runs on the Dramatiq worker thread that took the request (the
replica's thread pool); an async generator runs on the replica's event loop. Either
way items go to a :class:`broker.streams.StreamWriter`, and the generator is closed
as soon as the reader stops early.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from broker import codec
from broker.queue import STREAMED
from broker.streams import StreamWriter

from . import bridge

logger = logging.getLogger("mqserve.replica")


def not_a_generator(what: str, result: Any) -> TypeError:
    return TypeError(f"{what} was called with stream=True but returned {type(result).__name__}, "
                     "not a generator; make it a generator (use `yield`) or call it without stream=True.")


def drive(result: Any, writer: StreamWriter, loop: asyncio.AbstractEventLoop, what: str,
          to_item: Callable[[Any], Any] = lambda x: x) -> concurrent.futures.Future[bytes]:
    """Send every item of ``result`` (a generator) to ``writer``; the future resolves to
    :data:`STREAMED` once the stream is complete. Runs sync generators here (blocking)."""
    if inspect.isasyncgen(result):
        outcome: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        task = bridge.submit(loop, _pump_async(result, writer, to_item))
        writer.on_cancel = task.cancel
        task.add_done_callback(lambda _: _chain(writer, outcome))
        return outcome
    if inspect.isgenerator(result):
        try:
            for item in result:
                if writer.put(to_item(item)):
                    # The writer (on the loop thread) was just woken: let it take the GIL
                    # now, so the first item leaves before the generator runs on.
                    time.sleep(0)
                if writer.cancelled:
                    break
        except Exception as e:
            logger.error("%s raised while streaming", what, exc_info=e)
            writer.finish(codec.encode_error(e))
        else:
            writer.finish()
        finally:
            result.close()
        writer.done.result()
        done: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        done.set_result(STREAMED)
        return done
    raise not_a_generator(what, result)


async def _pump_async(agen: Any, writer: StreamWriter, to_item: Callable[[Any], Any]) -> None:
    try:
        async for item in agen:
            writer.put(to_item(item))
    except asyncio.CancelledError:
        writer.finish()  # the reader left; nobody reads the end, but the writer must stop
        raise
    except Exception as e:
        logger.error("a streaming generator raised", exc_info=e)
        writer.finish(codec.encode_error(e))
    else:
        writer.finish()
    finally:
        await agen.aclose()


def _chain(writer: StreamWriter, outcome: concurrent.futures.Future[bytes]) -> None:
    writer.done.add_done_callback(lambda _: outcome.set_result(STREAMED))
