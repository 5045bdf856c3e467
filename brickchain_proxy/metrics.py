"""
Prometheus metrics (C{--metrics ENDPOINT}) for the proxy and the client.

Each service owns a L{CollectorRegistry} -- never the process-wide default:
tests run many services in one process -- and serves it at C{GET /metrics}
on an endpoint of its own (L{metrics_site}), never on the public listener.

The code being measured talks to a recorder: L{ProxyMetrics} or
L{ClientMetrics} count into the registry; L{NO_PROXY_METRICS} and
L{NO_CLIENT_METRICS}, the defaults without C{--metrics}, do nothing, and
their C{enabled} is false, so callers skip even reading the clock.  Gauges
that mirror state the services already keep (tunnels, websockets, requests
in flight) are read from their tables at scrape time: nothing to keep in
sync.

Label values are bounded: an HTTP status (three digits) or C{aborted};
C{accepted}/C{refused} and a refusal reason from L{REFUSAL_REASONS}.  Text
a visitor or a client chose never becomes a label.
"""

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from twisted.web import pages, server
from twisted.web.resource import Resource
from zope.interface import Attribute, Interface, implementer

from . import mandate_tokens
from .bus.interface import IBus
from .proxy.authorized import NOT_AUTHORIZED

#: The C{code} label of a request whose connection ended before its answer
#: was complete (the visitor left, or a streamed answer was cut off).
ABORTED = "aborted"

#: Request durations in seconds: the default buckets, and the longer waits
#: a tunnel allows (the request timeout is 30 s by default).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)

#: How a refused registration's reason text (as the proxy sends it) maps to
#: the C{reason} label: the first prefix that matches wins.
REFUSAL_REASONS = (
    (mandate_tokens.EXPIRED, "expired"),
    (mandate_tokens.FUTURE, "future"),
    (mandate_tokens.WRONG_ENDPOINT, "wrong_endpoint"),
    (mandate_tokens.NO_JWK, "no_jwk"),
    (mandate_tokens.VERIFY_FAILED, "verify_failed"),
    (mandate_tokens.MALFORMED, "malformed_token"),
    (mandate_tokens.UNSUPPORTED_ALG, "unsupported_alg"),
    (mandate_tokens.TOO_LONG, "too_long"),
    (NOT_AUTHORIZED, "not_authorized"),
    # The proxy's own refusals of a connection (proxy/tunnel.py).
    ("no registration received in time", "timeout"),
    ("malformed message", "malformed_message"),
    ("token already used", "replayed"),
    ("cannot check the token for replay", "replay_check_unavailable"),
    ("token made before this proxy started", "before_start"),
    ("too many registration attempts", "too_many_registrations"),
)
#: The reason label of a refusal no prefix matches.
OTHER = "other"
#: Every reason label, in a fixed order (the exposition's).
REASON_LABELS = tuple(label for _, label in REFUSAL_REASONS) + (OTHER,)


def refusal_reason(text):
    """
    The C{reason} label for a refused registration whose reason, as the
    proxy words it, is C{text}: one of L{REFUSAL_REASONS}' labels, or
    L{OTHER}.
    """
    for prefix, label in REFUSAL_REASONS:
        if text.startswith(prefix):
            return label
    return OTHER


class IProxyMetrics(Interface):
    """
    What the proxy records.
    """

    enabled = Attribute(
        "False when nothing is recorded: callers may skip measuring.")

    def http_request_finished(code, seconds, received, sent):
        """
        A tunnelled HTTP request ended: answered with status C{code} (an
        L{int}), or L{ABORTED}; C{seconds} after its head came in, with
        C{received} body bytes from the visitor and C{sent} to it.
        """

    def registration_accepted():
        """
        A tunnel registration was accepted.
        """

    def registration_refused(reason):
        """
        A tunnel connection was refused; C{reason} is the text sent to the
        client (classified with L{refusal_reason}).
        """

    def bus_publish_failed():
        """
        Publishing on the bus failed.
        """

    def wrap_bus(bus):
        """
        @return: an L{IBus} for the hub to use: C{bus}, or C{bus} with its
            publish failures counted.
        """

    def read_state(tunnels, websockets, requests_in_flight):
        """
        Read the gauges at scrape time from these callables (each returns a
        number).
        """


