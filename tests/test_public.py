"""
Tests for L{brickchain_proxy.proxy.public.PublicTunnel}: a visitor's HTTP
request through the proxy's real site (L{build_site}: the router, the
bounded request, the hardened channel) to a tunnel connection attached to a
real L{TunnelHub}, and every answer the visitor can get -- the tunnel's
own, or a plain-text refusal saying why (413, 429, 502, 503, 504) -- and
the refusals of a websocket upgrade it hands to the visitor websocket.

No sockets: each visitor is a real HTTP channel on a L{StringTransport}
(L{tests.support_http.MemoryVisitor}), the tunnel a L{FakeConnection} that
records the http-requests it is sent and answers through
L{TunnelHub.reply}.  Every timer -- the request timeout, the rate limiter's
refill, the visitor connections' idle timeout, the bus -- is on one
L{Clock}, and every test ends with nothing on it, nothing pending in the
hub and nothing in flight.
"""

from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from brickchain_proxy.bus import BusUnavailable, MemoryBus, MemoryDirectory
from brickchain_proxy.features import CLIENT_DEFAULT
from brickchain_proxy.messages import HttpRequest, WSRequest, WSTeardown, decode
from brickchain_proxy.proxy import tap
from brickchain_proxy.proxy.budget import ByteBudget
from brickchain_proxy.proxy.hub import TunnelHub
from brickchain_proxy.proxy.site import build_site
from brickchain_proxy.proxy.visitor_ws import VisitorFactory
from brickchain_proxy.ratelimit import TokenBucketLimiter
from tests.support_http import VISITOR_ADDRESS, MemoryVisitor
from tests.support_hub import CLIENT, OTHER_CLIENT, FakeConnection

DOMAIN = "proxy.test"
TIMEOUT = 30.0
MAX_BODY = 1000
MAX_PENDING = 2
#: The rate limit: a burst of 3, refilled one request per 100 s.
BURST, PERIOD = 3, 300.0
IDLE_TIMEOUT = 75.0

#: A tunnel nobody holds.
UNKNOWN = "a" * 52
#: A tunnel the directory says another instance holds.
REMOTE = "e" * 52

PLAIN_TEXT = [b"text/plain; charset=utf-8"]

#: The headers of a websocket upgrade request (RFC 6455 section 4.1).
UPGRADE = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
           (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
           (b"Sec-WebSocket-Version", b"13")]


class OutageBus(MemoryBus):
    """
    A L{MemoryBus} that, while C{down}, fails every publish with
    L{BusUnavailable}, as the Redis bus does while Redis is unreachable.
    """

    down = False

    def publish(self, channel, payload):
        if self.down:
            return fail(BusUnavailable("connection refused"))
        return MemoryBus.publish(self, channel, payload)


class OutageDirectory(MemoryDirectory):
    """
    A L{MemoryDirectory} whose lookups fail with L{BusUnavailable} while
    C{down}.
    """

    down = False

    def lookup(self, client_id):
        if self.down:
            return fail(BusUnavailable("connection refused"))
        return MemoryDirectory.lookup(self, client_id)


