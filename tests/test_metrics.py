"""
Tests for L{brickchain_proxy.metrics}: the recorders keep their interfaces,
the counters move where the events happen -- tunnelled requests on the
proxy's real site (fake transports, one L{Clock}), registrations on the
real tunnel protocol (in memory), bus publishes, the client's forwarder --
the gauges read the services' tables, labels stay bounded, the exposition
is served at C{/metrics}, and C{--metrics} parses for both daemons.
"""

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer
from zope.interface.verify import verifyObject

from brickchain_proxy import mandate_tokens
from brickchain_proxy.bus import BusUnavailable, MemoryBus, MemoryDirectory
from brickchain_proxy.bus.interface import IBus
from brickchain_proxy.client import tap as client_tap
from brickchain_proxy.client.forward import LocalForwarder
from brickchain_proxy.features import CLIENT_DEFAULT
from brickchain_proxy.messages import HttpRequest
from brickchain_proxy.metrics import (
    ABORTED,
    NO_CLIENT_METRICS,
    NO_PROXY_METRICS,
    OTHER,
    REFUSAL_REASONS,
    ClientMetrics,
    IClientMetrics,
    IProxyMetrics,
    MeteredBus,
    ProxyMetrics,
    metrics_site,
    refusal_reason,
)
from brickchain_proxy.proxy import tap as proxy_tap
from brickchain_proxy.proxy.authorized import NOT_AUTHORIZED
from brickchain_proxy.proxy.hub import TunnelHub
from brickchain_proxy.proxy.site import build_site
from brickchain_proxy.ratelimit import TokenBucketLimiter
from tests.support import RecordingResource, start_local_service
from tests.support_http import MemoryVisitor
from tests.support_hub import CLIENT, FakeConnection
from tests.test_tunnel_protocol import (
    REGISTRATION_TIMEOUT,
    ProxyProtocolTestCase,
)

#: A tunnel nobody holds.
UNKNOWN = "a" * 52


def sample(metrics, name, **labels):
    """
    The value of sample C{name} with C{labels} in C{metrics}' registry
    (L{None}: no such series).
    """
    return metrics.registry.get_sample_value(name, labels)


def label_values(metrics, label):
    """
    Every value label C{label} takes in C{metrics}' registry.
    """
    return {s.labels[label] for family in metrics.registry.collect()
            for s in family.samples if label in s.labels}


class RecorderContractTests(SynchronousTestCase):
    """
    Every recorder provides its interface; the bus wrapper is a bus.
    """

    def test_proxy_recorders_provide_the_interface(self):
        """L{ProxyMetrics} and the no-op default provide L{IProxyMetrics}."""
        self.assertTrue(verifyObject(IProxyMetrics, ProxyMetrics()))
        self.assertTrue(verifyObject(IProxyMetrics, NO_PROXY_METRICS))

    def test_client_recorders_provide_the_interface(self):
        """L{ClientMetrics} and the no-op default provide L{IClientMetrics}."""
        self.assertTrue(verifyObject(IClientMetrics, ClientMetrics()))
        self.assertTrue(verifyObject(IClientMetrics, NO_CLIENT_METRICS))

    def test_no_op_recorders_say_so(self):
        """The defaults are disabled (callers skip measuring); the real ones are not."""
        self.assertFalse(NO_PROXY_METRICS.enabled)
        self.assertFalse(NO_CLIENT_METRICS.enabled)
        self.assertTrue(ProxyMetrics().enabled)
        self.assertTrue(ClientMetrics().enabled)

    def test_metered_bus_is_a_bus(self):
        """The wrapper the proxy's hub gets provides L{IBus}."""
        self.assertTrue(verifyObject(
            IBus, MeteredBus(MemoryBus(Clock()), lambda: None)))

    def test_without_metrics_the_bus_is_not_wrapped(self):
        """The no-op recorder hands the hub the bus itself."""
        bus = MemoryBus(Clock())
        self.assertIs(NO_PROXY_METRICS.wrap_bus(bus), bus)

    def test_each_service_has_its_own_registry(self):
        """Two recorders in one process count apart (no global registry)."""
        one, two = ProxyMetrics(), ProxyMetrics()
        one.http_request_finished(200, 0.1, 0, 0)
        self.assertEqual(sample(one, "brickproxy_http_requests_total", code="200"), 1)
        self.assertIsNone(sample(two, "brickproxy_http_requests_total", code="200"))


