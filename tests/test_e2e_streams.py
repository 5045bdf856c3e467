"""
End to end over loopback with the negotiated stream layer: our proxy and
our client speak C{streams}, so bodies of any size flow through in both
directions, answers reach the visitor as the local service writes them,
a visitor or a local service that stops reading holds at most a window of
memory, and a hang-up on either side ends the other at once.
"""

import hashlib

from twisted.internet import defer, reactor
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from twisted.web import server
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource

from brickchain_proxy.features import STREAMS
from tests.support import (
    pseudo_random_bytes,
    start_local_service,
    start_tunnel,
    visitor,
    wait_until,
)

CHUNK = 64 * 1024


class _Produce:
    """
    Writes C{total} pseudo-random bytes to a request in chunks, as fast as
    the connection takes them (a push producer), then finishes.
    """

    def __init__(self, request, total, seed):
        self._request = request
        self._data = pseudo_random_bytes(total, seed)
        self._sent = 0
        self._paused = False
        self.pauses = 0
        request.registerProducer(self, True)
        reactor.callLater(0, self._pump)

    def _pump(self):
        while not self._paused and self._sent < len(self._data):
            self._request.write(self._data[self._sent:self._sent + CHUNK])
            self._sent += CHUNK
        if self._sent >= len(self._data) and not self._paused:
            self._request.unregisterProducer()
            self._request.finish()

    def pauseProducing(self):
        self._paused = True
        self.pauses += 1

    def resumeProducing(self):
        self._paused = False
        reactor.callLater(0, self._pump)

    def stopProducing(self):
        self._paused = True
        self._sent = len(self._data) + 1


class StreamingService(Resource):
    """
    The local service:

      - C{/download/<n>}: C{n} pseudo-random bytes, with Content-Length;
      - C{/chunked/<n>}: the same without a length (chunked);
      - C{/upload}: the SHA-256 and size of the body it read;
      - C{/events}: server-sent events, one per L{send_event} call;
      - C{/die/<n>}: C{n} bytes of a promised larger body; the connection
        drops at L{die}.
    """

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.producers = []
        self.event_requests = []
        self.lost = []
        self.dying = []

    def render_GET(self, request):
        parts = request.path.split(b"/")
        route, argument = parts[1], (parts[2] if len(parts) > 2 else b"0")
        request.notifyFinish().addErrback(lambda f: self.lost.append(request.path))
        if route == b"download":
            request.setHeader(b"Content-Length", argument)
            self.producers.append(_Produce(request, int(argument), 1))
            return server.NOT_DONE_YET
        if route == b"chunked":
            self.producers.append(_Produce(request, int(argument), 2))
            return server.NOT_DONE_YET
        if route == b"events":
            request.setHeader(b"Content-Type", b"text/event-stream")
            request.write(b": open\n\n")
            self.event_requests.append(request)
            return server.NOT_DONE_YET
        if route == b"die":
            request.setHeader(b"Content-Length", b"%d" % (int(argument) * 2))
            request.write(b"x" * int(argument))
            self.dying.append(request)
            return server.NOT_DONE_YET
        request.setResponseCode(404)
        return b"no such route\n"

    def render_POST(self, request):
        body = request.content.read()
        request.setHeader(b"Content-Type", b"text/plain")
        return b"%d %s %s" % (len(body), hashlib.sha256(body).hexdigest().encode(),
                              b"chunked" if request.getHeader(b"content-length") is None
                              else b"length")

    def send_event(self, text):
        for request in self.event_requests:
            request.write(b"data: " + text + b"\n\n")

    def die(self):
        for request in self.dying:
            request.channel.transport.abortConnection()

    def end_events(self):
        requests, self.event_requests = self.event_requests, []
        for request in requests:
            request.finish()


class _Reason:
    """
    Why a response body ended (a Failure, wrapped).
    """

    def __init__(self, failure):
        self.failure = failure

    def check(self, *kinds):
        return self.failure.check(*kinds)

    def raiseException(self):
        self.failure.raiseException()

    def __repr__(self):
        return repr(self.failure)