class _PublicTestCase(SynchronousTestCase):
    """
    The proxy's public site (instance C{here}) on a L{Clock}, with tunnel
    L{CLIENT} held here by L{tunnel} (every protocol extension negotiated),
    and helpers to visit it.
    """

    def setUp(self):
        self.clock = Clock()
        self.bus = OutageBus(self.clock)
        self.directory = OutageDirectory()
        self.hub = TunnelHub(self.clock, self.bus, self.directory,
                             request_timeout=TIMEOUT, instance_id="here")
        self.successResultOf(self.hub.start())
        self.site = build_site(
            DOMAIN, self.hub, TokenBucketLimiter(self.clock, BURST, PERIOD),
            Resource(), max_body=MAX_BODY, request_timeout=TIMEOUT,
            reactor=self.clock, max_pending=MAX_PENDING,
            idle_timeout=IDLE_TIMEOUT,
            visitor_factory=VisitorFactory(self.hub, self.clock, MAX_BODY))
        self.public = self.site.tunnel
        self.tunnel = FakeConnection(features=CLIENT_DEFAULT)
        self.successResultOf(self.hub.attach(CLIENT, self.tunnel))
        self.visitors = []
        self.addCleanup(self.assertNothingLeft)

    def assertNothingLeft(self):
        """
        Nothing waits for a tunnel; once the visitors' connections are gone,
        no timer is left.
        """
        self.assertEqual(len(self.hub.pending), 0)
        self.assertEqual(self.hub.streams, {})
        self.assertEqual(self.public.in_flight, {})
        for visitor in self.visitors:
            visitor.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Every body byte held for a request was given back.
        self.assertEqual((self.public.budget.total, self.public.budget.by_tunnel),
                         (0, {}))

    def visit(self, method=b"GET", path=b"/", client_id=CLIENT, **kwargs):
        """
        A new visitor connection sending one request for C{path} through
        tunnel C{client_id}, routed by path (C{/proxy/request/<id>/...}).
        """
        visitor = MemoryVisitor(self.site)
        self.visitors.append(visitor)
        visitor.request(method, b"/proxy/request/" + client_id.encode("ascii") + path,
                        **kwargs)
        return visitor

    def forwarded(self):
        """
        The http-requests the tunnel was sent, decoded.
        """
        return [decode(raw) for raw in self.tunnel.sent]

    def answer_all(self):
        """
        Answer every request the tunnel was sent (200, C{ok}).
        """
        for raw in self.tunnel.sent:
            self.tunnel.answer(self.hub, raw)

    def assertPlainText(self, answer, status, text):
        """
        C{answer} is C{status} with exactly C{text} as its plain-text body.
        """
        self.assertEqual((answer.status, answer.body), (status, text.encode("utf-8")))
        self.assertEqual(answer.header(b"content-type"), PLAIN_TEXT)


class SuccessTests(_PublicTestCase):
    """
    A request the tunnel answers: the http-request it gets, and the
    visitor's answer built from its http-response.
    """

    def test_request_reaches_the_tunnel_as_an_http_request(self):
        """Method, raw path, raw query, end-to-end headers, forwarding headers and body reach the tunnel; Host does not."""
        self.visit(b"POST", b"/some/where%2Fx?a=1&b=%20&a=3",
                   headers=[(b"X-Custom", b"custom value"),
                            (b"Cookie", b"session=abc")],
                   body=b"the body")

        [request] = self.forwarded()
        self.assertIsInstance(request, HttpRequest)
        self.assertEqual(
            (request.method, request.url, request.query, request.body),
            ("POST", "/some/where%2Fx", "a=1&b=%20&a=3", b"the body"))
        self.assertEqual(request.headers["X-Custom"], "custom value")
        self.assertEqual(request.headers["Cookie"], "session=abc")
        self.assertEqual(request.headers["X-Forwarded-For"], VISITOR_ADDRESS.host)
        self.assertEqual(request.headers["X-Forwarded-Host"], DOMAIN)
        self.assertEqual(request.headers["X-Forwarded-Proto"], "http")
        self.assertNotIn("host", [name.lower() for name in request.headers])
        self.answer_all()

    def test_tunnel_answer_reaches_the_visitor(self):
        """Status, headers (two Set-Cookie kept apart), Content-Type and body reach the visitor, with the body's own Content-Length."""
        visitor = self.visit(path=b"/page")
        self.assertFalse(visitor.answered())

        [raw] = self.tunnel.sent
        self.assertTrue(self.tunnel.answer(
            self.hub, raw, status=201,
            headers={"Set-Cookie": ["a=1; Path=/", "b=2; HttpOnly"],
                     "X-Kept": "yes", "Content-Length": "999"},
            content_type="text/html; charset=utf-8",
            body=b"<p>made</p>"))

        answer = visitor.answer()
        self.assertEqual((answer.status, answer.body), (201, b"<p>made</p>"))
        self.assertEqual(answer.header(b"set-cookie"), [b"a=1; Path=/", b"b=2; HttpOnly"])
        self.assertEqual(answer.header(b"x-kept"), [b"yes"])
        self.assertEqual(answer.header(b"content-type"), [b"text/html; charset=utf-8"])
        self.assertEqual(answer.header(b"content-length"), [b"11"])
        self.assertFalse(visitor.closing)

    def test_head_keeps_the_tunnels_content_length_without_a_body(self):
        """HEAD reaches the tunnel as HEAD; the visitor gets its Content-Length (what a GET would get) and no body."""
        visitor = self.visit(b"HEAD", b"/file")

        [request] = self.forwarded()
        self.assertEqual(request.method, "HEAD")
        self.tunnel.answer(self.hub, self.tunnel.sent[0],
                           headers={"Content-Length": "1000"}, body=b"")

        answer = visitor.answer()
        self.assertEqual((answer.status, answer.body), (200, b""))
        self.assertEqual(answer.header(b"content-length"), [b"1000"])

    def test_host_routing_reaches_the_same_tunnel(self):
        """Host <clientID>.<domain> routes to the tunnel with the request's own path."""
        visitor = MemoryVisitor(self.site)
        self.visitors.append(visitor)
        visitor.request(b"GET", b"/by/host?x=1",
                        host=(CLIENT + "." + DOMAIN + ":8080").encode("ascii"))

        [request] = self.forwarded()
        self.assertEqual((request.url, request.query), ("/by/host", "x=1"))
        self.answer_all()
        self.assertEqual(visitor.answer().body, b"ok")


