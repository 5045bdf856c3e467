"""
Every implementation of the contracts between the proxy's objects provides
its zope interface: the tunnel connection the hub sends on, the visitor
websocket it delivers to, the bus backends.  (The bus, the directory and
the rate limiters have contract suites of their own.)
"""

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from brickchain_proxy.bus import MemoryBus, MemoryDirectory, open_backend
from brickchain_proxy.bus.interface import IBackend
from brickchain_proxy.mandate_tokens import TokenVerifier
from brickchain_proxy.proxy.hub import TunnelHub
from brickchain_proxy.proxy.interfaces import IStreamVisitor, ITunnelConnection
from brickchain_proxy.proxy.tunnel import TunnelServerProtocol
from brickchain_proxy.proxy.tunnel_factory import TunnelServerFactory
from brickchain_proxy.proxy.visitor_ws import VisitorFactory, VisitorProtocol
from brickchain_proxy.wsutil import TunnelBackpressure


class ContractTests(SynchronousTestCase):
    def test_tunnel_server_protocol_is_a_tunnel_connection(self):
        """The proxy's tunnel websocket provides ITunnelConnection once open."""
        clock = Clock()
        hub = TunnelHub(clock, MemoryBus(clock), MemoryDirectory())
        factory = TunnelServerFactory(hub, TokenVerifier("http://p.test"), "p.test", clock)
        protocol = factory.buildProtocol(None)
        self.assertTrue(verifyClass(ITunnelConnection, TunnelServerProtocol))
        # What onOpen sets up, without a socket:
        protocol.features = frozenset()
        protocol.backpressure = TunnelBackpressure()
        self.assertTrue(verifyObject(ITunnelConnection, protocol))

    def test_visitor_protocol_is_a_stream_visitor(self):
        """A visitor websocket provides IStreamVisitor."""
        clock = Clock()
        hub = TunnelHub(clock, MemoryBus(clock), MemoryDirectory())
        protocol = VisitorFactory(hub, clock, max_message_size=1000).buildProtocol(None)
        self.assertTrue(verifyClass(IStreamVisitor, VisitorProtocol))
        self.assertTrue(verifyObject(IStreamVisitor, protocol))

    def test_memory_backend_is_a_backend(self):
        """The in-memory backend provides IBackend."""
        self.assertTrue(verifyObject(IBackend, open_backend("memory", Clock())))

    def test_redis_backend_is_a_backend(self):
        """The Redis backend provides IBackend (built, not connected)."""
        self.assertTrue(verifyObject(IBackend, open_backend("redis://127.0.0.1:1/0", reactor)))
