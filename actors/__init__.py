"""mqserve: the Ray Serve programming model on Redis and Dramatiq.

Port a Ray Serve application by changing its imports::

    from actors import serve
    from actors.handle import DeploymentHandle, DeploymentResponse
"""

__version__ = "0.1.0"