class BodyLimitTests(_PublicTestCase):
    """
    413: a request body over C{max_body} is refused, never truncated.
    """

    def test_declared_body_over_max_body_gets_413_unseen_by_the_tunnel(self):
        """A Content-Length over max_body gets 413 saying the limit; the tunnel is sent nothing."""
        visitor = self.visit(b"POST", b"/upload", body=b"x" * (MAX_BODY + 1))

        self.assertPlainText(visitor.answer(), 413,
                             "request body is larger than the proxy's limit of "
                             "1000 bytes\n")
        self.assertEqual(self.tunnel.sent, [])

    def test_body_over_max_body_for_an_offline_tunnel_gets_502(self):
        """For a tunnel nobody holds, a body over max_body gets the 502 that says so, not a 413 a visitor would not retry."""
        visitor = self.visit(b"POST", b"/upload", client_id="n" * 52,
                             body=b"x" * (MAX_BODY + 1))

        self.assertPlainText(visitor.answer(), 502,
                             "tunnel {} is not connected\n".format("n" * 52))

    def test_chunked_body_growing_over_max_body_gets_413(self):
        """A chunked body that only grows past max_body on the way gets 413 too."""
        visitor = MemoryVisitor(self.site)
        self.visitors.append(visitor)
        chunk = b"y" * 600
        visitor.request(b"POST", b"/proxy/request/" + CLIENT.encode("ascii") + b"/upload",
                        headers=[(b"Transfer-Encoding", b"chunked")])
        visitor.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n")

        self.assertPlainText(visitor.answer(), 413,
                             "request body is larger than the proxy's limit of "
                             "1000 bytes\n")
        self.assertEqual(self.tunnel.sent, [])

    def test_body_of_exactly_max_body_reaches_the_tunnel(self):
        """A body of max_body bytes is forwarded whole."""
        visitor = self.visit(b"PUT", b"/upload", body=b"z" * MAX_BODY)

        [request] = self.forwarded()
        self.assertEqual(request.body, b"z" * MAX_BODY)
        self.answer_all()
        self.assertEqual(visitor.answer().status, 200)


class RateLimitTests(_PublicTestCase):
    """
    429: past the tunnel's burst, requests are refused with a Retry-After
    that tells the truth.
    """

    def use_up_the_burst(self):
        for _ in range(BURST):
            visitor = self.visit()
            self.answer_all()
            del self.tunnel.sent[:]
            self.assertEqual(visitor.answer().status, 200)

    def test_request_past_the_burst_gets_429_with_retry_after(self):
        """The request after the burst gets 429 with Retry-After 101 (one request per 100 s) and never reaches the tunnel."""
        self.use_up_the_burst()

        visitor = self.visit()

        answer = visitor.answer()
        self.assertPlainText(answer, 429,
                             "too many requests for this tunnel; retry in 101 s\n")
        self.assertEqual(answer.header(b"retry-after"), [b"101"])
        self.assertEqual(self.tunnel.sent, [])

    def test_request_after_retry_after_reaches_the_tunnel(self):
        """Shortly before Retry-After it is still 429; once Retry-After seconds have passed, the tunnel accepts requests again."""
        self.use_up_the_burst()
        retry_after = int(self.visit().answer().header(b"retry-after")[0])

        self.clock.advance(retry_after - 2)
        self.assertEqual(self.visit().answer().status, 429)
        self.clock.advance(2)
        visitor = self.visit()

        self.assertEqual(len(self.tunnel.sent), 1)
        self.answer_all()
        self.assertEqual(visitor.answer().status, 200)