class _Collect(Protocol):
    def __init__(self):
        self.chunks = []
        self.done = defer.Deferred()
        self.arrived = None

    def dataReceived(self, data):
        self.chunks.append(data)
        if self.arrived is not None:
            d, self.arrived = self.arrived, None
            d.callback(b"".join(self.chunks))

    def connectionLost(self, reason):
        # A Failure given to callback() would errback: hand over its value.
        self.done.callback(_Reason(reason))

    def next_data(self):
        self.arrived = defer.Deferred()
        return self.arrived


class _StreamingUpload:
    """
    A request body of C{total} pseudo-random bytes, produced in chunks.
    """

    def __init__(self, total, length_known=True):
        self._data = pseudo_random_bytes(total, 3)
        self.length = total if length_known else UNKNOWN_LENGTH

    def startProducing(self, consumer):
        for start in range(0, len(self._data), CHUNK):
            consumer.write(self._data[start:start + CHUNK])
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class StreamsEndToEndTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.local = StreamingService()
        self.tunnel = yield start_tunnel(self, start_local_service(self, self.local))
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)
        self.http = visitor(self)

    def url(self, path):
        return self.tunnel.path_url(path).encode("ascii")

    def connection(self):
        [connection] = self.tunnel.proxy.tunnel_factory.connections
        return connection

    def test_our_client_and_proxy_negotiate_streams(self):
        """Between our own proxy and client the tunnel speaks streams."""
        self.assertIn(STREAMS, self.connection().features)
        self.assertIsNotNone(self.connection().streams)

    @defer.inlineCallbacks
    def test_large_download_arrives_byte_exact_with_its_length(self):
        """A 20 MB download, far over --max-body, arrives whole, with the service's Content-Length."""
        size = 20 * 1024 * 1024
        response = yield self.agent.request(b"GET", self.url("/download/%d" % size))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.length, size)
        body = _Collect()
        response.deliverBody(body)
        reason = yield body.done
        self.assertTrue(reason.check(ResponseDone), reason)
        self.assertEqual(hashlib.sha256(b"".join(body.chunks)).hexdigest(),
                         hashlib.sha256(pseudo_random_bytes(size, 1)).hexdigest())
        yield self.assertStreamsGone()

    @defer.inlineCallbacks
    def test_answer_without_length_is_chunked_to_the_visitor(self):
        """An answer of unknown length reaches the visitor chunked, whole."""
        size = 3 * 1024 * 1024 + 7
        response = yield self.agent.request(b"GET", self.url("/chunked/%d" % size))
        self.assertEqual(response.length, UNKNOWN_LENGTH)
        body = _Collect()
        response.deliverBody(body)
        reason = yield body.done
        self.assertTrue(reason.check(ResponseDone), reason)
        self.assertEqual(b"".join(body.chunks), pseudo_random_bytes(size, 2))

    @defer.inlineCallbacks
    def test_large_upload_arrives_byte_exact(self):
        """A 20 MB upload reaches the local service whole, with its length."""
        size = 20 * 1024 * 1024
        response = yield self.agent.request(b"POST", self.url("/upload"), None,
                                            _StreamingUpload(size))
        body = yield _read(response)
        self.assertEqual(body, b"%d %s length" % (
            size, hashlib.sha256(pseudo_random_bytes(size, 3)).hexdigest().encode()))

    @defer.inlineCallbacks
    def test_chunked_upload_arrives_byte_exact_and_chunked(self):
        """An upload of unknown length reaches the local service whole, without a length."""
        size = 2 * 1024 * 1024 + 11
        response = yield self.agent.request(b"POST", self.url("/upload"), None,
                                            _StreamingUpload(size, length_known=False))
        body = yield _read(response)
        self.assertEqual(body, b"%d %s chunked" % (
            size, hashlib.sha256(pseudo_random_bytes(size, 3)).hexdigest().encode()))

    @defer.inlineCallbacks
    def test_events_reach_the_visitor_as_they_are_written(self):
        """Each server-sent event reaches the visitor before the next is written."""
        response = yield self.agent.request(b"GET", self.url("/events"))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/event-stream"])
        body = _Collect()
        arrived = body.next_data()
        response.deliverBody(body)
        seen = yield arrived
        self.assertEqual(seen, b": open\n\n")
        for n in range(3):
            arrived = body.next_data()
            self.local.send_event(b"event %d" % n)
            seen = yield arrived
            self.assertTrue(seen.endswith(b"data: event %d\n\n" % n), seen)
        self.local.end_events()
        reason = yield body.done
        self.assertTrue(reason.check(ResponseDone), reason)

    @defer.inlineCallbacks
    def test_visitor_that_stops_reading_holds_a_bounded_amount_and_neighbours_flow(self):
        """A visitor not reading a huge download pauses the local service; another request on the tunnel is answered meanwhile."""
        size = 200 * 1024 * 1024
        response = yield self.agent.request(b"GET", self.url("/download/%d" % size))
        reader = _Collect()
        response.deliverBody(reader)
        reader.transport.pauseProducing()  # the visitor stops reading
        yield wait_until(lambda: self.local.producers and self.local.producers[0].pauses,
                         what="the local service paused")
        producer = self.local.producers[0]
        # A neighbour on the same tunnel is not held up.
        other = yield self.http.get(self.tunnel.path_url("/download/1000"))
        self.assertEqual(len((yield other.content())), 1000)
        # What left the local service is bounded by windows and socket
        # buffers, not by the size of the body.
        self.assertLess(producer._sent, 16 * 1024 * 1024)
        yield wait_until(lambda: producer._paused, what="the local service held back")
        self.assertLess(producer._sent, 16 * 1024 * 1024)
        session = self.tunnel.client.protocol.streams
        self.assertLessEqual(sum(s.queued for s in session.streams.values()), 2 * CHUNK)
        reader.transport.stopProducing()
        yield reader.done

    @defer.inlineCallbacks
    def test_visitor_hanging_up_ends_the_local_request(self):
        """A visitor that hangs up mid-download has the local request closed at once."""
        size = 200 * 1024 * 1024
        response = yield self.agent.request(b"GET", self.url("/download/%d" % size))
        body = _Collect()
        arrived = body.next_data()
        response.deliverBody(body)
        yield arrived
        body.transport.stopProducing()  # hang up
        yield wait_until(lambda: self.local.lost, what="the local request closed")
        yield self.assertStreamsGone()

    @defer.inlineCallbacks
    def test_local_service_dying_mid_body_aborts_the_visitor(self):
        """A local service that dies mid-body leaves the visitor with a broken response, never a complete-looking one."""
        response = yield self.agent.request(b"GET", self.url("/die/100000"))
        self.assertEqual(response.length, 200000)
        body = _Collect()
        arrived = body.next_data()
        response.deliverBody(body)
        yield arrived
        self.local.die()
        reason = yield body.done
        self.assertFalse(reason.check(ResponseDone), reason)
        self.assertTrue(reason.check(ResponseFailed, PotentialDataLoss), reason)
        yield self.assertStreamsGone()

    def assertStreamsGone(self):
        def gone():
            proxy = self.connection().streams
            client = self.tunnel.client.protocol.streams
            return (proxy is not None and not len(proxy) and not len(client)
                    and not self.tunnel.proxy.public.in_flight)

        return wait_until(gone, what="no stream left on either side")


class StreamLimitTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.local = StreamingService()
        self.tunnel = yield start_tunnel(self, start_local_service(self, self.local),
                                         max_stream_body=100000)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)

    def url(self, path):
        return self.tunnel.path_url(path).encode("ascii")

    @defer.inlineCallbacks
    def test_streamed_request_over_the_cap_gets_413(self):
        """With --max-stream-body, a larger upload gets 413 and the service sees no whole body."""
        response = yield self.agent.request(b"POST", self.url("/upload"), None,
                                            _StreamingUpload(300000, length_known=False))
        body = yield _read(response)
        self.assertEqual(response.code, 413)
        self.assertIn(b"limit of 100000 bytes", body)

    @defer.inlineCallbacks
    def test_streamed_response_over_the_cap_is_cut_off(self):
        """With --max-stream-body, a larger answer aborts the visitor's connection, never looking complete."""
        try:
            response = yield self.agent.request(b"GET", self.url("/download/300000"))
        except ResponseNeverReceived:
            return  # cut off before even the head left
        collected = _Collect()
        response.deliverBody(collected)
        reason = yield collected.done
        self.assertFalse(reason.check(ResponseDone), reason)
        self.assertLess(len(b"".join(collected.chunks)), 300000)


@defer.inlineCallbacks
def _read(response):
    body = _Collect()
    response.deliverBody(body)
    reason = yield body.done
    if not reason.check(ResponseDone, PotentialDataLoss):
        reason.raiseException()
    return b"".join(body.chunks)