class RefusalReasonTests(SynchronousTestCase):
    """
    Refusal texts map to a fixed set of labels.
    """

    def test_every_known_reason_has_its_label(self):
        """Each of the proxy's refusal texts, with its details, maps to its own label."""
        cases = {
            mandate_tokens.EXPIRED: "expired",
            mandate_tokens.FUTURE: "future",
            mandate_tokens.WRONG_ENDPOINT + ": the token names x": "wrong_endpoint",
            mandate_tokens.NO_JWK: "no_jwk",
            mandate_tokens.VERIFY_FAILED + ": bad signature": "verify_failed",
            mandate_tokens.MALFORMED + ": no uri": "malformed_token",
            mandate_tokens.UNSUPPORTED_ALG + ": HS256": "unsupported_alg",
            NOT_AUTHORIZED: "not_authorized",
            "no registration received in time": "timeout",
            "malformed message: invalid JSON": "malformed_message",
            mandate_tokens.TOO_LONG + ": ttl 3600 s": "too_long",
            "token already used: sign a new token": "replayed",
            "cannot check the token for replay: Redis is unreachable":
                "replay_check_unavailable",
            "too many registration attempts on this connection (at most 5)":
                "too_many_registrations",
            "token made before this proxy started: sign a new token":
                "before_start",
        }
        for text, label in cases.items():
            self.assertEqual(refusal_reason(text), label, text)
        self.assertEqual(len(set(cases.values())), len(REFUSAL_REASONS))

    def test_unknown_text_is_other(self):
        """Any other text (another proxy's wording, say) is C{other}."""
        self.assertEqual(refusal_reason("go away, <script>"), OTHER)

    def test_refusal_labels_stay_bounded(self):
        """A thousand different refusal texts add no series: every reason exists from the start."""
        metrics = ProxyMetrics()
        before = label_values(metrics, "reason")
        for n in range(1000):
            metrics.registration_refused("made-up reason {}".format(n))
        self.assertEqual(label_values(metrics, "reason"), before)
        self.assertEqual(sample(metrics, "brickproxy_registrations_total",
                                result="refused", reason=OTHER), 1000)


class _MeteredSiteTestCase(SynchronousTestCase):
    """
    The proxy's public site with metrics, on a L{Clock}, with tunnel
    L{CLIENT} held here by L{tunnel}.
    """

    def setUp(self):
        self.clock = Clock()
        self.hub = TunnelHub(self.clock, MemoryBus(self.clock), MemoryDirectory(),
                             request_timeout=30.0, instance_id="here")
        self.successResultOf(self.hub.start())
        self.metrics = ProxyMetrics()
        self.site = build_site(
            "proxy.test", self.hub, TokenBucketLimiter(self.clock, 100, 100),
            Resource(), max_body=1000, request_timeout=30.0, reactor=self.clock,
            metrics=self.metrics)
        self.tunnel = FakeConnection(features=CLIENT_DEFAULT)
        self.successResultOf(self.hub.attach(CLIENT, self.tunnel))
        self.visitors = []
        self.addCleanup(self._close_visitors)

    def _close_visitors(self):
        for visitor in self.visitors:
            visitor.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def visit(self, method=b"GET", path=b"/", client_id=CLIENT, **kwargs):
        visitor = MemoryVisitor(self.site)
        self.visitors.append(visitor)
        visitor.request(method, b"/proxy/request/" + client_id.encode("ascii") + path,
                        **kwargs)
        return visitor

    def requests(self, code):
        return sample(self.metrics, "brickproxy_http_requests_total", code=str(code))


