"""
The bus (L{IBus}) and directory (L{ITunnelDirectory}) contracts of
L{tests.support_bus}, run over the in-memory backend; the Redis backend
runs the same ones in L{tests.test_redis_bus}.
"""

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from brickchain_proxy.bus import MemoryBus, MemoryDirectory
from tests.support_bus import BusContractMixin, Collector, DirectoryContractMixin


class MemoryBusTests(BusContractMixin, TestCase):
    """
    The bus contract for L{MemoryBus} on the reactor trial runs.
    """

    def make_bus(self):
        bus = MemoryBus(reactor)
        self.addCleanup(bus.close)
        return bus

    def active_channels(self, bus):
        return defer.succeed(bus.channels())

    def test_close_drops_undelivered_messages(self):
        """
        C{close} forgets queued messages and cancels the delivery call, so
        nothing is delivered afterwards and no timer is left.
        """
        clock = Clock()
        bus = MemoryBus(clock)
        handler = Collector()
        bus.subscribe("c", handler)
        bus.publish("c", b"never")

        bus.close()
        clock.advance(1)

        self.assertEqual(handler.received, [])
        self.assertEqual(clock.getDelayedCalls(), [])


class MemoryDirectoryTests(DirectoryContractMixin, TestCase):
    """
    The directory contract for L{MemoryDirectory}.
    """

    def make_directory(self):
        return MemoryDirectory()
