"""
One test per shim in L{brickchain_proxy.compat}, each against the real
Twisted and Autobahn objects it reaches into: a release that renames or
moves a private name fails the shim's test here, by name.
"""


from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import http, server
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource

from brickchain_proxy import compat
from tests.support import RecordingResource, start_local_service
from tests.tls_support import write_tls_files

_PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def _channel_on(transport, resource=None):
    site = server.Site(resource or Resource(), reactor=Clock())
    protocol = site.buildProtocol(_PEER)
    protocol.makeConnection(transport)
    return compat.http_channel(protocol)


class HttpChannelTests(SynchronousTestCase):
    def test_finds_the_http_channel_behind_the_site_wrapper(self):
        """What Site.buildProtocol returns leads to an HTTPChannel."""
        channel = _channel_on(StringTransport())
        self.assertIsInstance(channel, http.HTTPChannel)

    def test_header_limits_set_on_it_apply(self):
        """maxHeaders set on the channel found is the one the parser uses."""
        transport = StringTransport()
        channel = _channel_on(transport)
        channel.maxHeaders = 2
        channel.dataReceived(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400"))


class BadRequestTests(SynchronousTestCase):
    def test_malformed_request_calls_our_answer(self):
        """A malformed request line is answered by the callable given, not Twisted's bare 400."""
        transport = StringTransport()
        channel = _channel_on(transport)
        called = []

        def respond():
            called.append(True)
            transport.write(b"ours")
            channel.loseConnection()

        compat.answer_bad_requests_with(channel, respond)
        channel.dataReceived(b"NOT HTTP\r\n\r\n")
        self.assertEqual(called, [True])
        self.assertEqual(transport.value(), b"ours")


class _Hold(Resource):
    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.requests = []

    def render(self, request):
        self.requests.append(request)
        return server.NOT_DONE_YET


class VisitorGoneTests(SynchronousTestCase):
    def test_is_false_while_connected_and_true_once_gone(self):
        """A request's visitor counts as gone once its connection is lost."""
        hold = _Hold()
        transport = StringTransport()
        channel = _channel_on(transport, hold)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        [request] = hold.requests
        self.assertFalse(compat.visitor_gone(request))
        request.notifyFinish().addErrback(lambda _: None)
        channel.connectionLost(Exception("gone"))
        self.assertTrue(compat.visitor_gone(request))


class _Recorder(Protocol):
    def __init__(self):
        self.received = []

    def dataReceived(self, data):
        self.received.append(data)


class HandOverTests(SynchronousTestCase):
    def test_connection_and_head_reach_the_new_protocol(self):
        """The new protocol gets the transport and the request head; the channel lets go."""
        hold = _Hold()
        transport = StringTransport()
        channel = _channel_on(transport, hold)
        channel.dataReceived(b"GET /ws?a=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        [request] = hold.requests
        recorder = _Recorder()
        compat.hand_over_connection(request, recorder)
        self.assertIs(recorder.transport, transport)
        self.assertIsNone(channel.transport)
        head = b"".join(recorder.received)
        self.assertTrue(head.startswith(b"GET /ws?a=1 HTTP/1.1\r\n"), head)
        self.assertIn(b"Upgrade: websocket\r\n", head)
        # The HTTP channel no longer produces for the transport: the new
        # protocol can register its own producer.
        transport.registerProducer(object(), True)

    def test_a_websocket_protocol_completes_its_handshake(self):
        """An Autobahn server protocol handed the connection answers 101."""
        hold = _Hold()
        transport = StringTransport()
        channel = _channel_on(transport, hold)
        channel.dataReceived(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        [request] = hold.requests
        factory = WebSocketServerFactory(reactor=Clock())
        factory.setProtocolOptions(openHandshakeTimeout=0, autoPingInterval=0)
        factory.protocol = WebSocketServerProtocol
        transport.clear()
        compat.hand_over_connection(request, factory.buildProtocol(_PEER))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101"), transport.value())


class ConnectionHeaderNamesTests(TestCase):
    @defer.inlineCallbacks
    def test_names_listed_in_the_response_connection_header(self):
        """The names the server listed in Connection are found on a real Agent response."""
        from twisted.internet import reactor
        from twisted.web.client import HTTPConnectionPool

        url = start_local_service(self, RecordingResource())  # /headers: Connection: X-Foo
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        response = yield Agent(reactor, pool=pool).request(
            b"GET", url.encode("ascii") + b"/headers")
        names = compat.connection_header_names(response)
        yield readBody(response)
        self.assertIn("x-foo", names)


class CloseHandshakeTimerTests(SynchronousTestCase):
    def test_cancels_autobahns_closing_timer(self):
        """The closing-handshake timer Autobahn starts is cancelled and forgotten."""
        factory = WebSocketServerFactory(reactor=Clock())
        protocol = factory.buildProtocol(_PEER)
        cancelled = []

        class Call:
            def cancel(self):
                cancelled.append(True)

        protocol.closeHandshakeTimeoutCall = Call()
        compat.cancel_close_handshake_timer(protocol)
        self.assertEqual(cancelled, [True])
        self.assertIsNone(protocol.closeHandshakeTimeoutCall)

    def test_the_attribute_autobahn_uses_is_still_there(self):
        """Autobahn still names its closing-handshake timer closeHandshakeTimeoutCall."""
        import inspect

        from autobahn.websocket import protocol

        self.assertIn("closeHandshakeTimeoutCall", inspect.getsource(protocol))




class RequestLineTests(SynchronousTestCase):
    def test_method_target_and_version_are_known_once_the_headers_are_in(self):
        """When gotLength runs (headers in, body not yet), the request line can be read."""
        seen = []

        class Early(server.Request):
            def gotLength(self, length):
                seen.append(compat.request_line(self))
                server.Request.gotLength(self, length)

        site = server.Site(Resource(), reactor=Clock())
        site.requestFactory = Early
        channel = compat.http_channel(site.buildProtocol(_PEER))
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"POST /up?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(seen, [(b"POST", b"/up?x=1", b"HTTP/1.1")])


class TLSServerOptionsTests(SynchronousTestCase):
    def test_reads_and_replaces_what_an_ssl_endpoint_listens_with(self):
        """
        C{tls_server_options} gives the C{CertificateOptions} of an C{ssl:}
        endpoint; after C{use_tls_server_options}, C{listen} passes the
        replacement to C{listenSSL}.
        """
        files = write_tls_files(self.mktemp(), ["localhost"])
        memory = MemoryReactor()
        endpoint = serverFromString(memory, files.listen())
        self.assertIsInstance(compat.tls_server_options(endpoint),
                              ssl.CertificateOptions)
        marker = object()
        compat.use_tls_server_options(endpoint, marker)
        self.assertIs(compat.tls_server_options(endpoint), marker)
        endpoint.listen(Factory.forProtocol(Protocol))
        self.assertIs(memory.sslServers[0][2], marker)


class _Loopback:
    """
    A real TCP connection over loopback: the raw socket at the other end is
    read without giving the reactor a turn.
    """

    def _connected(self):
        from twisted.internet import reactor
        import socket

        made = defer.Deferred()

        class Writer(Protocol):
            def connectionMade(self):
                made.callback(self.transport)

        port = reactor.listenTCP(0, Factory.forProtocol(Writer), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        peer = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(peer.close)
        peer.setblocking(False)

        def ready(transport):
            self.addCleanup(transport.abortConnection)
            return transport, peer

        return made.addCallback(ready)


class FlushNowTests(_Loopback, TestCase):
    """
    C{flush_now} sends what waits at once, but leaves closing to the reactor.
    """

    @defer.inlineCallbacks
    def test_written_data_is_on_the_socket_at_once(self):
        """
        Without C{flush_now}, what was written waits for the reactor; with
        it, the peer can read it straight away.
        """
        transport, peer = yield self._connected()
        transport.write(b"held")
        self.assertRaises(BlockingIOError, peer.recv, 100)
        compat.flush_now(transport)
        self.assertEqual(peer.recv(100), b"held")

    @defer.inlineCallbacks
    def test_a_closing_transport_is_left_to_the_reactor(self):
        """
        Once C{loseConnection} was called the reactor must see C{doWrite}'s
        result to close: C{flush_now} does nothing.
        """
        transport, peer = yield self._connected()
        transport.write(b"last")
        transport.loseConnection()
        compat.flush_now(transport)
        self.assertRaises(BlockingIOError, peer.recv, 100)

    def test_a_transport_without_a_socket_is_left_alone(self):
        """
        A test or in-memory transport has no C{doWrite}: nothing happens.
        """
        transport = StringTransport()
        transport.write(b"x")
        compat.flush_now(transport)
        self.assertEqual(transport.value(), b"x")


class WriteNowTests(_Loopback, TestCase):
    """
    C{write_now}: sent at once when nothing is queued, queued behind what
    is, and a closing transport is written to as usual.
    """

    @defer.inlineCallbacks
    def test_sent_at_once(self):
        transport, peer = yield self._connected()
        compat.write_now(transport, b"now")
        self.assertEqual(peer.recv(100), b"now")

    @defer.inlineCallbacks
    def test_queued_behind_what_waits(self):
        """
        What was written before goes first: both wait for the reactor, in
        order.
        """
        transport, peer = yield self._connected()
        transport.write(b"first ")
        compat.write_now(transport, b"second")
        self.assertRaises(BlockingIOError, peer.recv, 100)
        compat.flush_now(transport)
        self.assertEqual(peer.recv(100), b"first second")

    def test_a_transport_without_a_socket_is_written_to(self):
        transport = StringTransport()
        compat.write_now(transport, b"x")
        self.assertEqual(transport.value(), b"x")
