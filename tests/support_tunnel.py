"""
Fixtures for tests of the tunnel's websocket without sockets: real Autobahn
server and client protocols wired together in memory through
L{twisted.test.iosim} (L{MemoryConnections}), every timer of ours on one
L{Clock}; a bare client and a bare server that send whatever a test says;
and the proxy's names (base URL, domain) they use.

Autobahn's own handshake timers run on the global reactor (through txaio),
not on the factory's clock: L{without_global_timers} switches them off.
"""

from autobahn.twisted.websocket import WebSocketClientProtocol, WebSocketServerProtocol
from twisted.internet.address import IPv4Address
from twisted.test import iosim

from brickchain_proxy.messages import decode, encode

#: The test clock's start: when mandate tokens are signed and checked.
NOW = 1795000000.0
BASE = "http://proxy.test"
WS_URL = "ws://proxy.test/proxy/subscribe"
DOMAIN = "proxy.test"

CLOSE_NORMAL = 1000

_SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 6519)
_CLIENT_ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


def without_global_timers(factory, client=False):
    """
    Switch off Autobahn's handshake timeouts, which would run on the global
    reactor rather than on the test's clock.
    """
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    if client:
        factory.setProtocolOptions(serverConnectionDropTimeout=0)
    return factory


class MemoryConnections:
    """
    Connects server and client protocols in memory and moves their bytes.
    """

    def __init__(self, clock):
        self.clock = clock
        self.pumps = []

    def connect(self, server_factory, client_factory):
        """
        @return: C{(server_protocol, client_protocol)}, open (handshake done).
        """
        server = server_factory.buildProtocol(_CLIENT_ADDRESS)
        client = client_factory.buildProtocol(_SERVER_ADDRESS)
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, isServer=True,
                                hostAddress=_SERVER_ADDRESS,
                                peerAddress=_CLIENT_ADDRESS),
            client,
            iosim.FakeTransport(client, isServer=False,
                                hostAddress=_CLIENT_ADDRESS,
                                peerAddress=_SERVER_ADDRESS),
            clock=self.clock,
        )
        self.pumps.append(pump)
        return server, client

    def flush(self):
        """
        Deliver everything every side has sent, until nothing moves (what
        one connection receives may make another send).
        """
        moved = True
        while moved:
            moved = False
            for pump in self.pumps:
                if pump.flush():
                    moved = True

    def advance(self, seconds):
        """
        Let C{seconds} pass, then deliver what the timers sent.
        """
        self.clock.advance(seconds)
        self.flush()

    def close_all(self):
        """
        Close every connection still open (from the client side) and wait
        until both ends are gone.
        """
        for pump in self.pumps:
            client = pump.client
            if not pump.clientIO.disconnected:
                if client.state == client.STATE_OPEN:
                    client.sendClose(CLOSE_NORMAL)
                else:
                    client.dropConnection(abort=True)
            pump.flush()

    def is_open(self, protocol):
        return protocol.state == protocol.STATE_OPEN


class RawTunnelClient(WebSocketClientProtocol):
    """
    A bare websocket client that sends whatever the test says and records
    what the proxy sends back.
    """

    def __init__(self):
        WebSocketClientProtocol.__init__(self)
        self.messages = []
        self.closed = None

    def onMessage(self, payload, isBinary):
        self.messages.append(payload)

    def onClose(self, wasClean, code, reason):
        self.closed = (code, reason)

    def send(self, message):
        self.sendMessage(encode(message) if not isinstance(message, bytes)
                         else message, isBinary=False)

    def decoded(self):
        return [decode(m) for m in self.messages]


class FakeProxy(WebSocketServerProtocol):
    """
    A bare websocket server standing in for the proxy: records what the
    client sends, and sends whatever the test says.
    """

    def __init__(self):
        WebSocketServerProtocol.__init__(self)
        self.messages = []
        self.closed = None

    def onMessage(self, payload, isBinary):
        self.messages.append(payload)

    def onClose(self, wasClean, code, reason):
        self.closed = (code, reason)


__all__ = ["NOW", "BASE", "WS_URL", "DOMAIN", "CLOSE_NORMAL", "without_global_timers",
           "MemoryConnections", "RawTunnelClient", "FakeProxy"]
