"""
The proxy's side of a streamed request, on a L{Clock} without sockets: a
visitor connection in memory, a tunnel connection that speaks streams, and
the client's end of each stream played by a second L{StreamSession}.  The
head leaves when the visitor's headers are in, the answer reaches the
visitor as it comes, and the timeouts (answer head, idle stream) and
refusals behave.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface import implementer

from brickchain_proxy.bus import MemoryBus, MemoryDirectory
from brickchain_proxy.features import CLIENT_DEFAULT
from brickchain_proxy.proxy.hub import TunnelHub
from brickchain_proxy.proxy.interfaces import ITunnelConnection
from brickchain_proxy.proxy.site import build_site
from brickchain_proxy.ratelimit import TokenBucketLimiter
from brickchain_proxy.streams.session import IStreamHandler, StreamSession
from brickchain_proxy.wsutil import TunnelBackpressure
from tests.support_http import MemoryVisitor

CLIENT = "c" * 52
TIMEOUT = 30.0
IDLE = 60.0


@implementer(IStreamHandler)
class ClientEnd:
    """
    The client's end of one stream: records what arrives.
    """

    def __init__(self, stream, head):
        self.stream = stream
        self.head = head
        self.body = b""
        self.ended = False
        self.reset = None

    def head_received(self, head, fin):
        pass

    def data_received(self, data):
        self.body += data
        self.stream.consumed(len(data))

    def ws_received(self, payload, is_text):
        pass

    def end_received(self):
        self.ended = True

    def ws_closed(self, code, reason):
        self.ended = (code, reason)

    def reset_received(self, reason):
        self.reset = reason

    def write_paused(self):
        pass

    def write_resumed(self):
        pass


@implementer(ITunnelConnection)
class StreamsConnection:
    """
    A tunnel connection that negotiated streams, wired to a client-side
    session in memory (frames move when L{pump} is called).
    """

    features = CLIENT_DEFAULT

    def __init__(self):
        self.backpressure = TunnelBackpressure()
        self.to_client = []
        self.to_proxy = []
        self.ends = []
        self.streams = StreamSession(self.to_client.append)
        self.client = StreamSession(self.to_proxy.append, self._accept)

    def _accept(self, stream, head):
        end = ClientEnd(stream, head)
        if stream.received_fin:
            end.ended = True
        self.ends.append(end)
        return end

    def pump(self):
        while self.to_client or self.to_proxy:
            while self.to_client:
                self.client.received(self.to_client.pop(0))
            while self.to_proxy:
                self.streams.received(self.to_proxy.pop(0))

    def send_raw(self, data):
        raise AssertionError("a streams tunnel got a v1 message")

    def send_frame(self, stream_id, data, last=False):
        raise AssertionError("a streams tunnel got a v1 websocket frame")

    def tunnel_taken_over(self, client_id):
        pass


class StreamedPublicTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.hub = TunnelHub(self.clock, MemoryBus(self.clock), MemoryDirectory(),
                             request_timeout=TIMEOUT, instance_id="here")
        self.site = build_site(
            "proxy.test", self.hub, TokenBucketLimiter(self.clock, 2, 100), Resource(),
            max_body=1000, request_timeout=TIMEOUT, reactor=self.clock,
            stream_idle_timeout=IDLE)
        self.public = self.site.tunnel
        self.tunnel = StreamsConnection()
        self.successResultOf(self.hub.attach(CLIENT, self.tunnel))
        self.visitors = []
        self.addCleanup(self.assertNothingLeft)

    def assertNothingLeft(self):
        self.tunnel.pump()
        for visitor in self.visitors:
            visitor.close()
        self.assertEqual(self.public.in_flight, {})
        self.assertEqual(len(self.tunnel.streams), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def visit(self, method=b"GET", path=b"/x", headers=(), body=b""):
        visitor = MemoryVisitor(self.site)
        self.visitors.append(visitor)
        lines = [method + b" /proxy/request/" + CLIENT.encode() + path + b" HTTP/1.1",
                 b"Host: proxy.test"] + [n + b": " + v for n, v in headers]
        visitor.send(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        visitor._head_requests.append(method == b"HEAD")  # for answer()
        self.tunnel.pump()
        return visitor

    def test_head_and_first_bytes_leave_before_the_body_is_complete(self):
        """With 5 of 10 body bytes in, the client already has the head and those 5 bytes."""
        visitor = self.visit(b"POST", headers=[(b"Content-Length", b"10")], body=b"hello")
        [end] = self.tunnel.ends
        self.assertEqual((end.head["method"], end.head["url"], end.head["length"]),
                         ("POST", "/x", 10))
        self.assertEqual((end.body, end.ended), (b"hello", False))
        visitor.send(b"world")
        self.tunnel.pump()
        self.assertEqual((end.body, end.ended), (b"helloworld", True))
        end.stream.send_head({"status": 204}, fin=True)
        self.tunnel.pump()
        self.assertEqual(visitor.answer().status, 204)

    def test_answer_reaches_the_visitor_as_it_comes(self):
        """The head goes out at once, each chunk as it arrives, the length kept."""
        visitor = self.visit()
        [end] = self.tunnel.ends
        self.assertTrue(end.ended)  # a GET has no body
        end.stream.send_head({"status": 200, "length": 11,
                              "headers": {"Set-Cookie": ["a=1", "b=2"]}})
        end.stream.write(b"hello ")
        self.tunnel.pump()
        head = visitor.transport.value()
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)
        self.assertIn(b"Content-Length: 11\r\n", head)
        self.assertEqual(head.count(b"Set-Cookie: "), 2)
        self.assertTrue(head.endswith(b"\r\n\r\nhello "), head)
        end.stream.write(b"world", fin=True)
        self.tunnel.pump()
        answer = visitor.answer()
        self.assertEqual((answer.status, answer.body), (200, b"hello world"))

    def test_no_answer_head_within_the_request_timeout_is_504(self):
        """No head from the client within --request-timeout: 504, and the stream is reset."""
        visitor = self.visit()
        [end] = self.tunnel.ends
        self.clock.advance(TIMEOUT)
        self.tunnel.pump()
        answer = visitor.answer()
        self.assertEqual(answer.status, 504)
        self.assertIn(b"did not answer within 30 seconds", answer.body)
        self.assertEqual(end.reset, "no answer within the request timeout")

    def test_stream_that_keeps_sending_is_never_cut(self):
        """An answer that keeps sending outlives the request timeout and the idle timeout many times."""
        visitor = self.visit()
        [end] = self.tunnel.ends
        end.stream.send_head({"status": 200, "headers": {"Content-Type": "text/event-stream"}})
        self.tunnel.pump()
        for n in range(10):
            self.clock.advance(IDLE / 2)
            end.stream.write(b"data: %d\n\n" % n)
            self.tunnel.pump()
        self.assertFalse(visitor.closing)
        self.assertIsNone(end.reset)
        end.stream.finish()
        self.tunnel.pump()

    def test_idle_stream_is_closed_and_the_visitor_connection_aborted(self):
        """A streamed answer silent for the idle timeout is reset, and the visitor's connection aborted."""
        visitor = self.visit()
        [end] = self.tunnel.ends
        end.stream.send_head({"status": 200})
        end.stream.write(b"partial")
        self.tunnel.pump()
        self.clock.advance(IDLE)
        self.tunnel.pump()
        self.assertEqual(end.reset, "idle")
        self.assertTrue(visitor.closing)

    def test_reset_before_the_head_is_502(self):
        """A client that resets the stream before answering gives the visitor 502 with the reason."""
        visitor = self.visit()
        [end] = self.tunnel.ends
        end.stream.reset("the local service refused")
        self.tunnel.pump()
        answer = visitor.answer()
        self.assertEqual(answer.status, 502)
        self.assertIn(b"the local service refused", answer.body)

    def test_reset_after_the_head_aborts_the_visitor(self):
        """A reset mid-answer aborts the visitor's connection: no body that looks complete."""
        visitor = self.visit()
        [end] = self.tunnel.ends
        end.stream.send_head({"status": 200, "length": 100})
        end.stream.write(b"x" * 10)
        end.stream.reset("the local service failed mid-answer")
        self.tunnel.pump()
        self.assertTrue(visitor.closing)
        head, _, body = visitor.transport.value().partition(b"\r\n\r\n")
        self.assertEqual(body, b"x" * 10)  # and nothing that would end it

    def test_visitor_hanging_up_resets_the_stream(self):
        """A visitor that hangs up has its stream reset at once."""
        visitor = self.visit()
        [end] = self.tunnel.ends
        visitor.close()
        self.tunnel.pump()
        self.assertEqual(end.reset, "the visitor went away")

    def test_past_the_rate_limit_is_429_with_retry_after_without_a_stream(self):
        """Past the burst, a streamed request is refused 429 with Retry-After and never opens a stream."""
        for _ in range(2):
            self.visit()
        for end in self.tunnel.ends:
            end.stream.send_head({"status": 200}, fin=True)
        self.tunnel.pump()
        refused = self.visit()
        self.assertEqual(len(self.tunnel.ends), 2)
        answer = refused.answer()
        self.assertEqual(answer.status, 429)
        self.assertEqual(answer.header(b"retry-after"), [b"51"])

    def test_absurd_content_length_opens_no_stream(self):
        """A Content-Length too large for any body (2^64 and up) opens no stream and breaks nothing (the buffered path refuses it with 413)."""
        visitor = self.visit(b"POST", headers=[(b"Content-Length", b"99999999999999999999")])
        self.assertEqual(self.tunnel.ends, [])
        self.assertEqual(self.flushLoggedErrors(), [])
        visitor.close()
