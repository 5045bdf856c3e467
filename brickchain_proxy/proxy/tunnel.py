"""
The proxy's side of a tunnel: the websocket at C{/proxy/subscribe}.

The protocol class handles the wire only -- decode, dispatch to a
C{handle_<type>} method, encode -- and leaves routing and correlation to the
L{TunnelHub}; its factory is in L{tunnel_factory}.  It also owns two per-connection timers on the reactor's clock:
the registration deadline and the idle ping.

A registration is accepted once its mandate token has verified, the key is
authorized and the factory's replay guard says the token is used for the
first time; a connection may try at most C{factory.max_registrations}
times (each costs an ECDSA verification).
"""

from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.logger import Logger
from zope.interface import implementer

from .. import features as _features
from ..compat import cancel_close_handshake_timer
from ..errors import CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR
from ..identity import derive_client_id
from ..mandate_tokens import RegistrationRefused
from ..replay import ReplayCheckUnavailable
from ..wsutil import (
    CleanClose,
    TunnelBackpressure,
    close_websocket,
    fail_if_invalid_text,
)
from ..messages import (
    Disconnect,
    HttpResponse,
    MessageError,
    Ping,
    RegistrationRequest,
    RegistrationResponse,
    WSMessage,
    WSResponse,
    WSTeardown,
    decode,
    encode,
)
from ..streams.frames import FrameError
from ..streams.session import CONNECTION_LOST, StreamSession
from ..wsframes import ShortFrames
from .interfaces import ITunnelConnection
from .pacing import FramePacer

PING = encode(Ping())

#: Refusal reasons of this module (plain text, sent to the client).
REPLAYED = "token already used"
REPLAY_CHECK_UNAVAILABLE = "cannot check the token for replay"
BEFORE_START = "token made before this proxy started"
TOO_MANY_REGISTRATIONS = "too many registration attempts on this connection"