class TunnelledRequestTests(_MeteredSiteTestCase):
    """
    Each tunnelled request is counted once, when it ends, with its status,
    duration and body sizes.
    """

    def test_answered_request_is_counted_with_status_duration_and_bytes(self):
        """A 201 the tunnel gives after 2.5 s counts once under code 201, observes 2.5 s, and counts both bodies."""
        visitor = self.visit(b"POST", b"/things", body=b"twelve bytes")
        self.clock.advance(2.5)
        [raw] = self.tunnel.sent
        self.tunnel.answer(self.hub, raw, status=201, body=b"made it")

        self.assertEqual(visitor.answer().status, 201)
        self.assertEqual(self.requests(201), 1)
        self.assertEqual(sample(self.metrics,
                                "brickproxy_http_request_duration_seconds_count"), 1)
        self.assertEqual(sample(self.metrics,
                                "brickproxy_http_request_duration_seconds_sum"), 2.5)
        self.assertEqual(sample(self.metrics,
                                "brickproxy_http_request_duration_seconds_bucket",
                                le="2.5"), 1)
        self.assertEqual(sample(self.metrics,
                                "brickproxy_http_request_duration_seconds_bucket",
                                le="1.0"), 0)
        self.assertEqual(sample(self.metrics, "brickproxy_http_request_bytes_total"), 12)
        self.assertEqual(sample(self.metrics, "brickproxy_http_response_bytes_total"), 7)

    def test_refusals_are_counted_by_their_status(self):
        """The proxy's own answers count too: 502 for a tunnel nobody holds, 413 for a body over the limit."""
        self.visit(client_id=UNKNOWN)
        self.visit(b"POST", body=b"x" * 1001)

        self.assertEqual(self.requests(502), 1)
        self.assertEqual(self.requests(413), 1)
        self.assertEqual(self.tunnel.sent, [])

    def test_visitor_leaving_before_the_answer_is_counted_aborted(self):
        """A visitor that hangs up while waiting is counted once, as C{aborted}."""
        visitor = self.visit()
        self.clock.advance(1)
        visitor.close()

        self.assertEqual(self.requests(ABORTED), 1)
        self.assertEqual(sample(self.metrics,
                                "brickproxy_http_request_duration_seconds_count"), 1)
        self.assertEqual(label_values(self.metrics, "code"), {ABORTED})

    def test_proxys_own_pages_are_not_counted(self):
        """The info page and a malformed tunnel name are not tunnelled requests."""
        for target in [b"/", b"/proxy/request/not-an-id/"]:
            visitor = MemoryVisitor(self.site)
            self.visitors.append(visitor)
            visitor.request(b"GET", target)
            visitor.answer()

        self.assertEqual(sample(self.metrics,
                                "brickproxy_http_request_duration_seconds_count"), 0)

    def test_status_labels_never_carry_visitor_text(self):
        """Whatever path, query or headers a visitor sends, the only label values are status codes."""
        self.visit(b"GET", b"/<script>?q=%00", headers=[(b"X-Code", b"evil")])
        [raw] = self.tunnel.sent
        self.tunnel.answer(self.hub, raw, status=200)

        self.assertEqual(label_values(self.metrics, "code"), {"200"})

    def test_gauges_read_the_state_at_scrape_time(self):
        """brickproxy_tunnels and requests in flight are whatever the tables hold when scraped."""
        metrics = self.metrics
        metrics.read_state(tunnels=lambda: len(self.hub.local),
                           websockets=lambda: len(self.hub.streams),
                           requests_in_flight=self.site.tunnel.in_flight_total)
        self.visit()
        self.assertEqual(sample(metrics, "brickproxy_tunnels"), 1)
        self.assertEqual(sample(metrics, "brickproxy_http_requests_in_flight"), 1)
        self.assertEqual(sample(metrics, "brickproxy_websockets"), 0)

        [raw] = self.tunnel.sent
        self.tunnel.answer(self.hub, raw)
        self.hub.connection_lost(self.tunnel)

        self.assertEqual(sample(metrics, "brickproxy_tunnels"), 0)
        self.assertEqual(sample(metrics, "brickproxy_http_requests_in_flight"), 0)


@implementer(IProxyMetrics)
class _DisabledRecorder:
    """
    A disabled recorder that remembers every call it should not get.
    """

    enabled = False

    def __init__(self):
        self.calls = []

    def http_request_finished(self, code, seconds, received, sent):
        self.calls.append(code)

    def registration_accepted(self):
        self.calls.append("accepted")

    def registration_refused(self, reason):
        self.calls.append(reason)

    def bus_publish_failed(self):
        self.calls.append("bus")

    def wrap_bus(self, bus):
        return bus

    def read_state(self, tunnels, websockets, requests_in_flight):
        pass


