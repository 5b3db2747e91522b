"""mqserve: the Ray Serve programming model on Redis and Dramatiq.

Port a Ray Serve application by changing its imports::

    from actors import serve
    from actors.handle import DeploymentHandle, DeploymentResponse
    from actors.exceptions import BackPressureError  # and the other Ray Serve errors

The public API is these three modules (and ``actors.batching`` through
``serve.batch``, ``actors.config`` and ``actors.status`` for the objects ``serve``
returns). :mod:`actors.runtime` is what runs in mqserve's processes; :mod:`broker` is
the Redis transport; :mod:`gateway` the HTTP gateway.
"""

__version__ = "0.1.0"
