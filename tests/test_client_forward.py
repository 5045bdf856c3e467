"""
The client's requests to the local service: which headers it sends (each
once; the visitor's User-Agent, not a library's), and what a local service
slower than C{--local-timeout} gives the visitor (504, whether it is silent
before its head or stalls inside its body).  Timeouts run on a L{Clock};
the local service is a real one on loopback.
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import server
from twisted.web.resource import Resource

from brickchain_proxy.client.forward import LocalForwarder
from brickchain_proxy.client.local_ws import handshake_fields
from brickchain_proxy.messages import HttpRequest
from tests.support import RecordingResource, start_local_service, wait_until


class HandshakeFieldsTests(SynchronousTestCase):
    """
    The ws-request's headers split into what Autobahn writes itself and what
    is forwarded, so that nothing reaches the local service twice.
    """

    def test_visitor_user_agent_replaces_the_library_default(self):
        """The visitor's User-Agent becomes the handshake's one User-Agent."""
        headers, useragent, _, _ = handshake_fields(
            {"User-Agent": "Mozilla/5.0 (X11) Chrome/156", "X-A": "1"})
        self.assertEqual(useragent, "Mozilla/5.0 (X11) Chrome/156")
        self.assertEqual(headers, {"X-A": "1"})

    def test_no_visitor_user_agent_sends_none(self):
        """Without a User-Agent from the visitor none is sent (not Autobahn's)."""
        _, useragent, _, _ = handshake_fields({"X-A": "1"})
        self.assertIsNone(useragent)

    def test_headers_autobahn_writes_itself_are_not_forwarded(self):
        """Host, Pragma, Cache-Control, Origin and Sec-WebSocket-* are left to Autobahn."""
        headers, _, origin, protocols = handshake_fields({
            "Host": "a.example", "Pragma": "no-cache", "Cache-Control": "no-cache",
            "Origin": "https://a.example", "Sec-Websocket-Protocol": "chat, superchat",
            "Sec-Websocket-Key": "x", "Sec-Websocket-Version": "13",
            "Sec-Websocket-Extensions": "permessage-deflate", "Cookie": "a=1",
            "Upgrade": "websocket", "Connection": "Upgrade",
        })
        self.assertEqual(headers, {"Cookie": "a=1"})
        self.assertEqual(origin, "https://a.example")
        self.assertEqual(protocols, ["chat", "superchat"])

    def test_lower_case_names_are_recognised(self):
        """Header names in any case (a Go proxy, a multi-header list) are handled."""
        headers, useragent, origin, protocols = handshake_fields({
            "user-agent": ["curl/8"], "origin": "http://o", "x-b": ["1", "2"],
            "sec-websocket-protocol": ["a", "b"],
        })
        self.assertEqual(useragent, "curl/8")
        self.assertEqual(origin, "http://o")
        self.assertEqual(protocols, ["a", "b"])
        self.assertEqual(headers, {"x-b": "1, 2"})

    def test_line_breaks_cannot_inject_headers(self):
        """CR and LF in a forwarded User-Agent are replaced, not sent."""
        _, useragent, _, _ = handshake_fields({"User-Agent": "a\r\nX-Evil: 1"})
        self.assertEqual(useragent, "a  X-Evil: 1")


class _Stalling(Resource):
    """
    C{/stall}: the head and the first bytes of a 1000-byte body, then
    nothing.
    """

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.waiting = []

    def render_GET(self, request):
        request.setHeader(b"Content-Length", b"1000")
        request.write(b"x" * 10)
        self.waiting.append(request)
        request.notifyFinish().addErrback(lambda _: None)
        return server.NOT_DONE_YET


class LocalTimeoutTests(TestCase):
    """
    A local service slower than the client's timeout is a gateway timeout:
    the visitor gets 504 with the reason, never a 502 "unreachable".
    """

    def setUp(self):
        self.clock = Clock()
        self.local = RecordingResource()
        self.stalling = _Stalling()

    def make_forwarder(self, url):
        from twisted.internet import reactor

        forwarder = LocalForwarder(reactor, url, timeout=5.0, clock=self.clock)
        self.addCleanup(forwarder.close)
        return forwarder

    @defer.inlineCallbacks
    def test_silent_local_service_is_a_504(self):
        """No response head within the local timeout: 504, saying so."""
        forwarder = self.make_forwarder(start_local_service(self, self.local))
        arrived = self.local.wait_for_request(b"/slow")
        answer = forwarder.forward(HttpRequest(url="/slow", method="GET"))
        yield arrived
        self.clock.advance(5.0)
        response = yield answer
        self.assertEqual(response.status, 504)
        self.assertIn(b"did not answer within 5 seconds", response.body)

    @defer.inlineCallbacks
    def test_local_service_stalling_in_its_body_is_a_504(self):
        """A head, part of the body, then silence past the local timeout: 504."""
        forwarder = self.make_forwarder(start_local_service(self, self.stalling))
        answer = forwarder.forward(HttpRequest(url="/stall", method="GET"))
        yield wait_until(lambda: self.stalling.waiting)
        self.clock.advance(5.0)
        response = yield answer
        self.assertEqual(response.status, 504)

    @defer.inlineCallbacks
    def test_answer_within_the_timeout_is_forwarded(self):
        """A local service answering in time is forwarded as it answered, and no timer is left."""
        forwarder = self.make_forwarder(start_local_service(self, self.local))
        response = yield forwarder.forward(HttpRequest(url="/status/201", method="GET"))
        self.assertEqual(response.status, 201)
        self.assertEqual(self.clock.getDelayedCalls(), [])
