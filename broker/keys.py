"""Every Redis key mqserve uses, in one place.

The layout (``{ns}`` is the namespace, ``mqserve`` unless ``MQSERVE_NAMESPACE`` says
otherwise) is documented in ``docs/ARCHITECTURE.md``; keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names for one namespace, so that several mqserve instances can share a Redis."""

    ns: str = "mqserve"

    # Registry ------------------------------------------------------------------------
    @property
    def apps(self) -> str:
        """HASH app name -> JSON app record (route prefix, ingress, deployments)."""
        return f"{self.ns}:apps"

    @property
    def deleting(self) -> str:
        """HASH app name -> JSON app record of apps deleted whose replicas may still drain
        (``serve.status()`` shows them DELETING); the controller removes the field once
        no replica of the app is left."""
        return f"{self.ns}:deleting"

    def deployment(self, app: str, dep: str) -> str:
        """HASH of one deployment: ``spec`` (cloudpickle), ``config`` (JSON), ``version``,
        ``max_queued``, ``state`` = 'failed' once its replicas cannot start, and ``idle`` = '1'
        while the autoscaler has it at zero replicas (a request then wakes the controller)."""
        return f"{self.ns}:dep:{app}:{dep}"

    def replicas(self, app: str, dep: str) -> str:
        """HASH replica id -> JSON replica record (state, node, pid, message)."""
        return f"{self.ns}:replicas:{app}:{dep}"

    def replica_error(self, replica_id: str) -> str:
        """STRING: the pickled exception a replica's constructor raised (expires)."""
        return f"{self.ns}:replica-error:{replica_id}"

    # Request path -----------------------------------------------------------------------
    def queue(self, app: str, dep: str) -> str:
        """LIST of encoded request messages; callers LPUSH, replicas BLMOVE from the right."""
        return f"{self.ns}:q:{app}:{dep}"

    def processing(self, replica_id: str) -> str:
        """LIST of the messages a replica has taken and not yet answered. ``mux.lua`` builds
        the same name (a replica's load)."""
        return f"{self.ns}:proc:{replica_id}"

    def counts(self, app: str, dep: str) -> str:
        """HASH of a deployment's request tallies (``broker.counts``), fields ``expired``
        (dropped unrun, or cancelled while running, once their deadline passed) and
        ``failed`` (background requests whose last attempt failed), each an ``HINCRBY``
        counter; absent fields are 0. Written on the request path only when it happens,
        read by ``mqserve queue`` (``broker.queues``) and ``/metrics``: a count survives
        the requests it counts, which a list could not show. Deleted with its app."""
        return f"{self.ns}:counts:{app}:{dep}"

    # Dashboard figures (``broker.stats``) -------------------------------------------------
    def stats(self, app: str, dep: str) -> str:
        """STREAM of one deployment's figures, one entry per writer per second: each
        replica's requests, errors and latency histogram of the last second, and the
        controller's samples of queue depth and in-flight. Trimmed to the last
        ``stats.WINDOW_S`` seconds by every write (``XADD MINID``), expires when nothing
        is written."""
        return f"{self.ns}:stats:{app}:{dep}"

    def totals(self, app: str, dep: str) -> str:
        """HASH of one deployment's request totals since it was deployed (``n``, ``e``,
        ``s`` microseconds, ``b{i}`` histogram buckets), for ``/metrics``; added to by
        each replica once a second, deleted with its app."""
        return f"{self.ns}:totals:{app}:{dep}"

    @property
    def errors(self) -> str:
        """LIST of the namespace's last ``stats.MAX_ERRORS`` failed requests (JSON: time,
        app, deployment, replica, exception type, first line of its message), newest first."""
        return f"{self.ns}:errors"

    # Multiplexing (deployments with a @serve.multiplexed loader; see mux.lua) ------------
    def mux_members(self, app: str, dep: str) -> str:
        """HASH replica id -> capacity (its ``max_ongoing_requests``): the replicas of a
        multiplexed deployment that requests are routed to (``enqueue.lua``)."""
        return f"{self.ns}:mux:{app}:{dep}"

    def own_queue(self, replica_id: str) -> str:
        """LIST of the requests routed to one replica of a multiplexed deployment; it takes
        from it before the deployment's queue. ``mux.lua`` builds the same name."""
        return f"{self.ns}:rq:{replica_id}"

    def models(self, replica_id: str) -> str:
        """SET of the model ids a replica of a multiplexed deployment holds, is loading, or
        was just sent requests for. ``mux.lua`` builds the same name."""
        return f"{self.ns}:models:{replica_id}"

    def result(self, req_id: str) -> str:
        """STRING: a request's encoded outcome, the future's value (expires)."""
        return f"{self.ns}:res:{req_id}"

    def watchers(self, req_id: str) -> str:
        """SET of inboxes to notify when ``result(req_id)`` is written (chained calls)."""
        return f"{self.ns}:watch:{req_id}"

    def inbox(self, client_id: str) -> str:
        """LIST where replicas push replies for one caller process (expires when idle)."""
        return f"{self.ns}:inbox:{client_id}"

    @staticmethod
    def alive(inbox: str) -> str:
        """STRING kept alive by the listener of ``inbox`` while its process lives (expires;
        see ``liveness``): a replica drops a long-queued request whose caller's key is gone."""
        return f"{inbox}:alive"

    def reads(self, req_id: str) -> str:
        """HASH ``read``/``promised``: how often a response passed by reference was read,
        and how many reads its caller made possible; the last read deletes the result."""
        return f"{self.ns}:reads:{req_id}"

    def detached(self, req_id: str) -> str:
        """STRING set when a response was passed to another call: its value then goes only
        to the result key, and the caller's inbox gets just the request id."""
        return f"{self.ns}:detached:{req_id}"

    def stream(self, req_id: str) -> str:
        """STREAM of a streamed response: entries ``d`` (items), ``e``
        (error outcome), ``end``; expires, deleted by the reader at the end."""
        return f"{self.ns}:stream:{req_id}"

    def socket(self, conn_id: str, direction: str) -> str:
        """STREAM of one direction of a WebSocket connection: ``in`` (client to app,
        written by the gateway) or ``out`` (app to client, written by the replica); each
        entry one ASGI message (``broker.sockets``). Expires, deleted when the connection
        ends."""
        return f"{self.ns}:ws:{conn_id}:{direction}"

    def cancelled(self, req_id: str) -> str:
        """STRING set when a caller cancels a request that a replica already took."""
        return f"{self.ns}:cancel:{req_id}"

    # Background requests (``handle.options(background=True)``, HTTP ``Prefer: respond-async``)
    def background(self, req_id: str) -> str:
        """HASH: the status record of a background request (``status``, ``app``,
        ``deployment``, ``method``, ``created``/``started``/``ended`` in Redis's ms, ``attempts``,
        ``error_type``, ``error``, ``ttl``; ``message`` while it is queued, so that any process
        can withdraw it). Expires with the background TTL, as its result does."""
        return f"{self.ns}:req:{req_id}"

    @property
    def failed(self) -> str:
        """ZSET request id -> when its record expires (ms): background requests that FAILED,
        for ``mqserve requests --failed``; trimmed of expired ids when read."""
        return f"{self.ns}:failed"

    # Control plane ----------------------------------------------------------------------
    @property
    def nodes(self) -> str:
        """HASH node id -> JSON node record (host, pid, replicas, max_replicas)."""
        return f"{self.ns}:nodes"

    def member_alive(self, kind: str, member_id: str) -> str:
        """STRING kept alive by a ``node`` or ``gateway`` while it runs (expires; see
        ``liveness``)."""
        return f"{self.ns}:alive:{kind}:{member_id}"

    def node_assignments(self, node_id: str) -> str:
        """HASH replica id -> JSON assignment (app, deployment, version,
        graceful_shutdown_timeout_s) for one node."""
        return f"{self.ns}:node:{node_id}:assign"

    def node_wake(self, node_id: str) -> str:
        """LIST a node blocks on; any push makes it reconcile at once."""
        return f"{self.ns}:node:{node_id}:wake"

    @property
    def epoch(self) -> str:
        """STRING 'ok', set when an app is first registered; after a Redis restart its
        absence means the data was lost ('lost:{run_id}' marks that run). See ``epoch.py``."""
        return f"{self.ns}:epoch"

    @property
    def gateways(self) -> str:
        """HASH gateway id -> JSON gateway record (host, port, pid, hostname)."""
        return f"{self.ns}:gateways"

    @property
    def autoscale(self) -> str:
        """HASH JSON [app, deployment] -> JSON autoscaler state (version, target replicas)."""
        return f"{self.ns}:autoscale"

    @property
    def controller_lock(self) -> str:
        """STRING holding the id of the node that runs the controller (expires)."""
        return f"{self.ns}:controller:leader"

    @property
    def controller_wake(self) -> str:
        """LIST the controller blocks on; pushed when apps or replicas change."""
        return f"{self.ns}:controller:wake"

    @property
    def events(self) -> str:
        """Pub/sub channel announcing replica and app state changes."""
        return f"{self.ns}:events"

    @property
    def cancellations(self) -> str:
        """Pub/sub channel of request ids cancelled while a replica may be running them."""
        return f"{self.ns}:cancellations"

    def pattern(self, suffix: str = "*") -> str:
        """Glob over this namespace, for cleanup and diagnostics."""
        return f"{self.ns}:{suffix}"
