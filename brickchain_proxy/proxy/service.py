"""
The running proxy: composes the hub, the tunnel websocket factory, the
public site and the listening endpoints into one service, and runs its
lifecycle: start (bus, listening), SIGHUP (reload the TLS certificates of
the C{ssl:} listeners and the authorized keys), graceful stop (stop accepting, let in-flight requests finish up to a
deadline, send tunnel clients away with 1001, then exit).
"""

import signal

from twisted.application import internet, service
from twisted.internet import defer
from twisted.logger import Logger

from ..bus import open_backend
from ..listener import Listener
from ..mandate_tokens import DEFAULT_MAX_TTL, TokenVerifier
from ..metrics import NO_PROXY_METRICS, ProxyMetrics, metrics_listener
from ..ratelimit import TokenBucketLimiter
from ..wsutil import WebSocketEndpointResource
from .authorized import AuthorizedKeys
from .budget import ByteBudget
from .certificates import server_endpoint
from .hub import TunnelHub
from .public import DEFAULT_MAX_PENDING_BYTES, DEFAULT_MAX_TUNNEL_PENDING_BYTES
from .site import build_site
from .tunnel_factory import TunnelServerFactory
from .visitor_ws import VisitorFactory


#: Seconds between two frames of one visitor websocket sent to a v1 (Go)
#: client, which would otherwise reorder frames that reach it back to back
#: (L{brickchain_proxy.proxy.pacing}).  Measured against the Go client:
#: 0.010 still let 1-4 of 1,000 frames through out of order, 0.015 none in
#: ten runs of 1,000.
V1_WS_PACING = 0.015


def max_message_size(max_body):
    """
    Largest websocket message accepted from a tunnel client: a body of
    C{max_body} bytes in base64, plus room for headers.  Bigger bodies still
    get a clean 502; only absurd messages fail the connection (1009).
    """
    return (max_body * 4) // 3 + 1024 * 1024