class BadGatewayTests(_PublicTestCase):
    """
    502: nobody holds the tunnel, its connection is lost before it
    answers, or its answer cannot be passed on.
    """

    def test_unknown_tunnel_gets_502_at_once(self):
        """A tunnel nobody holds gets 502 naming it, without any time passing, by path and by Host."""
        by_path = self.visit(client_id=UNKNOWN, path=b"/echo")
        by_host = MemoryVisitor(self.site)
        self.visitors.append(by_host)
        by_host.request(b"GET", b"/echo", host=(UNKNOWN + "." + DOMAIN).encode("ascii"))

        for visitor in (by_path, by_host):
            self.assertPlainText(visitor.answer(), 502,
                                 "tunnel {} is not connected\n".format(UNKNOWN))
        self.assertEqual(self.tunnel.sent, [])

    def test_tunnel_of_an_instance_that_is_gone_gets_502_at_once(self):
        """A tunnel the directory gives to an instance nobody listens for gets 502 at once, and the stale entry is dropped."""
        self.successResultOf(self.directory.claim(REMOTE, "elsewhere"))

        visitor = self.visit(client_id=REMOTE)

        self.assertPlainText(visitor.answer(), 502,
                             "tunnel {} is not connected\n".format(REMOTE))
        self.assertIsNone(self.successResultOf(self.directory.lookup(REMOTE)))

    def test_lost_tunnel_connection_fails_the_waiting_request_with_502(self):
        """When the tunnel's connection is lost with a request waiting, the visitor gets 502 at once."""
        visitor = self.visit()
        self.assertEqual(len(self.hub.pending), 1)
        self.assertFalse(visitor.answered())

        self.hub.connection_lost(self.tunnel)

        self.assertPlainText(visitor.answer(), 502,
                             "the tunnel's connection was lost before it answered\n")

    def test_invalid_status_from_the_tunnel_gets_502(self):
        """A status outside 200-599 from the tunnel gets 502 saying so."""
        visitor = self.visit()

        self.tunnel.answer(self.hub, self.tunnel.sent[0], status=99)

        self.assertPlainText(visitor.answer(), 502,
                             "the tunnel client sent an invalid status (99)\n")

    def test_response_over_max_body_gets_502(self):
        """A tunnel response body over max_body gets 502 saying the limit."""
        visitor = self.visit()

        self.tunnel.answer(self.hub, self.tunnel.sent[0], body=b"x" * (MAX_BODY + 1))

        self.assertPlainText(visitor.answer(), 502,
                             "the tunnelled response is larger than the proxy's "
                             "limit of 1000 bytes\n")


class UnavailableTests(_PublicTestCase):
    """
    503: too many requests already waiting for the tunnel, the bus to
    another instance down, or the proxy shutting down.
    """

    def test_request_past_max_pending_gets_503(self):
        """With max_pending requests waiting for the tunnel, the next gets 503 naming the limit; it is never sent."""
        waiting = [self.visit(path=b"/%d" % (i,)) for i in range(MAX_PENDING)]

        refused = self.visit(path=b"/refused")

        self.assertPlainText(refused.answer(), 503,
                             "too many requests waiting for this tunnel (limit 2)\n")
        self.assertEqual([r.url for r in self.forwarded()], ["/0", "/1"])
        self.answer_all()
        for visitor in waiting:
            self.assertEqual(visitor.answer().status, 200)

    def test_answered_request_makes_room_for_the_next(self):
        """Once one of max_pending waiting requests is answered, a new one is forwarded."""
        first, second = self.visit(path=b"/0"), self.visit(path=b"/1")
        self.tunnel.answer(self.hub, self.tunnel.sent[0])
        self.assertEqual(first.answer().status, 200)

        third = self.visit(path=b"/2")

        self.assertEqual([r.url for r in self.forwarded()], ["/0", "/1", "/2"])
        for raw in self.tunnel.sent[1:]:
            self.tunnel.answer(self.hub, raw)
        self.assertEqual([second.answer().status, third.answer().status], [200, 200])

    def test_remote_tunnel_with_the_directory_unreachable_gets_503(self):
        """A tunnel not held here while the directory cannot be asked gets 503 explaining the bus is unavailable."""
        self.directory.down = True

        visitor = self.visit(client_id=REMOTE)

        self.assertPlainText(visitor.answer(), 503,
                             "the tunnel cannot be reached: the bus between proxy "
                             "instances is unavailable right now\n")

    def test_remote_tunnel_with_the_bus_down_gets_503(self):
        """A tunnel held by another instance while publishing to it fails gets 503 explaining the bus is unavailable."""
        self.successResultOf(self.directory.claim(REMOTE, "elsewhere"))
        self.bus.down = True

        visitor = self.visit(client_id=REMOTE)

        self.assertPlainText(visitor.answer(), 503,
                             "the tunnel cannot be reached: the bus between proxy "
                             "instances is unavailable right now\n")

    def test_request_while_shutting_down_gets_503_and_the_connection_closes(self):
        """While the proxy shuts down, a request gets 503 with Connection: close, the connection is closed, and the tunnel is sent nothing."""
        self.public.shutting_down = True

        visitor = self.visit()

        answer = visitor.answer()
        self.assertPlainText(answer, 503, "the proxy is shutting down; retry\n")
        self.assertEqual(answer.header(b"connection"), [b"close"])
        self.assertTrue(visitor.closing)
        self.assertEqual(self.tunnel.sent, [])


