"""What runs in mqserve's processes, under the public API of :mod:`actors`.

Where a request goes, in file order:

- ``caller``: sends requests (``enqueue.lua``) and resolves their futures from the
  caller's inbox, in every process that holds a handle;
- ``replica``: a replica process takes requests from its deployment's queue (through
  :mod:`broker.queue`) and runs them, ``streaming`` and ``http`` for generator and
  HTTP requests, ``cancellation`` for the ones its callers gave up on; it writes each
  outcome with ``complete.lua``;
- ``node`` starts and reaps replica processes, ``controller`` (with ``autoscaler``)
  decides which run where, ``local`` starts Redis, a node and a gateway for a driver in
  local mode, ``context`` is the driver's side of ``serve.run``, ``cli`` the
  ``mqserve`` command, ``procs`` the process helpers they share.

Nothing here is public API: applications import :mod:`actors.serve`,
:mod:`actors.handle` and :mod:`actors.exceptions`.
"""
