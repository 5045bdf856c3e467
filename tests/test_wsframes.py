"""
L{brickchain_proxy.wsframes}: the short path through Autobahn reads and
writes exactly what Autobahn would, and leaves everything else to it.

Each test opens a real Autobahn handshake between a client and a server
protocol over in-memory transports, one side with L{ShortFrames} and the
other plain Autobahn (or both short), and pumps the bytes -- whole, or one
byte at a time.
"""

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.xormasker import create_xor_masker
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from brickchain_proxy.wsframes import ShortFrames, frame_header, masked

_PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class _Recording:
    def onConnect(self, request_or_response):
        self.received = []
        self.frames_begun = 0

    def onMessage(self, payload, isBinary):
        self.received.append((payload, isBinary))

    def onFrameBegin(self):
        self.frames_begun += 1
        return super().onFrameBegin()


class ShortServer(_Recording, ShortFrames, WebSocketServerProtocol):
    pass


class PlainServer(_Recording, WebSocketServerProtocol):
    pass


class ShortClient(_Recording, ShortFrames, WebSocketClientProtocol):
    pass


class PlainClient(_Recording, WebSocketClientProtocol):
    pass


class _Transport(StringTransport):
    def unregisterProducer(self):
        self.producer = None


class _Pair:
    """
    A client and a server protocol, handshake done, bytes moved by L{pump}.
    """

    def __init__(self, server_class, client_class, max_message=0, byte_by_byte=False):
        clock = Clock()
        server_factory = WebSocketServerFactory(reactor=clock)
        server_factory.protocol = server_class
        server_factory.setProtocolOptions(
            maxFramePayloadSize=max_message, maxMessagePayloadSize=max_message,
            failByDrop=False, openHandshakeTimeout=0, closeHandshakeTimeout=0)
        client_factory = WebSocketClientFactory("ws://localhost:9000/", reactor=clock)
        client_factory.protocol = client_class
        client_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        self.byte_by_byte = byte_by_byte
        self.server = server_factory.buildProtocol(_PEER)
        self.client = client_factory.buildProtocol(_PEER)
        self.server.makeConnection(_Transport())
        self.client.makeConnection(_Transport())
        self.pump()
        assert self.server.state == WebSocketProtocol.STATE_OPEN
        assert self.client.state == WebSocketProtocol.STATE_OPEN

    def _move(self, source, sink):
        data = source.transport.value()
        source.transport.clear()
        if self.byte_by_byte:
            for i in range(len(data)):
                sink.dataReceived(data[i:i + 1])
        else:
            sink.dataReceived(data)
        return bool(data)

    def pump(self):
        while self._move(self.client, self.server) | self._move(self.server, self.client):
            pass


_MESSAGES = [
    (b"", False),
    (b"hello", False),
    ("gr\u00fc\u00dfe \u2603".encode("utf-8"), False),
    (bytes(range(256)) * 2, True),
    (b"x" * 125, True),
    (b"y" * 126, True),
    (b"z" * 65535, True),
    (b"w" * 65536, True),
    (b"v" * 300000, True),
]


class MaskTests(SynchronousTestCase):
    def test_masks_as_autobahn_does(self):
        """
        Every size, on both sides of the switch from integers to the C
        masker, gives Autobahn's bytes; masking twice gives the payload.
        """
        key = b"\x01\x80\xfe\x37"
        for size in (0, 1, 3, 4, 5, 100, 1023, 1024, 1025, 4097, 70000):
            payload = bytes((i * 7) & 0xFF for i in range(size))
            expected = create_xor_masker(key, size).process(payload) if size else b""
            self.assertEqual(masked(key, payload), expected, size)
            self.assertEqual(masked(key, masked(key, payload)), payload, size)

    def test_headers_use_the_shortest_length(self):
        self.assertEqual(frame_header(2, 125, 0), b"\x82\x7d")
        self.assertEqual(frame_header(1, 126, 0x80), b"\x81\xfe\x00\x7e")
        self.assertEqual(frame_header(2, 65536, 0), b"\x82\x7f" + (65536).to_bytes(8, "big"))