@implementer(ITunnelConnection)
class TunnelServerProtocol(ShortFrames, CleanClose, WebSocketServerProtocol):
    """
    One client connection.  It may register several tunnels (v1 allows it);
    each lives as long as the connection.
    """

    _log = Logger()

    _opened = False
    _pacer = None
    #: the L{StreamSession} when the connection negotiated streams
    streams = None
    _registration_timer = None
    _ping_timer = None
    _peer_text = "?"
    #: registration-requests received on this connection
    _registrations = 0

    def onConnect(self, request):
        self._peer_text = request.peer
        return None

    def onOpen(self):
        try:
            factory = self.factory
            self._hub = factory.hub
            self._clock = factory.clock
            self.client_ids = set()
            self.tokens = {}  # clientID -> the MandateToken it registered with
            self.features = frozenset()
            self._opened = True
            self._last_sent = self._clock.seconds()
            self._registration_timer = self._clock.callLater(
                factory.registration_timeout, self._registration_expired
            )
            self._ping_timer = self._clock.callLater(
                factory.ping_interval, self._ping_if_idle
            )
            factory.connections.add(self)
            # Visitors sending into this tunnel pause when it backs up.
            self.backpressure = TunnelBackpressure()
            self.transport.registerProducer(self.backpressure, True)
        except Exception:
            self._log.failure("tunnel connection setup failed")
            self.dropConnection(abort=True)

    # -- receiving ---------------------------------------------------------

    def onMessage(self, payload, isBinary):
        if isBinary and self.streams is not None:
            try:
                self.streams.received(payload)
            except FrameError as e:
                self._log.warn("tunnel {peer}: bad stream frame ({error}), closing",
                               peer=self._peer_text, error=str(e))
                close_websocket(self, CLOSE_PROTOCOL_ERROR, "bad stream frame")
            return
        try:
            message = decode(payload)
        except MessageError as e:
            if fail_if_invalid_text(self, payload, isBinary):
                self._log.warn("tunnel {peer}: text message not UTF-8, closing (1007)",
                               peer=self._peer_text)
                return
            self._log.warn(
                "tunnel {peer}: malformed message ignored: {error}",
                peer=self._peer_text, error=str(e),
            )
            if not self.client_ids:
                self._refuse_registration("malformed message: {}".format(e))
            return
        handler = self._handlers.get(type(message))
        if handler is None:
            self._log.debug(
                "tunnel {peer}: ignoring {type} from client",
                peer=self._peer_text, type=type(message).__name__,
            )
            return
        try:
            handler(self, message, payload)
        except Exception:
            self._log.failure(
                "tunnel {peer}: handling {type} failed",
                peer=self._peer_text, type=type(message).__name__,
            )

    def handle_registration(self, message, payload):
        factory = self.factory
        self._registrations += 1
        if self._registrations > factory.max_registrations:
            self._log.warn(
                "tunnel {peer}: registration attempt {count}, over the limit "
                "of {limit} per connection: closing",
                peer=self._peer_text, count=self._registrations,
                limit=factory.max_registrations,
            )
            self._refuse_registration("{} (at most {})".format(
                TOO_MANY_REGISTRATIONS, factory.max_registrations))
            return
        try:
            token = factory.verifier.verify(
                message.mandate_token, now=self._clock.seconds()
            )
            client_id = derive_client_id(token.jwk, message.session)
            factory.authorize(client_id, token)
        except RegistrationRefused as e:
            self._log.warn(
                "tunnel {peer}: registration refused: {reason}",
                peer=self._peer_text, reason=e.reason,
            )
            self._refuse_registration(e.reason)
            return
        guard = factory.replay_guard
        # (Timestamps carry microseconds: a millisecond absorbs rounding.)
        if guard.since is not None and token.timestamp + 0.001 < guard.since:
            # It may have registered on this proxy before a restart.
            self._log.warn(
                "tunnel {peer}: registration of {client_id} refused: {reason}",
                peer=self._peer_text, client_id=client_id, reason=BEFORE_START)
            self._refuse_registration(BEFORE_START + ": sign a new token")
            return
        checked = guard.first_use(token.signature_id, token.expires_at)
        checked.addCallbacks(
            self._replay_checked, self._replay_check_failed,
            callbackArgs=(message, token, client_id), errbackArgs=(client_id,))
        checked.addErrback(lambda f: self._log.failure(
            "tunnel {peer}: registration failed", f, peer=self._peer_text))

    def _replay_checked(self, first, message, token, client_id):
        if self.state != self.STATE_OPEN:
            return  # closed (or refused) while the guard was asked
        if not first:
            self._log.warn(
                "tunnel {peer}: registration refused: {reason} (a replayed "
                "token for {client_id}; the tunnel stays where it is)",
                peer=self._peer_text, reason=REPLAYED, client_id=client_id,
            )
            self._refuse_registration(
                REPLAYED + ": sign a new token for every registration")
            return
        self._accept(message, token, client_id)

    def _replay_check_failed(self, failure, client_id):
        failure.trap(ReplayCheckUnavailable)
        if self.state != self.STATE_OPEN:
            return
        reason = "{}: {}; try again later".format(
            REPLAY_CHECK_UNAVAILABLE, failure.getErrorMessage())
        self._log.warn(
            "tunnel {peer}: registration of {client_id} refused: {reason}",
            peer=self._peer_text, client_id=client_id, reason=reason,
        )
        self._refuse_registration(reason)

    def _accept(self, message, token, client_id):
        factory = self.factory
        factory.metrics.registration_accepted()
        offered = message.features
        negotiated = _features.negotiate(offered, factory.features)
        self.features = negotiated
        if _features.STREAMS in negotiated and self.streams is None:
            self.streams = StreamSession(self.send_binary)
        if not negotiated and factory.v1_ws_pacing and self._pacer is None:
            self._pacer = FramePacer(
                self._clock, factory.v1_ws_pacing, self.send_raw,
                self._hub.websockets.throttle, self._hub.websockets.reset)
        self.client_ids.add(client_id)
        self.tokens[client_id] = token
        if self._registration_timer is not None:
            if self._registration_timer.active():
                self._registration_timer.cancel()
            self._registration_timer = None
        hostname = (
            "{}.{}".format(client_id, factory.domain) if factory.domain else None
        )
        response = encode(
            RegistrationResponse(
                id=message.id,
                key_id=client_id,
                hostname=hostname,
                features=sorted(negotiated) if offered is not None else None,
            )
        )
        # Answer once the directory knows the tunnel (at once on the memory
        # bus), so every instance can route to it when the client hears it
        # is registered.  A directory failure is logged by the hub and does
        # not stop the registration: this instance serves it regardless.
        attached = self._hub.attach(client_id, self)
        attached.addCallback(self._registered, client_id, response)
        attached.addErrback(lambda f: self._log.failure(
            "registration reply failed", f))

    def _registered(self, _, client_id, response):
        if client_id not in self.client_ids:
            return  # closed or taken over meanwhile
        self.send_raw(response)
        self._log.info(
            "tunnel {client_id} registered from {peer} (features: {features})",
            client_id=client_id, peer=self._peer_text,
            features=",".join(sorted(self.features)) or "v1",
        )

    def handle_reply(self, message, payload):
        if not self._hub.reply(self, message, payload):
            self._log.debug(
                "tunnel {peer}: reply {id} nobody waits for (late or cancelled)",
                peer=self._peer_text, id=message.id,
            )

    def handle_stream(self, message, payload):
        if self._pacer is not None and type(message) is WSTeardown:
            self._pacer.forget(message.id)
        self._hub.websockets.from_tunnel(self, message, payload)

    def handle_disconnect(self, message, payload):
        self._log.info(
            "tunnel {peer}: client said goodbye", peer=self._peer_text
        )
        self._drop_tunnels()
        close_websocket(self, CLOSE_NORMAL)

    _handlers = {
        RegistrationRequest: handle_registration,
        HttpResponse: handle_reply,
        WSResponse: handle_reply,
        WSMessage: handle_stream,
        WSTeardown: handle_stream,
        Disconnect: handle_disconnect,
    }

    # -- sending -----------------------------------------------------------

    def send_raw(self, data):
        """
        Send one encoded protocol message.  Once the closing handshake has
        begun nothing more can go out, so the message is dropped (a request
        waiting for its reply fails with TunnelGone when the connection goes).
        """
        if self.state != self.STATE_OPEN:
            return
        self._last_sent = self._clock.seconds()
        self.sendMessage(data, isBinary=False)

    def send_binary(self, data):
        """
        Send one stream frame (a binary message); dropped once closing.
        """
        if self.state != self.STATE_OPEN:
            return
        self._last_sent = self._clock.seconds()
        self.sendMessage(data, isBinary=True)

    def send_frame(self, stream_id, raw, last=False):
        """
        Send a ws-message (or, with C{last}, the ws-teardown) of visitor
        websocket C{stream_id}; to a v1 client, paced (L{FramePacer}).

        @param stream_id: L{None} when only C{raw} knows it (a frame relayed
            from another instance).
        """
        pacer = self._pacer
        if pacer is None:
            self.send_raw(raw)
            return
        if stream_id is None:
            try:
                stream_id = decode(raw).id
            except MessageError:
                return
        pacer.send(stream_id, raw, last)

    def tunnel_taken_over(self, client_id):
        """
        A newer connection registered C{client_id}: this one goes.
        """
        self.client_ids.discard(client_id)
        self._log.info(
            "tunnel {client_id}: closing the older connection from {peer}",
            client_id=client_id, peer=self._peer_text,
        )
        if not self.client_ids:
            close_websocket(self, CLOSE_POLICY, "replaced by a newer registration")

    def revoke(self, client_id, reason):
        """
        C{client_id} may no longer use this proxy: drop its tunnel and, if it
        was the connection's last, refuse the connection with C{reason}.
        """
        self.client_ids.discard(client_id)
        self.tokens.pop(client_id, None)
        self._hub.detach(client_id, self)
        if not self.client_ids:
            self._refuse(reason)

    def go_away(self):
        """
        Close with 1001 (the proxy is shutting down) so the client reconnects.
        """
        close_websocket(self, CLOSE_GOING_AWAY, "proxy shutting down")

    # -- timers ------------------------------------------------------------

    def _registration_expired(self):
        self._registration_timer = None
        self._log.warn(
            "tunnel {peer}: no registration within {seconds} s, closing",
            peer=self._peer_text, seconds=self.factory.registration_timeout,
        )
        self._refuse_registration("no registration received in time")

    def _ping_if_idle(self):
        interval = self.factory.ping_interval
        idle = self._clock.seconds() - self._last_sent
        if idle >= interval:
            self.send_raw(PING)
            idle = 0
        self._ping_timer = self._clock.callLater(
            interval - idle, self._ping_if_idle
        )

    # -- closing -----------------------------------------------------------

    def _refuse(self, reason):
        # v1 sends the reason as a plain-text message; we then close (1008).
        if self.state != self.STATE_OPEN:
            return  # already closing (e.g. a second bad message)
        self.sendMessage(reason.encode("utf-8"), isBinary=False)
        close_websocket(self, CLOSE_POLICY, reason)

    def _refuse_registration(self, reason):
        # A connection that has not registered: refused, and counted once.
        if self.state == self.STATE_OPEN:
            self.factory.metrics.registration_refused(reason)
        self._refuse(reason)

    def _drop_tunnels(self):
        if self._opened:
            self._hub.connection_lost(self)
            self.client_ids.clear()

    def onClose(self, wasClean, code, reason):
        for timer in (self._registration_timer, self._ping_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._registration_timer = self._ping_timer = None
        if self._pacer is not None:
            self._pacer.stop()
        if self.streams is not None:
            self.streams.connection_lost(CONNECTION_LOST)
        # Autobahn leaves its closing-handshake timer running when the TCP
        # connection goes before the client's close frame arrives (as when a
        # client answers our close by dropping TCP): cancel it here.
        cancel_close_handshake_timer(self)
        if self._opened:
            self.factory.connection_closed(self)
            if self.client_ids:
                self._log.info(
                    "tunnel {client_ids} disconnected (code {code})",
                    client_ids=",".join(sorted(self.client_ids)), code=code,
                )
            self._drop_tunnels()
            self._opened = False
