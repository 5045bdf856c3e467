"""
Fixtures for tests of the proxy's L{TunnelHub} and what is built on it,
without sockets: stand-ins for a tunnel connection and a visitor websocket
(each provides the interface the hub expects of the real one), and a test
case of hubs on one L{Clock} sharing a L{MemoryBus} and a
L{MemoryDirectory} that fails a test leaving anything pending or any timer
behind.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from brickchain_proxy.bus import MemoryBus, MemoryDirectory
from brickchain_proxy.messages import HttpRequest, HttpResponse, decode, encode
from brickchain_proxy.proxy.hub import TunnelHub
from brickchain_proxy.proxy.interfaces import IStreamVisitor, ITunnelConnection

#: The hubs' request_timeout.
TIMEOUT = 30.0
CLIENT = "c" * 52
OTHER_CLIENT = "d" * 52


@implementer(ITunnelConnection)
class FakeConnection:
    """
    Stands in for a L{TunnelServerProtocol} (verified against its
    interface in L{tests.test_hub.FakeConnectionContractTests}): records
    what the hub sends it and whether it was told to go.

    @ivar sent: every encoded message sent to it, in order.
    @ivar taken_over: the clientIDs it was told another connection took.
    """

    backpressure = None

    def __init__(self, features=frozenset()):
        self.features = features
        self.sent = []
        self.taken_over = []

    def send_raw(self, data):
        self.sent.append(data)

    def send_frame(self, stream_id, data, last=False):
        self.send_raw(data)

    def tunnel_taken_over(self, client_id):
        self.taken_over.append(client_id)

    def answer(self, hub, request_raw, status=200, body=b"ok", **fields):
        """
        Reply to the request C{request_raw} as a tunnel client would: hand
        the hub the encoded http-response (C{fields}: its other
        L{HttpResponse} fields, e.g. C{headers}, C{content_type}).

        @return: whether the hub wanted it (L{TunnelHub.reply}).
        """
        request = decode(request_raw)
        raw = encode(HttpResponse(id=request.id, status=status, body=body, **fields))
        return hub.reply(self, decode(raw), raw)


@implementer(IStreamVisitor)
class FakeVisitor:
    """
    Stands in for a L{VisitorProtocol}: records what the hub delivers.
    """

    def __init__(self):
        self.delivered = []
        self.lost = []
        self.throttled = []

    def deliver(self, message):
        self.delivered.append(message)

    def tunnel_lost(self, reason):
        self.lost.append(reason)

    def throttle(self, paused):
        self.throttled.append(paused)


def http_request(path="/"):
    """
    @return: C{(message_id, raw)} of a new http-request.
    """
    message = HttpRequest(url=path, method="GET")
    return message.id, encode(message)


class HubTestCase(SynchronousTestCase):
    """
    Hubs on one L{Clock} that share a bus and a directory.
    """

    def setUp(self):
        self.clock = Clock()
        self.bus = MemoryBus(self.clock)
        self.directory = MemoryDirectory()
        self.hubs = []
        self.addCleanup(self.assertNothingLeft)

    def make_hub(self, instance_id):
        hub = TunnelHub(self.clock, self.bus, self.directory,
                        request_timeout=TIMEOUT, instance_id=instance_id)
        self.successResultOf(hub.start())
        self.hubs.append(hub)
        return hub

    def deliver(self):
        """
        Let the bus deliver what has been published (one reactor turn per
        hop; a request and its reply take two).
        """
        for _ in range(3):
            self.clock.advance(0)

    def assertNothingLeft(self):
        for hub in self.hubs:
            self.assertEqual(len(hub.pending), 0, hub.instance_id)
        self.assertEqual(self.clock.getDelayedCalls(), [])


__all__ = ["TIMEOUT", "CLIENT", "OTHER_CLIENT", "FakeConnection", "FakeVisitor",
           "http_request", "HubTestCase"]
