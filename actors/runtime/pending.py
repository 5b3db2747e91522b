"""What a caller keeps of each request until nothing in its process needs it any more.

A request has a record here while something in this process waits for its outcome, or
while its response, passed to other calls by reference, keeps its result key alive.
What composition asks of a caller (see :mod:`actors.runtime.caller`) comes down to two
questions the records answer: may a reply delete the result key it was written under,
and how many reads of that key did this process make possible (``settle.lua``)?
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future

#: A ``settle.lua`` call: request id, reads promised (``""`` leaves the promise as it is),
#: reads to count as done.
Settle = tuple[str, str, int]


class _Pending:
    """One request's bookkeeping in the process that called it, or reads its result.

    - ``waiters``: the futures its outcome resolves: the caller's reply future and any
      number of reads of its result key (``CallClient.watch``).
    - ``owner``: the caller's reply future of a unary request sent from here, until that
      reply comes or is given up; always one of ``waiters``.
    - ``promised``: None unless the response was passed to another call by reference;
      then the reads of its result key this process made possible (the consumers it
      created, plus its own reads). The key must outlive them all, so it stays until
      the response is dropped and the count goes to ``settle.lua``.

    A reply deletes the result key after delivering it only if it was the owner's (nobody
    else asked for the key) and the response was never passed on (nobody will read it).
    A record with no waiters and no promise has nothing left to do: its table drops it.
    """

    __slots__ = ("waiters", "owner", "promised")

    def __init__(self) -> None:
        self.waiters: list[Future[bytes]] = []
        self.owner: Future[bytes] | None = None
        self.promised: int | None = None

    @property
    def finished(self) -> bool:
        return not self.waiters and self.promised is None

    @property
    def passed_on(self) -> bool:
        return self.promised is not None

    def wait(self, fut: Future[bytes], owner: bool) -> None:
        self.waiters.append(fut)
        if owner:
            self.owner = fut

    def promise(self, reads: int = 1) -> None:
        """``reads`` more reads of the result key made possible here (negative: a consumer
        that will never run takes its read back)."""
        self.promised = (self.promised or 0) + reads

    def pass_on(self) -> bool:
        """The response goes to another call: by reference (one more promised read) while
        its reply has not come, or once it went by reference; False: inline."""
        if self.owner is None and self.promised is None:
            return False
        self.promise()
        return True

    def finish(self) -> tuple[list[Future[bytes]], bool]:
        """Its outcome came, or never will: every waiter, to resolve, and whether the reply
        may delete the result key. Nobody waits any more; a promise stays."""
        waiters, unlink = self.waiters, self.owner is not None and self.promised is None
        self.waiters, self.owner = [], None
        return waiters, unlink

    def drop_owner(self) -> Future[bytes] | None:
        """Nobody waits for the caller's own reply here any more; the reads of the key do."""
        owner, self.owner = self.owner, None
        if owner is not None:
            self.waiters.remove(owner)
        return owner

    def settle(self) -> int | None:
        """The response object is gone: the reads it promised, to send (None if it was not
        passed on). Its reply, if still to come, must not delete the key: drop the owner."""
        promised, self.promised = self.promised, None
        if promised is not None:
            self.drop_owner()
        return promised


class PendingRequests:
    """One caller's records by request id, under one lock (its threads, its event loops'
    listeners and garbage collection all reach them), and the ``settle.lua`` calls its
    listener sends on its next round trip."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, _Pending] = {}
        #: Responses dropped by their objects: from any thread, even a GC pass, so no lock
        #: is taken; settled by the listener on its next round trip.
        self._dropped: deque[str] = deque()
        self._settles: list[Settle] = []

    def __len__(self) -> int:
        """Requests still tracked: none once every call is over and every response gone."""
        return len(self._records)

    def add(self, req_id: str, fut: Future[bytes], *, owner: bool = False, promise: bool = False) -> None:
        """``fut`` waits for the outcome of ``req_id``: the caller's reply of a unary request
        (``owner``), or a read of its result key (``promise``: one of this process's own
        reads of a response it passed on)."""
        with self._lock:
            record = self._records.get(req_id)
            if record is None:
                record = self._records[req_id] = _Pending()
            record.wait(fut, owner)
            if promise:
                record.promise()

    def pass_on(self, req_id: str) -> bool:
        """True if the response goes to another call by reference (see :meth:`_Pending.pass_on`)."""
        with self._lock:
            record = self._records.get(req_id)
            return record is not None and record.pass_on()

    def drop(self, req_id: str) -> None:
        """A response passed on by reference was dropped. Takes no lock (``__del__``)."""
        self._dropped.append(req_id)

    def finish(self, req_id: str) -> tuple[list[Future[bytes]], bool, bool]:
        """Its outcome came, failed, or nobody waits any more: its waiters, whether the
        reply may delete the result key, and whether the response was passed on."""
        with self._lock:
            record = self._records.pop(req_id, None)
            if record is None:
                return [], False, False
            waiters, unlink = record.finish()
            if record.passed_on:  # its key is still promised to its readers: keep the record
                self._records[req_id] = record
                return waiters, unlink, True
        return waiters, unlink, False

    def detach(self, req_id: str) -> Future[bytes] | None:
        """The value went to the result key only: the caller's reply future, to release."""
        with self._lock:
            record = self._records.get(req_id)
            if record is None:
                return None
            owner = record.drop_owner()
            self._forget_if_finished(req_id, record)
        return owner

    def unread(self, consumed: Iterable[str]) -> None:
        """A call that will never run will not read the responses it consumed."""
        with self._lock:
            for ref in consumed:
                record = self._records.get(ref)
                if record is not None and record.passed_on:
                    record.promise(-1)
                else:  # already dropped: count the read that will not happen
                    self._settles.append((ref, "", 1))

    def lose_all(self) -> list[list[Future[bytes]]]:
        """Redis lost its data: the waiters of each request waited for, to fail; no result
        key is left to hold."""
        with self._lock:
            records, self._records = self._records, {}
        return [record.waiters for record in records.values() if record.waiters]

    def take_settles(self) -> list[Settle]:
        """What the listener sends next: the reads promised for responses dropped since its
        last round, and reads that will not happen."""
        with self._lock:
            while self._dropped:
                req_id = self._dropped.popleft()
                record = self._records.get(req_id)
                promised = None if record is None else record.settle()
                if record is None or promised is None:
                    continue
                self._settles.append((req_id, str(promised), 0))
                self._forget_if_finished(req_id, record)
            settles, self._settles = self._settles, []
        return settles

    def retry(self, settles: list[Settle]) -> None:
        """Settles that could not be sent go first on the next round."""
        with self._lock:
            self._settles[:0] = settles

    def _forget_if_finished(self, req_id: str, record: _Pending) -> None:
        if record.finished:
            del self._records[req_id]
