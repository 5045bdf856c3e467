"""
Message bus and tunnel directory backends, chosen by URL (C{--bus}).
"""

from .interface import IBus, ITunnelDirectory
from .memory import MemoryBus, MemoryDirectory


class Backend:
    """
    What one C{--bus} URL gives a proxy instance: a bus and a directory,
    plus how to start and stop them.
    """

    def __init__(self, bus, directory, start=None, stop=None):
        self.bus = bus
        self.directory = directory
        self._start = start
        self._stop = stop

    def start(self):
        if self._start is not None:
            return self._start()

    def stop(self):
        if self._stop is not None:
            return self._stop()


def validate_bus_url(url):
    """
    Check a C{--bus} value.

    @raise ValueError: with a message fit for a command line.
    """
    if url == "memory":
        return url
    raise ValueError(
        "unsupported --bus {!r}: use 'memory'".format(url)
    )


def open_backend(url, reactor):
    """
    Build (without connecting) the backend a C{--bus} URL names.
    """
    validate_bus_url(url)
    bus = MemoryBus(reactor)
    return Backend(bus, MemoryDirectory(), stop=bus.close)


__all__ = ["IBus", "ITunnelDirectory", "MemoryBus", "MemoryDirectory",
           "Backend", "open_backend", "validate_bus_url"]
