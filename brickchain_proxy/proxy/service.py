"""
The running proxy: composes the hub, the tunnel websocket factory, the
public site and the listening endpoints into one service.
"""

from twisted.application import internet, service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from ..bus import open_backend
from ..identity import TokenVerifier
from ..ratelimit import TokenBucketLimiter
from .hub import TunnelHub
from .site import build_site
from ..wsutil import WebSocketEndpointResource
from .tunnel import TunnelServerFactory
from .visitor_ws import VisitorFactory


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
    """

    _log = Logger()

    def __init__(self, reactor, listen, domain, base, bus_url="memory",
                 request_timeout=30.0, max_body=512000, rate_limit=(500, 300.0),
                 ping_interval=10.0, registration_timeout=10.0,
                 ws_ping_interval=30.0):
        service.MultiService.__init__(self)
        self._reactor = reactor
        self.backend = open_backend(bus_url, reactor)
        self.hub = TunnelHub(
            reactor, self.backend.bus, self.backend.directory,
            request_timeout=request_timeout,
        )
        self.local_limiter = TokenBucketLimiter(reactor, *rate_limit)
        self.limiter = self.backend.rate_limiter(self.local_limiter)
        # After a Redis restart, claim our tunnels again at once.
        self.backend.on_reconnect(self.hub.renew_all)
        self.tunnel_factory = TunnelServerFactory(
            self.hub,
            TokenVerifier(base),
            domain,
            reactor,
            ping_interval=ping_interval,
            registration_timeout=registration_timeout,
            max_message_size=max_message_size(max_body),
            url=_ws_url(base),
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
        )
        self.ports = []
        for description in listen:
            endpoint = endpoints.serverFromString(reactor, description)
            server = internet.StreamServerEndpointService(endpoint, self.site)
            server._raiseSynchronously = True
            server.setServiceParent(self)
            self.ports.append(server)
        ttl = self.backend.directory.ttl
        housekeeping = internet.TimerService(
            min(60.0, ttl / 3.0) if ttl else 60.0, self._housekeeping
        )
        housekeeping.clock = reactor
        housekeeping.setServiceParent(self)
        self._domain = domain
        self._base = base

    def startService(self):
        d = defer.maybeDeferred(self.backend.start)
        d.addCallback(lambda _: self.hub.start())
        d.addErrback(lambda f: self._log.failure("bus start failed", f))
        service.MultiService.startService(self)
        self._log.info(
            "brickproxy listening; base {base}, tunnels at <clientID>.{domain}",
            base=self._base, domain=self._domain,
        )
        return d

    @defer.inlineCallbacks
    def stopService(self):
        for connection in list(self.tunnel_factory.connections):
            connection.go_away()
        yield service.MultiService.stopService(self)
        yield self.hub.stop()
        yield self.backend.stop()

    def set_base(self, base):
        """
        Change the base URL mandate tokens must name (e.g. once a test knows
        the port it listens on).
        """
        self._base = base
        self.tunnel_factory.verifier = TokenVerifier(base)

    def when_listening(self):
        """
        @return: a L{Deferred} firing with the list of listening ports
            (L{IListeningPort}) once every C{--listen} endpoint is bound.
        """
        return defer.gatherResults(
            [server._waitingForPort for server in self.ports]
        )

    def _housekeeping(self):
        self.limiter.prune()
        self.hub.renew_all()


def _ws_url(base):
    if base.startswith("https://"):
        return "wss://" + base[len("https://"):]
    if base.startswith("http://"):
        return "ws://" + base[len("http://"):]
    return base
