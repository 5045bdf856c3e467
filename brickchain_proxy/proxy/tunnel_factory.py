"""
The factory of the proxy's tunnel websockets (L{tunnel.TunnelServerProtocol}):
what every connection shares -- the hub, the token verifier and replay
guard, the timers' settings, the negotiable features -- the set of open
connections (for graceful shutdown) and the registration policy (authorized
keys, re-checked on SIGHUP; registration attempts per connection).
"""

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from .. import features as _features
from ..mandate_tokens import RegistrationRefused
from ..metrics import NO_PROXY_METRICS
from ..replay import MemoryReplayGuard
from .tunnel import TunnelServerProtocol


class TunnelServerFactory(WebSocketServerFactory):
    """
    Creates L{TunnelServerProtocol}s and holds what they share.

    @ivar connections: the open tunnel connections (for shutdown).
    @ivar metrics: the L{IProxyMetrics} registrations are counted in.
    @ivar replay_guard: the L{IReplayGuard} that refuses a mandate token
        used twice (by default this process's own, on C{clock}).
    @ivar max_registrations: the most registration-requests one connection
        may send; the next closes it.
    """

    protocol = TunnelServerProtocol
    _log = Logger()

    def __init__(self, hub, verifier, domain, clock, ping_interval=10.0,
                 registration_timeout=10.0, max_message_size=4 * 1024 * 1024,
                 features=_features.SUPPORTED, authorizer=None, url=None,
                 v1_ws_pacing=0.0, metrics=NO_PROXY_METRICS, replay_guard=None,
                 max_registrations=5):
        WebSocketServerFactory.__init__(self, url=url, reactor=clock)
        self.hub = hub
        self.verifier = verifier
        self.domain = domain
        self.clock = clock
        self.ping_interval = ping_interval
        self.registration_timeout = registration_timeout
        self.features = frozenset(features)
        #: seconds between two frames of one websocket sent to a v1 client
        #: (L{FramePacer}); 0 sends them as they come
        self.v1_ws_pacing = v1_ws_pacing
        self._authorizer = authorizer
        self.metrics = metrics
        self.replay_guard = (
            MemoryReplayGuard(clock) if replay_guard is None else replay_guard)
        self.max_registrations = max_registrations
        self.connections = set()
        self._closed_waiters = []
        self.setProtocolOptions(
            maxFramePayloadSize=max_message_size,
            maxMessagePayloadSize=max_message_size,
            perMessageCompressionAccept=lambda offers: None,
            # Close with 1009 (and say so) rather than just dropping TCP.
            failByDrop=False,
            # Every message is decoded by orjson, which rejects invalid
            # UTF-8 itself: Autobahn's second pass cost ~30% of the CPU on
            # 100 KB bodies.
            utf8validateIncoming=False,
        )

    def connection_closed(self, connection):
        """
        C{connection} has closed.
        """
        self.connections.discard(connection)
        if not self.connections:
            waiters, self._closed_waiters = self._closed_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_all_closed(self):
        """
        @return: a L{Deferred} that fires once no tunnel connection is open
            (at once if none is); cancelling it stops the wait.
        """
        if not self.connections:
            return succeed(None)
        d = Deferred(lambda d: self._closed_waiters.remove(d))
        self._closed_waiters.append(d)
        return d

    def reauthorize(self):
        """
        Check every registered tunnel against the (reloaded) policy and close
        the connections of those no longer allowed, with the reason.
        """
        if self._authorizer is None:
            return 0
        closed = 0
        for connection in list(self.connections):
            for client_id, token in list(getattr(connection, "tokens", {}).items()):
                if client_id not in connection.client_ids:
                    continue
                try:
                    self._authorizer(client_id, token)
                except RegistrationRefused as e:
                    self._log.warn(
                        "tunnel {client_id} no longer authorized: closing",
                        client_id=client_id,
                    )
                    connection.revoke(client_id, e.reason)
                    closed += 1
        return closed

    def authorize(self, client_id, token):
        """
        Raise L{RegistrationRefused} if C{client_id} may not register.
        """
        if self._authorizer is not None:
            self._authorizer(client_id, token)
