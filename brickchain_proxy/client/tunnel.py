"""
The client's side of a tunnel: the websocket to the proxy's
C{/proxy/subscribe}.

On open it registers (a signed mandate token); after that it answers every
message the proxy sends: http-request through the L{LocalForwarder}, ping by
noting the proxy is alive.  If nothing at all is heard for C{ping_timeout}
seconds, it drops the connection so the service reconnects.
"""

from urllib.parse import urlsplit

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .. import features as _features
from ..compat import cancel_close_handshake_timer
from ..messages import (
    Disconnect,
    HttpRequest,
    MessageError,
    Ping,
    RegistrationRequest,
    RegistrationResponse,
    WSMessage,
    WSRequest,
    WSTeardown,
    decode,
    encode,
)
from ..wsutil import TunnelBackpressure, fail_if_invalid_text
from ..streams.frames import FrameError
from ..streams.session import CONNECTION_LOST, StreamSession
from ..tls import CertificateRefused, check_identity, tls_failure_reason
from ..wsframes import ShortFrames
from .local_ws import LocalWebSockets
from .streamed import LocalStreamedRequest


class RegistrationFailed(Exception):
    """
    The proxy refused the registration, or never answered it.
    """


class TunnelClientProtocol(ShortFrames, WebSocketClientProtocol):
    """
    One connection to the proxy.

    @ivar registered: a L{Deferred} firing with the L{RegistrationResponse},
        or failing with L{RegistrationFailed} if the connection closes first.
    """

    _log = Logger()

    registration = None
    #: the L{StreamSession} once streams are negotiated
    streams = None
    #: the proxy's reason, when it refused the registration
    refusal = None
    #: why TLS verification of the proxy failed, when it did
    tls_error = None
    _watchdog = None
    _opened = False

    def onOpen(self):
        if not self._proxy_identity_verified():
            return
        try:
            factory = self.factory
            self._clock = factory.clock
            self.features = frozenset()
            self.registered = Deferred()
            self._last_heard = self._clock.seconds()
            self._opened = True
            self._pending_id = None
            self._watchdog = self._clock.callLater(
                factory.ping_timeout / 4.0, self._check_alive
            )
            # Local websockets sending into the tunnel pause when it backs up.
            self.backpressure = TunnelBackpressure()
            self.transport.registerProducer(self.backpressure, True)
            self.local_websockets = LocalWebSockets(
                self._clock, factory.local_url, self.send_message, self.features,
                timeout=factory.forwarder.timeout,
                max_message_size=factory.forwarder.max_body,
                backpressure=self.backpressure,
                rewrite=factory.forwarder.rewrite,
                endpoint=factory.forwarder.endpoint,
                tls=factory.forwarder.tls,
            )
            request = RegistrationRequest(
                mandate_token=factory.key.sign_mandate_token(
                    factory.proxy_url, now=self._clock.seconds()),
                session=factory.session,
                features=sorted(factory.features),
            )
            self._pending_id = request.id
            self.sendMessage(encode(request), isBinary=False)
        except Exception:
            self._log.failure("could not start registration")
            self.dropConnection(abort=True)

    def _proxy_identity_verified(self):
        """
        Check the proxy's certificate against its hostname (or IP address)
        once more, with service-identity, before the mandate token is sent.
        Our own TLS options (L{brickchain_proxy.tls}) already refuse in the
        handshake; this covers options a library user passed in, e.g.
        Twisted's own, which let a certificate through when service-identity
        fails with an error other than a mismatch (a malformed wildcard).
        """
        handle = getattr(self.transport, "getHandle", lambda: None)()
        if handle is None or not hasattr(handle, "get_peer_certificate"):
            return True  # plain ws://
        hostname = self.factory.tls_hostname
        try:
            certificate = handle.get_peer_certificate()
            if certificate is None:
                raise CertificateRefused("no certificate")
            check_identity(certificate.to_cryptography(), hostname)
        except Exception as e:
            self.tls_error = "certificate not valid for {}".format(hostname)
            self._log.error(
                "TLS verification of the proxy failed, not connecting: "
                "certificate not valid for {hostname}: {error}",
                hostname=hostname, error=str(e) or type(e).__name__,
            )
            self.dropConnection(abort=True)
            return False
        return True

    # -- receiving ---------------------------------------------------------

    def onMessage(self, payload, isBinary):
        self._last_heard = self._clock.seconds()
        if isBinary and self.streams is not None:
            try:
                self.streams.received(payload)
            except FrameError as e:
                self._log.warn("bad stream frame from the proxy ({error}); "
                               "reconnecting", error=str(e))
                self.dropConnection(abort=True)
            return
        try:
            message = decode(payload)
        except MessageError as e:
            if fail_if_invalid_text(self, payload, isBinary):
                self._log.warn("text message from the proxy not UTF-8, closing (1007)")
                return
            if self.registration is None:
                # v1 refuses a registration with a plain-text message.
                reason = payload.decode("utf-8", "replace").strip()[:300]
                self._log.error(
                    "the proxy refused the registration: {reason}", reason=reason
                )
                self.refusal = reason
                self._registration_failed(reason)
            else:
                self._log.warn("malformed message from the proxy ignored: {error}",
                               error=str(e))
            return
        handler = self._handlers.get(type(message))
        if handler is None:
            self._log.debug("ignoring {type} from the proxy",
                            type=type(message).__name__)
            return
        try:
            handler(self, message)
        except Exception:
            self._log.failure("handling {type} failed", type=type(message).__name__)

    def handle_registration(self, message):
        if message.id != self._pending_id:
            self._log.warn("registration response for an unknown request ignored")
            return
        if self.registration is not None:
            return
        if self.registered is None:
            # A refusal came first: the registration has already failed.
            self._log.warn("registration response after a refusal ignored")
            return
        self.registration = message
        self.features = frozenset(message.features or ())
        self.local_websockets.features = self.features
        if _features.STREAMS in self.features:
            self.streams = StreamSession(self.send_binary, self._accept_stream)
        self.factory.registered_with(self, message)
        d, self.registered = self.registered, None
        d.callback(message)

    def _accept_stream(self, stream, head):
        if head.get("kind") == "ws":
            return self.local_websockets.open_streamed(stream, head)
        return LocalStreamedRequest(self.factory.forwarder, stream, head,
                                    self.features, self._clock)

    def handle_http_request(self, message):
        d = self.factory.forwarder.forward(message, self.features)
        d.addCallback(self.send_message)
        d.addErrback(lambda f: self._log.failure(
            "answering request {id} failed", f, id=message.id))

    def handle_ping(self, message):
        pass

    def handle_ws_request(self, message):
        self.local_websockets.open(message)

    def handle_ws_message(self, message):
        self.local_websockets.deliver(message)

    def handle_ws_teardown(self, message):
        self.local_websockets.teardown(message)

    _handlers = {
        RegistrationResponse: handle_registration,
        HttpRequest: handle_http_request,
        Ping: handle_ping,
        WSRequest: handle_ws_request,
        WSMessage: handle_ws_message,
        WSTeardown: handle_ws_teardown,
    }

    # -- sending -----------------------------------------------------------

    def send_message(self, message):
        """
        Encode and send one message to the proxy (if still connected).
        """
        if self._opened and self.state == self.STATE_OPEN:
            self.sendMessage(encode(message), isBinary=False)

    def send_binary(self, data):
        """
        Send one stream frame to the proxy (if still connected).
        """
        if self._opened and self.state == self.STATE_OPEN:
            self.sendMessage(data, isBinary=True)

    def say_goodbye(self):
        """
        Tell the proxy we are leaving (disconnect), then close.
        """
        if self._opened and self.state == self.STATE_OPEN:
            self.sendMessage(encode(Disconnect()), isBinary=False)
            self.sendClose(1000)

    # -- liveness ----------------------------------------------------------

    def _check_alive(self):
        timeout = self.factory.ping_timeout
        silent = self._clock.seconds() - self._last_heard
        if silent >= timeout:
            self._watchdog = None
            self._log.warn(
                "nothing heard from the proxy for {seconds:.0f} s: reconnecting",
                seconds=silent,
            )
            self.dropConnection(abort=True)
            return
        self._watchdog = self._clock.callLater(
            min(timeout - silent, timeout / 4.0) + 0.01, self._check_alive
        )

    def _registration_failed(self, reason):
        d, self.registered = self.registered, None
        if d is not None:
            d.errback(RegistrationFailed(reason))
            if self.factory.consume_refusals:
                # The owner learns of it through on_closed instead.
                d.addErrback(lambda f: f.trap(RegistrationFailed))

    def connectionLost(self, reason):
        why = tls_failure_reason(reason)
        if why is not None:
            self.tls_error = why
            self._log.error(
                "TLS verification of the proxy failed, not connecting: {error}",
                error=why,
            )
        return WebSocketClientProtocol.connectionLost(self, reason)

    def onClose(self, wasClean, code, reason):
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        # Autobahn leaves its closing-handshake timer running when the TCP
        # connection goes before the peer's close frame arrives (as when the
        # proxy answers our disconnect by closing too): cancel it here.
        cancel_close_handshake_timer(self)
        if not self._opened:
            # The websocket never opened (refused upgrade, TLS, ...): the
            # attempt failed, and the service backs off and says why.
            self.factory.connection_closed(self, code, reason)
            return
        self._opened = False
        self.local_websockets.close_all()
        if self.streams is not None:
            self.streams.connection_lost(CONNECTION_LOST)
        if self.registration is None:
            self._registration_failed(
                "connection closed before registration ({}: {})".format(code, reason)
            )
        self.factory.connection_closed(self, code, reason)