class ProxyService(service.MultiService):
    """
    One proxy instance.

    Nothing touches the network before L{startService}.

    @param metrics: a server endpoint string to serve Prometheus metrics on
        (C{GET /metrics}), or L{None} for none.

    @ivar public: the L{PublicTunnel} answering tunnelled requests.
    @ivar metrics: the L{IProxyMetrics} (L{NO_PROXY_METRICS} without a
        C{metrics} endpoint).
    @ivar metrics_listener: the L{Listener} serving them, or L{None}.
    """

    _log = Logger()

    def __init__(self, reactor, listen, domain, base, bus_url="memory",
                 request_timeout=30.0, max_body=512000, rate_limit=(500, 300.0),
                 ping_interval=10.0, registration_timeout=10.0,
                 ws_ping_interval=30.0, max_pending=1000, max_websockets=1000,
                 max_headers=100, max_header_bytes=16384, idle_timeout=75.0,
                 max_message=None, authorized_keys=None, shutdown_grace=10.0,
                 access_log=False, handle_signals=False, trust_forwarded=False,
                 extra_bases=(), v1_ws_pacing=V1_WS_PACING, max_stream_body=0,
                 stream_idle_timeout=300.0, metrics=None, bus_ca_cert=None,
                 max_pending_bytes=DEFAULT_MAX_PENDING_BYTES,
                 max_tunnel_pending_bytes=DEFAULT_MAX_TUNNEL_PENDING_BYTES,
                 max_token_lifetime=DEFAULT_MAX_TTL, max_registrations=5):
        service.MultiService.__init__(self)
        self._reactor = reactor
        self.metrics = NO_PROXY_METRICS if metrics is None else ProxyMetrics()
        self.backend = open_backend(bus_url, reactor, ca_cert=bus_ca_cert)
        self.hub = TunnelHub(
            reactor, self.metrics.wrap_bus(self.backend.bus),
            self.backend.directory, request_timeout=request_timeout,
            stream_idle_timeout=stream_idle_timeout,
        )
        self.local_limiter = TokenBucketLimiter(reactor, *rate_limit)
        self.limiter = self.backend.rate_limiter(self.local_limiter)
        # After a Redis restart, claim our tunnels again at once.
        self.backend.on_reconnect(self.hub.renew_all)
        self.backend.on_reconnect(self.hub.relayed_streams.pay_resets)
        #: remembers the mandate tokens used, on every instance of the bus
        self.replay_guard = self.backend.replay_guard()
        self._max_token_lifetime = max_token_lifetime
        # Frames to this instance may be lost with its subscriber connection.
        self.backend.on_interrupted(self.hub.bus_interrupted)
        self.authorized_keys = (
            AuthorizedKeys(authorized_keys) if authorized_keys else None
        )
        self.tunnel_factory = TunnelServerFactory(
            self.hub,
            TokenVerifier(base, extra_bases=extra_bases,
                          max_ttl=max_token_lifetime),
            domain,
            reactor,
            ping_interval=ping_interval,
            registration_timeout=registration_timeout,
            max_message_size=max_message or max_message_size(max_body),
            authorizer=self.authorized_keys,
            url=_ws_url(base),
            v1_ws_pacing=v1_ws_pacing,
            metrics=self.metrics,
            replay_guard=self.replay_guard,
            max_registrations=max_registrations,
        )
        self.visitor_factory = VisitorFactory(
            self.hub, reactor, max_message_size=max_body,
            ping_interval=ws_ping_interval,
        )
        self.site = build_site(
            domain, self.hub, self.limiter,
            WebSocketEndpointResource(self.tunnel_factory),
            max_body, request_timeout, reactor=reactor,
            visitor_factory=self.visitor_factory,
            max_pending=max_pending, max_websockets=max_websockets,
            max_headers=max_headers, max_header_bytes=max_header_bytes,
            idle_timeout=idle_timeout, access_log=access_log,
            trust_forwarded=trust_forwarded, max_stream_body=max_stream_body,
            stream_idle_timeout=stream_idle_timeout, metrics=self.metrics,
            budget=ByteBudget(max_pending_bytes, max_tunnel_pending_bytes),
        )
        self.public = self.site.tunnel
        self.metrics.read_state(
            tunnels=lambda: len(self.hub.local),
            websockets=lambda: len(self.hub.streams),
            requests_in_flight=self.public.in_flight_total,
        )
        self.ports = []
        #: the L{ReloadableServerTLS} of each C{ssl:} listener
        self.certificates = []
        for description in listen:
            endpoint, tls = server_endpoint(reactor, description)
            if tls is not None:
                self.certificates.append(tls)
            server = Listener(endpoint, self.site, description)
            server.setServiceParent(self)
            self.ports.append(server)
        # It keeps serving through a graceful stop, until the very end.
        self.metrics_listener = metrics_listener(reactor, metrics, self.metrics)
        if self.metrics_listener is not None:
            self.metrics_listener.setServiceParent(self)
        ttl = self.backend.directory.ttl
        housekeeping = internet.TimerService(
            min(60.0, ttl / 3.0) if ttl else 60.0, self._housekeeping
        )
        housekeeping.clock = reactor
        housekeeping.setServiceParent(self)
        self._extra_bases = tuple(extra_bases)
        self.shutdown_grace = shutdown_grace
        self._handle_signals = handle_signals
        self._previous_sighup = None
        self._bus_url = bus_url
        self._domain = domain
        self._base = base

    def startService(self):
        if self.authorized_keys is not None:
            self.authorized_keys.load()  # errors stop the start, loudly
        else:
            self._log.warn(
                "no --authorized-keys: any client with a valid mandate token "
                "may register (open proxy, as the original)"
            )
        if self._handle_signals:
            previous = signal.signal(signal.SIGHUP, self._sighup)
            self._previous_sighup = signal.SIG_DFL if previous is None else previous
        d = defer.maybeDeferred(self.backend.start)
        d.addCallback(lambda _: self.hub.start())
        d.addErrback(self._bus_failed)
        service.MultiService.startService(self)
        if self._domain:
            self._log.info(
                "brickproxy listening; base {base}, tunnels at <clientID>.{domain}",
                base=self._base, domain=self._domain,
            )
        else:
            self._log.warn(
                "brickproxy listening; base {base}, no --domain: tunnels are "
                "reachable only at {base}/proxy/request/<clientID>/, and Go "
                "clients, which need a hostname, treat their registration as "
                "failed", base=self._base.rstrip("/"),
            )
        return d

    def _bus_failed(self, failure):
        """
        Without its bus subscription this instance would accept tunnels
        nobody else can reach and wait for answers that never arrive:
        stop, saying why.
        """
        self._log.failure(
            "the bus ({bus}) could not start: stopping the proxy", failure,
            bus=self._bus_url)
        if self._handle_signals:
            # Under twistd: end the process (systemd restarts it).
            self._reactor.callWhenRunning(self._reactor.stop)
        return failure

    def _sighup(self, signum, frame):
        self._reactor.callFromThread(self.reload)

    def reload(self):
        """
        Re-read the TLS certificates of the C{ssl:} listeners (new
        connections get the new one; open ones keep theirs) and the
        authorized keys (closing tunnels no longer allowed).  What does not
        load is logged and the previous version stays.
        """
        for tls in self.certificates:
            tls.reload()
        if self.authorized_keys is None:
            if not self.certificates:
                self._log.info("SIGHUP: nothing to reload (no --authorized-keys, "
                               "no ssl: listener)")
            return
        try:
            self.authorized_keys.load()
        except (OSError, ValueError) as e:
            self._log.error(
                "cannot reload {path}, keeping the previous entries: {error}",
                path=self.authorized_keys.path, error=str(e))
            return
        self.tunnel_factory.reauthorize()

    @defer.inlineCallbacks
    def stopService(self):
        """
        Stop gracefully: stop accepting; let in-flight requests finish for
        up to C{shutdown_grace} seconds (new requests on open connections get
        503); close tunnel connections with 1001 so clients reconnect
        elsewhere; then release the bus.
        """
        self.public.shutting_down = True
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        yield defer.gatherResults(
            [defer.maybeDeferred(port.stopService) for port in self.ports],
            consumeErrors=True,
        )
        if self.public.in_flight_total():
            self._log.info("waiting up to {grace} s for {count} requests",
                           grace=self.shutdown_grace,
                           count=self.public.in_flight_total())
        yield self._wait(self.public.when_idle(), self.shutdown_grace)
        for connection in list(self.tunnel_factory.connections):
            connection.go_away()
        for stream in list(self.hub.streams.values()):
            stream.visitor.tunnel_lost("proxy shutting down")
        # Give clients a moment to complete the closing handshake.
        yield self._wait(self.tunnel_factory.when_all_closed(), 1.0)
        # Kept-alive visitor connections would otherwise stay open (until
        # their idle timeout) on a proxy that no longer answers.
        self.site.close_idle_connections()
        yield service.MultiService.stopService(self)
        yield self.hub.stop()
        yield self.backend.stop()

    def _wait(self, d, seconds):
        """
        Wait for C{d}, but no longer than C{seconds}.
        """
        d.addTimeout(seconds, self._reactor)
        d.addErrback(lambda f: f.trap(defer.TimeoutError))
        return d

    def set_base(self, base):
        """
        Change the main base URL mandate tokens must name (e.g. once the
        port it listens on is known); the other bases stay accepted.
        """
        self._base = base
        self.tunnel_factory.verifier = TokenVerifier(
            base, extra_bases=self._extra_bases, max_ttl=self._max_token_lifetime)

    def when_listening(self):
        """
        @return: a L{Deferred} firing with the list of listening ports
            (L{IListeningPort}) once every C{--listen} endpoint is bound.
        """
        return defer.gatherResults(
            [server.when_listening() for server in self.ports]
        )

    def _housekeeping(self):
        self.limiter.prune()
        self.replay_guard.prune()
        self.hub.renew_all()
        self.hub.probe_remote()


def _ws_url(base):
    if base.startswith("https://"):
        return "wss://" + base[len("https://"):]
    if base.startswith("http://"):
        return "ws://" + base[len("http://"):]
    return base