class ByteBudgetTests(_PublicTestCase):
    """
    The bytes of buffered bodies held for waiting requests are capped per
    tunnel and per process (503 with Retry-After beyond), and given back
    exactly when each request finishes, however it finishes.
    """

    def setUp(self):
        _PublicTestCase.setUp(self)
        self.public.max_pending = 100
        self.public.budget = ByteBudget(per_process=500, per_tunnel=250)
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def post(self, size, path=b"/", client_id=CLIENT):
        return self.visit(b"POST", path, client_id=client_id, body=b"x" * size)

    def held(self, client_id=CLIENT):
        return self.public.budget.total, self.public.budget.by_tunnel.get(client_id, 0)

    def test_a_waiting_body_is_held_and_given_back_when_answered(self):
        """A body counts from forwarding until the answer; the answer's body too until written."""
        visitor = self.post(100)
        self.assertEqual(self.held(), (100, 100))
        self.answer_all()
        self.assertEqual(visitor.answer().status, 200)
        self.assertEqual(self.held(), (0, 0))

    def test_a_body_over_the_tunnel_budget_gets_503_with_retry_after(self):
        """Past the tunnel's budget: 503 naming the limit, Retry-After, a log line; never sent."""
        waiting = [self.post(100, b"/%d" % (i,)) for i in range(2)]
        refused = self.post(100, b"/refused")
        answer = refused.answer()
        self.assertPlainText(answer, 503, "too many request bytes waiting for this "
                             "tunnel (limit 250 bytes); retry\n")
        self.assertEqual(answer.header(b"retry-after"), [b"1"])
        self.assertEqual([r.url for r in self.forwarded()], ["/0", "/1"])
        (event,) = [e for e in self.log if "bytes refused" in e.get("log_format", "")]
        self.assertEqual((event["size"], event["held"], event["limit"]), (100, 200, 250))
        self.assertEqual(self.held(), (200, 200))
        self.answer_all()
        self.assertEqual([v.answer().status for v in waiting], [200, 200])

    def test_a_body_over_the_process_budget_gets_503(self):
        """The process budget counts every tunnel's bodies."""
        other = FakeConnection(features=CLIENT_DEFAULT)
        self.successResultOf(self.hub.attach(OTHER_CLIENT, other))
        first = [self.post(200, b"/a"), self.post(200, b"/b", client_id=OTHER_CLIENT)]
        refused = self.post(200, b"/c", client_id=OTHER_CLIENT)
        self.assertPlainText(refused.answer(), 503, "too many request bytes waiting "
                             "for this proxy (limit 500 bytes); retry\n")
        self.assertEqual(self.held(OTHER_CLIENT), (400, 200))
        self.answer_all()
        for raw in other.sent:
            other.answer(self.hub, raw)
        self.assertEqual([v.answer().status for v in first], [200, 200])

    def test_a_request_without_a_body_passes_a_full_budget(self):
        """A GET holds nothing while it waits, so a full budget does not refuse it."""
        full = [self.post(125, b"/%d" % (i,)) for i in range(2)]
        get = self.visit(path=b"/get")
        self.assertEqual(self.held(), (250, 250))
        self.answer_all()
        self.assertEqual([v.answer().status for v in full + [get]], [200, 200, 200])

    def test_the_bytes_are_given_back_on_timeout(self):
        """A 504 gives the body's bytes back."""
        visitor = self.post(100)
        self.clock.advance(TIMEOUT)
        self.assertEqual(visitor.answer().status, 504)
        self.assertEqual(self.held(), (0, 0))

    def test_the_bytes_are_given_back_when_the_visitor_leaves(self):
        """A visitor hanging up gives the body's bytes back at once."""
        visitor = self.post(100)
        visitor.close()
        self.assertEqual(self.held(), (0, 0))
        self.assertFalse(self.tunnel.answer(self.hub, self.tunnel.sent[0]))
        self.assertEqual(self.held(), (0, 0))

    def test_the_bytes_are_given_back_when_the_tunnel_fails(self):
        """A lost tunnel connection (502) gives the body's bytes back."""
        visitor = self.post(100)
        self.hub.connection_lost(self.tunnel)
        self.assertEqual(visitor.answer().status, 502)
        self.assertEqual(self.held(), (0, 0))

    def test_an_oversized_answer_gives_everything_back(self):
        """An answer over max_body (502) is counted, then given back with the request."""
        visitor = self.post(100)
        self.tunnel.answer(self.hub, self.tunnel.sent[0], body=b"x" * (MAX_BODY + 1))
        self.assertEqual(visitor.answer().status, 502)
        self.assertEqual(self.held(), (0, 0))


