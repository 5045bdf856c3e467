"""
L{brickchain_proxy.client.http1}: the streamed path's HTTP/1.1 client,
against a scripted server over real loopback TCP: what it writes, byte for
byte, and what it makes of every way an answer can be framed.
"""

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web._newclient import RequestGenerationFailed, ResponseNeverReceived
from twisted.web.client import URI, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from brickchain_proxy.client.forward import BytesProducer, LocalForwarder, host_value
from brickchain_proxy.client.http1 import LocalHTTP, request_head


class _Scripted(Protocol):
    """
    Records what arrives; answers each complete request head (and its
    body, by Content-Length or chunked end) with the next scripted answer.
    """

    def connectionMade(self):
        self.factory.connections.append(self)
        self.received = b""

    def dataReceived(self, data):
        self.received += data
        self.factory.received.append(data)
        while self.factory.answers and self._complete():
            answer = self.factory.answers.pop(0)
            self.received = b""
            if answer is None:
                self.transport.loseConnection()
                return
            self.transport.write(answer)
            if answer.endswith(b"CLOSE"):
                self.transport.loseConnection()

    def _complete(self):
        head, sep, body = self.received.partition(b"\r\n\r\n")
        if not sep:
            return False
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            return body.endswith(b"0\r\n\r\n")
        for line in lower.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                return len(body) >= int(line.split(b":")[1])
        return True


class _Body(Protocol):
    def __init__(self):
        self.data = b""
        self.ended = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.reason = reason
        self.ended.callback(None)


class _Producer(BytesProducer):
    """
    A body in C{chunks}, each written on its own, of C{length}.
    """

    def __init__(self, chunks, length=UNKNOWN_LENGTH):
        BytesProducer.__init__(self, b"".join(chunks))
        self._chunks = chunks
        self.length = length

    def startProducing(self, consumer):
        for chunk in self._chunks:
            consumer.write(chunk)
        return defer.succeed(None)


class RequestHeadTests(SynchronousTestCase):
    def test_host_first_headers_as_given_then_framing(self):
        head = request_head(b"POST", b"/a?b=c", b"svc:8080",
                            [(b"X-One", [b"1", b"2"]), (b"Accept", [b"*/*"])],
                            b"Content-Length: 3\r\n")
        self.assertEqual(head, b"POST /a?b=c HTTP/1.1\r\nHost: svc:8080\r\nX-One: 1\r\n"
                               b"X-One: 2\r\nAccept: */*\r\nContent-Length: 3\r\n\r\n")

    def test_what_cannot_be_sent_is_refused(self):
        for method, target, headers in ((b"GE T", b"/", []), (b"GET", b"/a b", []),
                                        (b"GET", b"/\r\n", []),
                                        (b"GET", b"/", [(b"Bad:Name", [b"x"])])):
            self.assertRaises(ValueError, request_head, method, target, b"h", headers, b"")

    def test_line_breaks_in_values_become_spaces(self):
        head = request_head(b"GET", b"/", b"h", [(b"X", [b"a\r\nInjected: yes"])], b"")
        self.assertIn(b"X: a  Injected: yes\r\n", head)
        self.assertNotIn(b"\r\nInjected", head)