class TunnelClientFactory(WebSocketClientFactory):
    """
    Builds L{TunnelClientProtocol}s and holds what they share.

    @param on_registered: called with C{(protocol, RegistrationResponse)}.
    @param on_closed: called with C{(protocol, registered, code, reason)}.
    """

    protocol = TunnelClientProtocol
    #: Set when refusals are followed through C{on_closed} rather than each
    #: protocol's C{registered}, so their failures are not left unhandled.
    consume_refusals = False

    def __init__(self, ws_url, proxy_url, key, forwarder, clock, local_url,
                 session=None,
                 ping_timeout=20.0, features=_features.CLIENT_DEFAULT,
                 max_message_size=64 * 1024 * 1024, on_registered=None,
                 on_closed=None):
        WebSocketClientFactory.__init__(self, url=ws_url, reactor=clock)
        self.tls_hostname = urlsplit(ws_url).hostname
        self.proxy_url = proxy_url
        self.key = key
        self.forwarder = forwarder
        self.clock = clock
        self.local_url = local_url
        self.session = session or None
        self.ping_timeout = ping_timeout
        self.features = frozenset(features)
        self._on_registered = on_registered
        self._on_closed = on_closed
        self.setProtocolOptions(
            maxFramePayloadSize=max_message_size,
            maxMessagePayloadSize=max_message_size,
            # orjson validates UTF-8 when it decodes each message; a plain
            # text refusal is decoded with replacement.
            utf8validateIncoming=False,
        )

    def registered_with(self, protocol, response):
        if self._on_registered is not None:
            self._on_registered(protocol, response)

    def connection_closed(self, protocol, code, reason):
        if self._on_closed is not None:
            self._on_closed(protocol, protocol.registration is not None, code, reason)