class UnmeteredSiteTests(SynchronousTestCase):
    """
    A disabled recorder costs the request path nothing: the site does not
    time requests for it, nor call it.
    """

    def test_disabled_recorder_is_never_called_for_requests(self):
        """Tunnelled requests, answered or refused, make no call on a disabled recorder."""
        clock = Clock()
        hub = TunnelHub(clock, MemoryBus(clock), MemoryDirectory(), instance_id="here")
        recorder = _DisabledRecorder()
        self.assertTrue(verifyObject(IProxyMetrics, recorder))
        site = build_site("proxy.test", hub, TokenBucketLimiter(clock, 10, 10),
                          Resource(), max_body=1000, request_timeout=30.0,
                          reactor=clock, metrics=recorder)
        tunnel = FakeConnection(features=CLIENT_DEFAULT)
        self.successResultOf(hub.attach(CLIENT, tunnel))
        for client_id in (UNKNOWN, CLIENT):
            visitor = MemoryVisitor(site)
            self.addCleanup(visitor.close)
            visitor.request(b"GET", b"/proxy/request/" + client_id.encode("ascii") + b"/")
        [raw] = tunnel.sent
        tunnel.answer(hub, raw)

        self.assertEqual(recorder.calls, [])


class RegistrationCountTests(ProxyProtocolTestCase):
    """
    The tunnel protocol counts registrations where it accepts or refuses
    them.
    """

    def setUp(self):
        ProxyProtocolTestCase.setUp(self)
        self.metrics = self.factory.metrics = ProxyMetrics()

    def registrations(self, result, reason=""):
        return sample(self.metrics, "brickproxy_registrations_total",
                      result=result, reason=reason)

    def test_accepted_registration(self):
        """A valid registration counts once as accepted, and refuses nothing."""
        _, client = self.connect()
        self.register(client)

        self.assertEqual(self.registrations("accepted"), 1)
        self.assertEqual(
            sum(self.registrations("refused", reason)
                for reason in label_values(self.metrics, "reason") if reason), 0)

    def test_refused_token_counts_its_reason(self):
        """An expired token counts as refused, reason C{expired}."""
        _, client = self.connect()
        self.register(client, self.token(ttl=60, now=self.clock.seconds() - 70))

        self.assertEqual(self.registrations("refused", "expired"), 1)
        self.assertEqual(self.registrations("accepted"), 0)

    def test_garbage_token_is_malformed_not_a_new_label(self):
        """A token of made-up text counts as C{malformed_token}; its text is in no label."""
        _, client = self.connect()
        self.register(client, "<made-up token text>")

        self.assertEqual(self.registrations("refused", "malformed_token"), 1)
        self.assertNotIn("<made-up token text>", label_values(self.metrics, "reason"))

    def test_no_registration_in_time_counts_as_timeout(self):
        """A connection that never registers counts as refused, reason C{timeout}."""
        self.connect()
        self.net.advance(REGISTRATION_TIMEOUT)

        self.assertEqual(self.registrations("refused", "timeout"), 1)

    def test_malformed_messages_count_once(self):
        """Two bad messages before registration count one refusal (the second finds it closing)."""
        _, client = self.connect()
        client.send(b"one")
        client.send(b"two")
        self.net.flush()

        self.assertEqual(self.registrations("refused", "malformed_message"), 1)


class BusPublishFailureTests(SynchronousTestCase):
    """
    Publish failures are counted and still reach the caller.
    """

    def test_failed_publish_is_counted_and_passed_on(self):
        """A publish that fails counts once and its Deferred still fails; one that works counts nothing."""
        metrics = ProxyMetrics()

        class Bus(MemoryBus):
            down = False

            def publish(self, channel, payload):
                if self.down:
                    return fail(BusUnavailable("connection refused"))
                return MemoryBus.publish(self, channel, payload)

        clock = Clock()
        bus = Bus(clock)
        metered = metrics.wrap_bus(bus)
        self.successResultOf(metered.publish("c", b"fine"))
        bus.down = True
        self.failureResultOf(metered.publish("c", b"lost"), BusUnavailable)

        self.assertEqual(sample(metrics, "brickproxy_bus_publish_failures_total"), 1)
        clock.advance(0)