class LocalHTTPTests(TestCase):
    def setUp(self):
        self.factory = Factory.forProtocol(_Scripted)
        self.factory.answers = []
        self.factory.received = []
        self.factory.connections = []
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        self.origin = b"http://127.0.0.1:%d" % number
        self.http = LocalHTTP(reactor, self.origin,
                              TCP4ClientEndpoint(reactor, "127.0.0.1", number),
                              b"127.0.0.1:%d" % number)
        self.addCleanup(self._close_all)

    def _close_all(self):
        self.http.close()
        for connection in self.factory.connections:
            connection.transport.abortConnection()

    @defer.inlineCallbacks
    def _get(self, path=b"/", method=b"GET", headers=None, body=None):
        response = yield self.http.request(method, self.origin + path, headers, body)
        reader = _Body()
        response.deliverBody(reader)
        yield reader.ended
        yield _turn()  # the connection goes back to the pool
        return response, reader.data, reader.reason

    @defer.inlineCallbacks
    def test_kept_alive_and_reused(self):
        self.factory.answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
                                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye"]
        first = yield self._get(b"/one")
        second = yield self._get(b"/two?x=1")
        self.assertEqual((first[1], second[1]), (b"hi", b"bye"))
        self.assertTrue(first[2].check(ResponseDone))
        self.assertEqual(len(self.factory.connections), 1)
        self.assertEqual(first[0].length, 2)
        self.assertEqual(b"".join(self.factory.received).split(b"\r\n")[0], b"GET /one HTTP/1.1")

    @defer.inlineCallbacks
    def test_a_reader_that_paused_as_the_answer_ended_leaves_the_next_one_reading(self):
        """
        A reader pauses its transport on the last chunk (its stream's window
        ran out) and pauses again later: the connection, reused by then, is
        read all the same.
        """
        self.factory.answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast",
                                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"]

        class Pausing(_Body):
            def dataReceived(self, data):
                _Body.dataReceived(self, data)
                self.transport.pauseProducing()

        response = yield self.http.request(b"GET", self.origin + b"/")
        reader = Pausing()
        response.deliverBody(reader)
        yield reader.ended
        yield _turn()
        second = yield self._get()
        reader.transport.pauseProducing()  # late: the connection is not its any more
        self.factory.answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3")
        yield self.http.request(b"GET", self.origin + b"/")
        self.assertEqual((reader.data, second[1]), (b"last", b"next"))
        self.assertEqual(len(self.factory.connections), 1)

    @defer.inlineCallbacks
    def test_chunked_answer_and_connection_headers(self):
        self.factory.answers = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\n"
            b"X-Hop: 1\r\nX-End: 2\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"]
        response, data, reason = yield self._get()
        self.assertEqual(data, b"hello world")
        self.assertIs(response.length, UNKNOWN_LENGTH)
        self.assertEqual(response.connection_tokens, frozenset(["keep-alive", "x-hop"]))
        self.assertFalse(response.headers.hasHeader(b"transfer-encoding"))
        self.assertEqual(response.headers.getRawHeaders(b"x-end"), [b"2"])
        self.assertTrue(reason.check(ResponseDone))

    @defer.inlineCallbacks
    def test_a_body_delimited_by_close_is_potential_data_loss(self):
        self.factory.answers = [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the endCLOSE"]
        response, data, reason = yield self._get()
        self.assertEqual(data, b"until the endCLOSE")
        self.assertTrue(reason.check(PotentialDataLoss))

    @defer.inlineCallbacks
    def test_a_truncated_body_fails(self):
        self.factory.answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshortCLOSE"]
        response, data, reason = yield self._get()
        self.assertEqual(data, b"shortCLOSE")
        self.assertFalse(reason.check(ResponseDone, PotentialDataLoss))

    @defer.inlineCallbacks
    def test_interim_answers_are_skipped_and_no_content_has_no_body(self):
        self.factory.answers = [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"]
        response, data, reason = yield self._get()
        self.assertEqual((response.code, response.length, data), (204, 0, b""))
        again = yield self._get()
        self.assertEqual(again[1], b"x")
        self.assertEqual(len(self.factory.connections), 1)

    @defer.inlineCallbacks
    def test_a_body_of_unknown_length_is_sent_chunked(self):
        self.factory.answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
        yield self._get(method=b"POST", body=_Producer([b"abc", b"", b"de"]))
        sent = b"".join(self.factory.received)
        self.assertIn(b"Transfer-Encoding: chunked\r\n", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"))

    @defer.inlineCallbacks
    def test_a_body_of_known_length_is_sent_as_it_is(self):
        self.factory.answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
        headers = Headers({b"Host": [b"renamed.example"], b"X-A": [b"1"]})
        yield self._get(method=b"PUT", headers=headers, body=_Producer([b"12345"], 5))
        sent = b"".join(self.factory.received)
        self.assertTrue(sent.startswith(b"PUT / HTTP/1.1\r\nHost: renamed.example\r\n"))
        self.assertTrue(sent.endswith(b"Content-Length: 5\r\n\r\n12345"))

    @defer.inlineCallbacks
    def test_a_pooled_connection_closed_meanwhile_is_retried_for_a_get(self):
        """
        The service closes the kept-alive connection as the next GET goes
        out on it: the GET is sent again on a new connection.
        """
        self.factory.answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", None,
                                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"]
        yield self._get()
        response, data, reason = yield self._get(b"/again")
        self.assertEqual(data, b"b")
        self.assertEqual(len(self.factory.connections), 2)

    @defer.inlineCallbacks
    def test_no_answer_fails_with_response_never_received(self):
        self.factory.answers = [None]
        d = self.http.request(b"POST", self.origin + b"/", None, _Producer([b"x"], 1))
        yield self.assertFailure(d, ResponseNeverReceived)

    @defer.inlineCallbacks
    def test_a_body_that_fails_at_once_fails_the_request(self):
        class Failing(_Producer):
            def startProducing(self, consumer):
                raise RuntimeError("no body after all")

        d = self.http.request(b"POST", self.origin + b"/", None, Failing([b"x"], 1))
        failure = yield self.assertFailure(d, RequestGenerationFailed)
        self.assertTrue(failure.reasons[0].check(RuntimeError))
        self.flushLoggedErrors(RuntimeError)

    @defer.inlineCallbacks
    def test_cancelling_closes_the_connection(self):
        d = self.http.request(b"GET", self.origin + b"/slow")
        while not self.factory.received:
            yield _turn()
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        while self.factory.connections[0].transport.connected:
            yield _turn()
        self.assertEqual(self.http._idle, [])

    def test_another_origin_is_refused(self):
        self.assertRaises(ValueError, self.http.request, b"GET", b"http://elsewhere/")


def _turn():
    d = defer.Deferred()
    reactor.callLater(0, d.callback, None)
    return d


class ClientChoiceTests(SynchronousTestCase):
    def test_the_host_header_is_agents(self):
        for url, host in ((b"http://127.0.0.1:8080", b"127.0.0.1:8080"),
                          (b"http://[::1]:8080", b"[::1]:8080"),
                          (b"http://svc:80", b"svc"), (b"https://Svc.example", b"Svc.example")):
            self.assertEqual(host_value(URI.fromBytes(url)), host, url)


    def test_head_goes_to_agent_the_rest_to_local_http(self):
        forwarder = LocalForwarder(reactor, "http://127.0.0.1:1")
        self.assertIs(forwarder.client_for(b"HEAD"), forwarder.agent)
        self.assertIsInstance(forwarder.client_for(b"GET"), LocalHTTP)