class IClientMetrics(Interface):
    """
    What the client records.
    """

    enabled = Attribute(
        "False when nothing is recorded: callers may skip measuring.")

    def local_request_finished(code, seconds, received, sent):
        """
        A tunnelled request ended: answered with status C{code} (an L{int}:
        the local service's, or the client's own 502/504), or L{ABORTED};
        C{seconds} after it arrived, with C{received} body bytes from the
        tunnel and C{sent} back through it.
        """

    def registration_accepted():
        """
        The proxy accepted the registration.
        """

    def registration_refused(reason):
        """
        The proxy refused the registration with the text C{reason}.
        """

    def reconnecting():
        """
        The connection to the proxy failed or closed: a reconnect is
        scheduled.
        """

    def read_state(connected, websockets):
        """
        Read the gauges at scrape time from these callables.
        """


def _counter(name, documentation, registry, labels=()):
    return Counter(name, documentation, labels, registry=registry)


class _ByCode:
    """
    A counter's children by status code, made once each (C{labels()} takes
    a lock and formats the value on every call).
    """

    def __init__(self, counter):
        self._counter = counter
        self._children = {}

    def inc(self, code):
        child = self._children.get(code)
        if child is None:
            child = self._children[code] = self._counter.labels(code=str(code))
        child.inc()


class _Registrations:
    """
    A C{registrations_total{result, reason}} counter, every series present
    from the start (at 0).
    """

    def __init__(self, counter):
        self._accepted = counter.labels(result="accepted", reason="")
        self._refused = {reason: counter.labels(result="refused", reason=reason)
                         for reason in REASON_LABELS}

    def accepted(self):
        self._accepted.inc()

    def refused(self, text):
        self._refused[refusal_reason(text)].inc()


@implementer(IProxyMetrics)
class ProxyMetrics:
    """
    The proxy's metrics, in C{registry}.
    """

    enabled = True

    def __init__(self, registry=None):
        self.registry = registry = (
            registry if registry is not None else CollectorRegistry())
        self._tunnels = Gauge(
            "brickproxy_tunnels", "Tunnels held by this instance.",
            registry=registry)
        self._websockets = Gauge(
            "brickproxy_websockets",
            "Visitor websockets open (or opening) on this instance.",
            registry=registry)
        self._in_flight = Gauge(
            "brickproxy_http_requests_in_flight",
            "Tunnelled HTTP requests being answered on this instance.",
            registry=registry)
        self._requests = _ByCode(_counter(
            "brickproxy_http_requests_total",
            "Tunnelled HTTP requests answered, by status (aborted: the "
            "connection ended before the answer was complete).",
            registry, ["code"]))
        self._duration = Histogram(
            "brickproxy_http_request_duration_seconds",
            "Seconds from a tunnelled request's head to the end of its answer.",
            buckets=DURATION_BUCKETS, registry=registry)
        self._received = _counter(
            "brickproxy_http_request_bytes_total",
            "Body bytes of tunnelled requests, received from visitors.",
            registry)
        self._sent = _counter(
            "brickproxy_http_response_bytes_total",
            "Body bytes of tunnelled answers, sent to visitors.", registry)
        self._registrations = _Registrations(_counter(
            "brickproxy_registrations_total",
            "Tunnel registrations, accepted or refused (with the reason).",
            registry, ["result", "reason"]))
        self._bus_failures = _counter(
            "brickproxy_bus_publish_failures_total",
            "Messages the bus could not publish (to other instances).",
            registry)

    def http_request_finished(self, code, seconds, received, sent):
        self._requests.inc(code)
        self._duration.observe(seconds)
        if received:
            self._received.inc(received)
        if sent:
            self._sent.inc(sent)

    def registration_accepted(self):
        self._registrations.accepted()

    def registration_refused(self, reason):
        self._registrations.refused(reason)

    def bus_publish_failed(self):
        self._bus_failures.inc()

    def wrap_bus(self, bus):
        return MeteredBus(bus, self.bus_publish_failed)

    def read_state(self, tunnels, websockets, requests_in_flight):
        self._tunnels.set_function(tunnels)
        self._websockets.set_function(websockets)
        self._in_flight.set_function(requests_in_flight)