class ShortPathTests(SynchronousTestCase):
    def _exchange(self, server_class, client_class, byte_by_byte=False):
        pair = _Pair(server_class, client_class, byte_by_byte=byte_by_byte)
        for payload, binary in _MESSAGES:
            pair.client.sendMessage(payload, binary)
            pair.server.sendMessage(payload, binary)
        pair.pump()
        self.assertEqual(pair.server.received, _MESSAGES)
        self.assertEqual(pair.client.received, _MESSAGES)
        return pair

    def test_short_server_reads_a_plain_client(self):
        self._exchange(ShortServer, PlainClient)

    def test_plain_server_reads_a_short_client(self):
        self._exchange(PlainServer, ShortClient)

    def test_short_to_short(self):
        self._exchange(ShortServer, ShortClient)

    def test_one_byte_at_a_time(self):
        self._exchange(ShortServer, ShortClient, byte_by_byte=True)

    def test_small_frames_take_the_short_path(self):
        """
        Autobahn's frame machinery never sees a whole message of up to
        256 KiB; a larger one goes to Autobahn, which streams it.
        """
        pair = _Pair(ShortServer, ShortClient)
        pair.client.sendMessage(b"a" * 1000, True)
        pair.server.sendMessage(b"b" * 1000, False)
        pair.pump()
        pair.client.sendMessage(b"c" * 70000, True)
        pair.pump()
        self.assertEqual((pair.server.frames_begun, pair.client.frames_begun), (0, 0))
        pair.client.sendMessage(b"d" * 300000, True)
        pair.pump()
        self.assertEqual(pair.server.frames_begun, 1)

    def test_statistics_count_short_frames(self):
        pair = _Pair(ShortServer, ShortClient)
        pair.client.sendMessage(b"12345", True)
        pair.pump()
        self.assertEqual(pair.client.trafficStats.outgoingWebSocketMessages, 1)
        self.assertEqual(pair.server.trafficStats.incomingWebSocketMessages, 1)
        self.assertEqual(pair.server.trafficStats.incomingOctetsAppLevel, 5)

    def test_fragments_and_pings_go_to_autobahn(self):
        pair = _Pair(ShortServer, PlainClient)
        pair.client.sendMessage(b"0123456789" * 10, True, fragmentSize=7)
        pair.client.sendPing(b"are you there")
        pair.client.sendMessage(b"after", False)
        pair.pump()
        self.assertEqual(pair.server.received, [(b"0123456789" * 10, True), (b"after", False)])


class LimitTests(SynchronousTestCase):
    def test_a_message_over_the_limit_is_closed_with_1009(self):
        pair = _Pair(ShortServer, PlainClient, max_message=1000)
        pair.client.sendMessage(b"x" * 1000, True)
        pair.client.sendMessage(b"x" * 1001, True)
        pair.pump()
        self.assertEqual(pair.server.received, [(b"x" * 1000, True)])
        self.assertEqual(pair.server.localCloseCode, 1009)

    def test_invalid_utf8_is_closed_with_1007(self):
        pair = _Pair(ShortServer, PlainClient)
        # A text frame Autobahn's client would refuse to build: by hand.
        key = b"\x00\x11\x22\x33"
        pair.server.dataReceived(frame_header(1, 2, 0x80) + key + masked(key, b"\xff\xfe"))
        pair.pump()
        self.assertEqual(pair.server.received, [])
        self.assertEqual(pair.server.localCloseCode, 1007)

    def test_an_unmasked_client_frame_is_a_protocol_error(self):
        pair = _Pair(ShortServer, PlainClient)
        pair.server.dataReceived(frame_header(2, 3, 0) + b"abc")
        pair.pump()
        self.assertEqual(pair.server.received, [])
        self.assertEqual(pair.server.localCloseCode, 1002)

    def test_a_masked_server_frame_is_a_protocol_error(self):
        pair = _Pair(PlainServer, ShortClient)
        key = b"\x01\x02\x03\x04"
        pair.client.dataReceived(frame_header(2, 3, 0x80) + key + masked(key, b"abc"))
        pair.pump()
        self.assertEqual(pair.client.received, [])
        self.assertIn("masked server-to-client frame", pair.client.wasNotCleanReason)