class ReservationTests(SynchronousTestCase):
    """
    L{ByteBudget} on its own.
    """

    def test_a_reservation_is_given_back_exactly_once(self):
        """Releasing twice, or growing after the release, changes nothing."""
        budget = ByteBudget(100, 50)
        reservation, refused = budget.reserve(CLIENT, 30)
        self.assertIsNone(refused)
        reservation.grow(10)
        self.assertEqual((budget.total, budget.by_tunnel), (40, {CLIENT: 40}))
        reservation.release()
        reservation.release()
        reservation.grow(10)
        self.assertEqual((budget.total, budget.by_tunnel), (0, {}))

    def test_zero_means_no_limit(self):
        """A budget of 0 never refuses."""
        budget = ByteBudget(0, 0)
        reservation, refused = budget.reserve(CLIENT, 10 ** 12)
        self.assertIsNone(refused)
        reservation.release()
        self.assertEqual(budget.total, 0)


class ByteBudgetOptionTests(SynchronousTestCase):
    """
    C{--max-pending-bytes} and C{--max-tunnel-pending-bytes}.
    """

    def test_the_options_reach_the_budget(self):
        """Both values end up in the public side's budget; the defaults are 256 and 32 MiB."""
        config = tap.Options()
        config.parseOptions([])
        budget = tap.makeService(config).public.budget
        self.assertEqual((budget.per_process, budget.per_tunnel),
                         (256 * 1024 * 1024, 32 * 1024 * 1024))
        config = tap.Options()
        config.parseOptions(["--max-pending-bytes", "1000000",
                             "--max-tunnel-pending-bytes", "0"])
        budget = tap.makeService(config).public.budget
        self.assertEqual((budget.per_process, budget.per_tunnel), (1000000, 0))

    def test_a_budget_below_max_body_is_refused(self):
        """A budget no request of --max-body bytes could pass is a usage error."""
        for option in ["--max-pending-bytes", "--max-tunnel-pending-bytes"]:
            with self.assertRaises(UsageError) as caught:
                tap.Options().parseOptions([option, "1000", "--max-body", "2000"])
            self.assertIn("must be at least --max-body", str(caught.exception))
        with self.assertRaises(UsageError):
            tap.Options().parseOptions(["--max-pending-bytes", "-1"])


class GatewayTimeoutTests(_PublicTestCase):
    """
    504: the tunnel does not answer within C{request_timeout}.
    """

    def test_unanswered_request_gets_504_after_request_timeout(self):
        """Nothing is answered before request_timeout; at request_timeout the visitor gets 504 saying how long it waited."""
        visitor = self.visit(path=b"/slow")

        self.clock.advance(TIMEOUT - 0.001)
        self.assertFalse(visitor.answered())
        self.assertEqual(len(self.hub.pending), 1)
        self.clock.advance(0.001)

        self.assertPlainText(visitor.answer(), 504,
                             "the tunnel did not answer within 30 seconds\n")

    def test_answer_after_the_504_is_ignored(self):
        """A tunnel answering after the 504 is not wanted any more; the visitor gets nothing more."""
        visitor = self.visit(path=b"/slow")
        self.clock.advance(TIMEOUT)
        self.assertEqual(visitor.answer().status, 504)

        self.assertFalse(self.tunnel.answer(self.hub, self.tunnel.sent[0]))

        self.assertFalse(visitor.answered())


