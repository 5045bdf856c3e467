"""
Message bus and tunnel directory backends, chosen by URL (C{--bus}):
C{memory} (one process, the default), C{redis://} / C{rediss://}, or
C{redis+sentinel://} (a master found through Redis Sentinel).
"""

from zope.interface import implementer

from ..replay import MemoryReplayGuard
from .interface import BusUnavailable, IBackend, IBus, ITunnelDirectory
from .memory import MemoryBus, MemoryDirectory


@implementer(IBackend)
class MemoryBackend:
    """
    The in-memory backend: a bus and a directory in this process.
    """

    def __init__(self, reactor):
        self._reactor = reactor
        self.bus = MemoryBus(reactor)
        self.directory = MemoryDirectory()

    def start(self):
        return None

    def stop(self):
        return self.bus.close()

    def on_reconnect(self, listener):
        pass

    def on_interrupted(self, listener):
        pass  # nothing is ever lost in memory

    def rate_limiter(self, local_limiter):
        return local_limiter

    def replay_guard(self):
        return MemoryReplayGuard(self._reactor)


def validate_bus_url(url):
    """
    Check a C{--bus} value.

    @raise ValueError: with a message fit for a command line.
    """
    if url == "memory":
        return url
    if url.startswith(("redis://", "rediss://")):
        from .redis import parse_redis_url

        parse_redis_url(url)
        return url
    if url.startswith("redis+sentinel://"):
        from .sentinel import parse_sentinel_url

        parse_sentinel_url(url)
        return url
    raise ValueError(
        "unsupported --bus {!r}: use 'memory', redis://[:password@]host[:port][/db] "
        "(rediss:// for TLS) or "
        "redis+sentinel://[:password@]host:port[,host:port...]/MASTER[/db]".format(url)
    )


def open_backend(url, reactor, directory_ttl=60, ca_cert=None):
    """
    Build (without connecting) the backend a C{--bus} URL names.  It has
    C{bus}, C{directory}, C{start()}, C{stop()}, C{on_reconnect(listener)},
    C{on_interrupted(listener)}, C{rate_limiter(local_limiter)} and
    C{replay_guard()}.

    @param ca_cert: for C{rediss://}, a PEM file of the CA certificate(s)
        the server is verified with (default: the system's trust store).
    """
    validate_bus_url(url)
    if url == "memory":
        return MemoryBackend(reactor)
    from .redis import RedisBackend

    return RedisBackend(url, reactor, directory_ttl=directory_ttl, ca_cert=ca_cert)


__all__ = ["IBackend", "IBus", "ITunnelDirectory", "BusUnavailable", "MemoryBus",
           "MemoryDirectory", "MemoryBackend", "open_backend", "validate_bus_url"]