class LocalForwarderCountTests(SynchronousTestCase):
    """
    The client's forwarder counts every request it answers.
    """

    def test_request_the_http_client_refuses_is_counted_as_502(self):
        """A method Agent refuses is answered 502 at once, and counted with its bytes."""
        clock = Clock()
        metrics = ClientMetrics()
        forwarder = LocalForwarder(MemoryReactorClock(), "http://127.0.0.1:8080",
                                   clock=clock, metrics=metrics)
        response = self.successResultOf(forwarder.forward(
            HttpRequest(url="/", method="BAD METHOD", body=b"abc")))

        self.assertEqual(response.status, 502)
        self.assertEqual(sample(metrics, "brickclient_local_requests_total", code="502"), 1)
        self.assertEqual(sample(metrics, "brickclient_request_bytes_total"), 3)
        self.assertEqual(sample(metrics, "brickclient_response_bytes_total"),
                         len(response.body))

    def test_client_counters_of_the_connection(self):
        """Registrations and reconnects count; refusal reasons are classified."""
        metrics = ClientMetrics()
        metrics.registration_accepted()
        metrics.registration_refused(NOT_AUTHORIZED)
        metrics.reconnecting()
        metrics.reconnecting()

        self.assertEqual(sample(metrics, "brickclient_registrations_total",
                                result="accepted", reason=""), 1)
        self.assertEqual(sample(metrics, "brickclient_registrations_total",
                                result="refused", reason="not_authorized"), 1)
        self.assertEqual(sample(metrics, "brickclient_reconnects_total"), 2)


class _AnswersOnClock(Resource):
    """
    A local service that answers C{slow\\n} C{delay} seconds (on C{clock})
    after a request arrives; C{arrived} fires once that answer is scheduled.
    """

    isLeaf = True

    def __init__(self, clock, delay):
        Resource.__init__(self)
        self._clock = clock
        self._delay = delay
        self.arrived = defer.Deferred()

    def render(self, request):
        request.content.read()
        timer = self._clock.callLater(self._delay, self._answer, request)
        request.notifyFinish().addErrback(
            lambda _: timer.cancel() if timer.active() else None)
        self.arrived.callback(None)
        return server.NOT_DONE_YET

    def _answer(self, request):
        request.setHeader(b"Content-Length", b"5")
        request.write(b"slow\n")
        request.finish()


class LocalForwarderTimingTests(TestCase):
    """
    Against a real local service on loopback, the forwarder's clock (a
    L{Clock}) times each request.
    """

    def setUp(self):
        from twisted.internet import reactor

        self.clock = Clock()
        self.local = RecordingResource()
        self.metrics = ClientMetrics()
        self.forwarder = LocalForwarder(
            reactor, start_local_service(self, self.local), timeout=5.0,
            clock=self.clock, metrics=self.metrics)
        self.addCleanup(self.forwarder.close)

    @defer.inlineCallbacks
    def test_local_answer_is_counted_with_its_duration_and_bytes(self):
        """An answer 0.25 s later counts under its status, with that duration and both bodies."""
        from twisted.internet import reactor

        local = _AnswersOnClock(self.clock, 0.25)
        forwarder = LocalForwarder(
            reactor, start_local_service(self, local), timeout=5.0,
            clock=self.clock, metrics=self.metrics)
        self.addCleanup(forwarder.close)
        answer = forwarder.forward(
            HttpRequest(url="/slow", method="POST", body=b"upload"))
        yield local.arrived
        self.clock.advance(0.25)
        response = yield answer

        self.assertEqual(response.status, 200)
        metrics = self.metrics
        self.assertEqual(sample(metrics, "brickclient_local_requests_total", code="200"), 1)
        self.assertEqual(sample(
            metrics, "brickclient_local_request_duration_seconds_sum"), 0.25)
        self.assertEqual(sample(metrics, "brickclient_request_bytes_total"), 6)
        self.assertEqual(sample(metrics, "brickclient_response_bytes_total"),
                         len(b"slow\n"))

    @defer.inlineCallbacks
    def test_local_timeout_is_counted_as_the_504_sent_back(self):
        """A local service slower than the timeout counts as the 504 the client answers."""
        arrived = self.local.wait_for_request(b"/slow")
        answer = self.forwarder.forward(HttpRequest(url="/slow", method="GET"))
        yield arrived
        self.clock.advance(5.0)
        response = yield answer

        self.assertEqual(response.status, 504)
        self.assertEqual(sample(self.metrics, "brickclient_local_requests_total",
                                code="504"), 1)
        self.assertEqual(sample(
            self.metrics, "brickclient_local_request_duration_seconds_sum"), 5.0)