@implementer(IClientMetrics)
class ClientMetrics:
    """
    The client's metrics, in C{registry}.
    """

    enabled = True

    def __init__(self, registry=None):
        self.registry = registry = (
            registry if registry is not None else CollectorRegistry())
        self._connected = Gauge(
            "brickclient_connected",
            "1 while the tunnel is registered with the proxy, else 0.",
            registry=registry)
        self._websockets = Gauge(
            "brickclient_websockets", "Local websockets open.",
            registry=registry)
        self._registrations = _Registrations(_counter(
            "brickclient_registrations_total",
            "Registrations with the proxy, accepted or refused (with the "
            "reason).", registry, ["result", "reason"]))
        self._reconnects = _counter(
            "brickclient_reconnects_total",
            "Reconnects to the proxy scheduled (after a failed attempt or a "
            "closed connection).", registry)
        self._requests = _ByCode(_counter(
            "brickclient_local_requests_total",
            "Requests to the local service, by the status sent back (aborted: "
            "given up before an answer).", registry, ["code"]))
        self._duration = Histogram(
            "brickclient_local_request_duration_seconds",
            "Seconds from a tunnelled request's arrival to the end of its "
            "answer.",
            buckets=DURATION_BUCKETS, registry=registry)
        self._received = _counter(
            "brickclient_request_bytes_total",
            "Body bytes of tunnelled requests, received from the proxy.",
            registry)
        self._sent = _counter(
            "brickclient_response_bytes_total",
            "Body bytes of answers, sent back to the proxy.", registry)

    def local_request_finished(self, code, seconds, received, sent):
        self._requests.inc(code)
        self._duration.observe(seconds)
        if sent:
            self._sent.inc(sent)
        if received:
            self._received.inc(received)

    def registration_accepted(self):
        self._registrations.accepted()

    def registration_refused(self, reason):
        self._registrations.refused(reason)

    def reconnecting(self):
        self._reconnects.inc()

    def read_state(self, connected, websockets):
        self._connected.set_function(connected)
        self._websockets.set_function(websockets)


@implementer(IProxyMetrics)
class _NoProxyMetrics:
    """
    Records nothing (no C{--metrics}).
    """

    enabled = False

    def http_request_finished(self, code, seconds, received, sent):
        pass

    def registration_accepted(self):
        pass

    def registration_refused(self, reason):
        pass

    def bus_publish_failed(self):
        pass

    def wrap_bus(self, bus):
        return bus

    def read_state(self, tunnels, websockets, requests_in_flight):
        pass


@implementer(IClientMetrics)
class _NoClientMetrics:
    """
    Records nothing (no C{--metrics}).
    """

    enabled = False

    def local_request_finished(self, code, seconds, received, sent):
        pass

    def registration_accepted(self):
        pass

    def registration_refused(self, reason):
        pass

    def reconnecting(self):
        pass

    def read_state(self, connected, websockets):
        pass


NO_PROXY_METRICS = _NoProxyMetrics()
NO_CLIENT_METRICS = _NoClientMetrics()


@implementer(IBus)
class MeteredBus:
    """
    An L{IBus} that calls C{on_failure()} for every publish that fails, and
    otherwise is C{bus}.
    """

    def __init__(self, bus, on_failure):
        self._bus = bus
        self._on_failure = on_failure

    def publish(self, channel, payload):
        d = self._bus.publish(channel, payload)
        d.addErrback(self._failed)
        return d

    def _failed(self, failure):
        self._on_failure()
        return failure

    def subscribe(self, channel, handler):
        return self._bus.subscribe(channel, handler)

    def unsubscribe(self, channel, handler):
        return self._bus.unsubscribe(channel, handler)


class MetricsResource(Resource):
    """
    C{GET /metrics}: the registry in Prometheus' text exposition format.
    """

    isLeaf = True

    def __init__(self, registry):
        Resource.__init__(self)
        self._registry = registry

    def render_GET(self, request):
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


class _Root(Resource):
    """
    Only C{/metrics} is here.
    """

    def getChild(self, name, request):
        return pages.notFound("Not found", "Metrics are at /metrics.")

    def render(self, request):
        return self.getChild(b"", request).render(request)


class _QuietSite(server.Site):
    """
    A site that does not log every scrape (nor its own start and stop).
    """

    noisy = False

    def log(self, request):
        pass


def metrics_site(registry):
    """
    The web site that serves C{registry} at C{/metrics}.
    """
    root = _Root()
    root.putChild(b"metrics", MetricsResource(registry))
    return _QuietSite(root)


def metrics_listener(reactor, description, metrics):
    """
    The L{Listener} serving the registry of C{metrics} at C{GET /metrics}
    on the server endpoint C{description} (its own endpoint, never a
    public one), or L{None} when there is no C{description}.
    """
    if description is None:
        return None
    from twisted.internet import endpoints

    from .listener import Listener

    return Listener(endpoints.serverFromString(reactor, description),
                    metrics_site(metrics.registry), description)