class WebSocketUpgradeTests(_PublicTestCase):
    """
    A websocket upgrade on a tunnel route is handed to the visitor
    websocket, whose refusals are plain-text answers too.
    """

    def test_unanswered_upgrade_gets_504_after_request_timeout(self):
        """No ws-response before request_timeout: nothing before, then 504 saying how long it waited, the connection closed, and the tunnel told to give up the websocket."""
        visitor = self.visit(path=b"/chat", headers=UPGRADE)
        [request] = self.forwarded()
        self.assertIsInstance(request, WSRequest)

        self.clock.advance(TIMEOUT - 0.001)
        self.assertFalse(visitor.answered())
        self.clock.advance(0.001)

        self.assertPlainText(visitor.answer(), 504,
                             "the tunnel did not answer within 30 seconds\n")
        self.assertTrue(visitor.closing)
        teardown = self.forwarded()[1]
        self.assertIsInstance(teardown, WSTeardown)
        self.assertEqual(teardown.id, request.id)

    def test_upgrade_for_an_unknown_tunnel_gets_502_at_once(self):
        """A websocket for a tunnel nobody holds gets 502 naming it, without any time passing."""
        visitor = self.visit(client_id=UNKNOWN, path=b"/chat", headers=UPGRADE)

        self.assertPlainText(visitor.answer(), 502,
                             "tunnel {} is not connected\n".format(UNKNOWN))
        self.assertTrue(visitor.closing)


class VisitorGoneTests(_PublicTestCase):
    """
    A visitor that hangs up while its request waits.
    """

    def test_visitor_hanging_up_forgets_the_waiting_request(self):
        """The pending request and its timeout go with the visitor; a late answer is not wanted."""
        visitor = self.visit(path=b"/slow")
        self.assertEqual(len(self.hub.pending), 1)

        visitor.close()

        self.assertEqual(len(self.hub.pending), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.tunnel.answer(self.hub, self.tunnel.sent[0]))


class IdleConnectionTests(_PublicTestCase):
    """
    C{idle_timeout}: a visitor connection with nothing to do is closed.
    """

    def test_idle_keep_alive_connection_is_closed_after_idle_timeout(self):
        """A kept-alive connection stays open for idle_timeout seconds after its answer, and is closed then."""
        visitor = MemoryVisitor(self.site)
        self.visitors.append(visitor)
        self.clock.advance(IDLE_TIMEOUT - 1)  # the request resets the timer
        visitor.request(b"GET", b"/")
        self.assertEqual(visitor.answer().status, 200)

        self.clock.advance(IDLE_TIMEOUT - 0.001)
        self.assertFalse(visitor.closing)
        self.clock.advance(0.001)

        self.assertTrue(visitor.closing)

    def test_connection_waiting_for_the_tunnel_is_not_idle(self):
        """A request waiting for its tunnel longer than idle_timeout still gets its answer."""
        site = build_site(
            DOMAIN, self.hub, TokenBucketLimiter(self.clock, BURST, PERIOD),
            Resource(), max_body=MAX_BODY, request_timeout=TIMEOUT,
            reactor=self.clock, idle_timeout=TIMEOUT / 3)
        visitor = MemoryVisitor(site)
        self.visitors.append(visitor)
        visitor.request(b"GET", b"/proxy/request/" + CLIENT.encode("ascii") + b"/slow")

        self.clock.advance(TIMEOUT / 2)
        self.assertFalse(visitor.closing)
        self.answer_all()

        self.assertEqual(visitor.answer().body, b"ok")

    def test_silent_connection_is_closed_after_idle_timeout(self):
        """A connection that never sends a request is closed after idle_timeout seconds."""
        visitor = MemoryVisitor(self.site)
        self.visitors.append(visitor)

        self.clock.advance(IDLE_TIMEOUT - 0.001)
        self.assertFalse(visitor.closing)
        self.clock.advance(0.001)

        self.assertTrue(visitor.closing)
        self.assertFalse(visitor.answered())