class ExpositionTests(SynchronousTestCase):
    """
    The metrics site serves the registry at /metrics, and nothing else.
    """

    def visit(self, site, target):
        visitor = MemoryVisitor(site)
        self.addCleanup(visitor.close)
        visitor.request(b"GET", target, host=b"127.0.0.1")
        return visitor

    def get(self, site, target):
        return self.visit(site, target).answer()

    def status(self, site, target):
        # Twisted's error pages are chunked, which the strict parser refuses.
        return int(self.visit(site, target).transport.value().split(b" ", 2)[1])

    def test_metrics_page_is_the_exposition(self):
        """GET /metrics answers the registry in the text format, with its content type."""
        metrics = ProxyMetrics(CollectorRegistry())
        metrics.http_request_finished(200, 0.01, 5, 6)
        answer = self.get(metrics_site(metrics.registry), b"/metrics")

        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header(b"content-type"),
                         [CONTENT_TYPE_LATEST.encode("ascii")])
        families = {f.name: f for f in
                    text_string_to_metric_families(answer.body.decode("utf-8"))}
        [requests] = [s for s in families["brickproxy_http_requests"].samples
                      if s.name == "brickproxy_http_requests_total"]
        self.assertEqual((requests.labels, requests.value), ({"code": "200"}, 1.0))

    def test_other_paths_are_not_found(self):
        """Anything outside /metrics is a 404."""
        site = metrics_site(ProxyMetrics().registry)
        self.assertEqual(self.status(site, b"/"), 404)
        self.assertEqual(self.status(site, b"/other"), 404)


class OptionsTests(SynchronousTestCase):
    """
    C{--metrics ENDPOINT} for both daemons.
    """

    ENDPOINT = "tcp:9464:interface=127.0.0.1"

    def test_proxy_metrics_option(self):
        """brickproxy takes --metrics (default: none) and its service gets a metrics listener."""
        config = proxy_tap.Options()
        config.parseOptions([])
        self.assertIsNone(config["metrics"])
        self.assertIsNone(proxy_tap.makeService(
            config, reactor=MemoryReactorClock()).metrics_listener)

        config = proxy_tap.Options()
        config.parseOptions(["--metrics", self.ENDPOINT])
        self.assertEqual(config["metrics"], self.ENDPOINT)
        proxy = proxy_tap.makeService(config, reactor=MemoryReactorClock())
        self.assertEqual(proxy.metrics_listener.description, self.ENDPOINT)
        self.assertIsInstance(proxy.metrics, ProxyMetrics)

    def test_client_metrics_option(self):
        """brickclient takes --metrics (default: none) and its service gets a metrics listener."""
        config = client_tap.Options()
        config.parseOptions([])
        self.assertIsNone(config["metrics"])
        self.assertIs(client_tap.makeService(
            config, reactor=MemoryReactorClock()).metrics, NO_CLIENT_METRICS)

        config = client_tap.Options()
        config.parseOptions(["--metrics", self.ENDPOINT])
        client = client_tap.makeService(config, reactor=MemoryReactorClock())
        self.assertEqual(client.metrics_listener.description, self.ENDPOINT)
        self.assertIsInstance(client.metrics, ClientMetrics)
        self.assertIs(client.forwarder.metrics, client.metrics)

    def test_bad_metrics_endpoint_is_a_usage_error(self):
        """An endpoint string that does not parse is refused, naming the option."""
        for options in (proxy_tap.Options(), client_tap.Options()):
            e = self.assertRaises(usage.UsageError, options.parseOptions,
                                  ["--metrics", "nonsense:1"])
            self.assertIn("--metrics", str(e))
