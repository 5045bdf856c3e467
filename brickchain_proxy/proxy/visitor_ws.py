"""
Visitor websockets: a public websocket upgrade on a tunnel route becomes a
ws-request to the tunnel; the visitor's handshake completes only once the
client's ws-response says ok (Autobahn's C{onConnect} returns a Deferred).
Then frames flow both ways as ws-message, and a close on either side becomes
ws-teardown.

Flow control:

  - visitor -> tunnel: the tunnel connection's transport is the consumer;
    when it backs up, every visitor of that tunnel connection stops being
    read (L{TunnelBackpressure}), so frames wait in the visitors' sockets,
    not in our memory;
  - tunnel -> visitor: a visitor that does not read what we send it is
    closed once more than C{max_buffered} bytes wait for it, so one stuck
    visitor can neither grow memory nor stall the tunnel for everyone else.
"""

from urllib.parse import unquote

from autobahn.twisted.websocket import (
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import CancelledError, TimeoutError
from twisted.logger import Logger
from twisted.web.http import RESPONSES
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from ..compat import hand_over_connection
from ..errors import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    INTERNAL_ERROR,
    failure_answer,
)
from ..features import BINARY_WS, MULTI_HEADER, RAW_PATH, WS_CLOSE, WS_SUBPROTOCOL
from ..headers import add_forwarded_headers, headers_to_wire
from ..messages import MessageError, WSMessage, WSRequest, WSTeardown, encode
from ..wsframes import ShortFrames
from ..wsutil import (
    CleanClose,
    SendBufferWatch,
    close_websocket,
    is_open,
)
from .interfaces import IStreamVisitor
from .streamed_ws import StreamedVisitor

#: Request headers that belong to this hop's websocket handshake only.
_DROP_FROM_WS_REQUEST = frozenset(
    ["host", "sec-websocket-key", "sec-websocket-version",
     "sec-websocket-extensions"]
)



@implementer(IStreamVisitor)
class VisitorProtocol(ShortFrames, CleanClose, WebSocketServerProtocol):
    """
    One visitor's websocket, tunnelled as stream C{stream_id}.

    C{route} is set by L{accept_visitor} before the handshake is parsed:
    C{(client_id, stream_id, raw ws-request, features)}.
    """

    _log = Logger()

    route = None
    #: the handshake as a stream head (set by L{accept_visitor})
    ws_head = None
    #: the L{StreamedVisitor} when the websocket rides a stream
    _streamed = None
    _pending = None
    _stream_open = False
    _teardown_sent = False
    _drain = None
    _backpressure = None

    def onConnect(self, request):
        try:
            client_id, stream_id, raw, features = self.route
            hub = self.factory.hub
            connection = hub.pick(client_id)
            if connection is None:
                # Held elsewhere, maybe: over streams through the bus if that
                # tunnel speaks them, else as v1 messages.
                d = hub.remote_tunnel(client_id)
                d.addCallback(self._open_remote)
            elif getattr(connection, "streams", None) is not None:
                d = self._open_streamed(connection)
            else:
                d = hub.websockets.open(client_id, stream_id, raw, self)
        except Exception:
            self._log.failure("could not open a tunnelled websocket")
            raise ConnectionDeny(500, "internal error in the proxy")
        self._pending = d
        offered = request.protocols
        d.addCallbacks(self._accepted, self._refused,
                       callbackArgs=(offered, features))
        return d

    def _open_streamed(self, connection):
        client_id, stream_id = self.route[:2]
        hub = self.factory.hub
        self._streamed = StreamedVisitor(self, connection, self.factory.clock,
                                         hub.request_timeout)
        hub.websockets.register(stream_id, self, client_id, connection)
        d = self._streamed.open(self.ws_head)
        d.addErrback(self._forget_streamed)
        return d

    def _open_remote(self, remote):
        if remote is not None:
            return self._open_streamed(remote)
        client_id, stream_id, raw = self.route[:3]
        return self.factory.hub.websockets.open(client_id, stream_id, raw, self)

    def _forget_streamed(self, failure):
        self.factory.hub.websockets.forget(self.route[1])
        return failure

    @property
    def drain(self):
        """
        The watch on this websocket's send buffer, once open.
        """
        return self._drain

    def _accepted(self, response, offered, features):
        self._pending = None
        client_id = self.route[0]
        if not response.ok:
            if self._streamed is not None:
                self.factory.hub.websockets.forget(self.route[1])
            self._log.info(
                "tunnel {client_id}: websocket refused by the client: {error}",
                client_id=client_id, error=response.error,
            )
            raise ConnectionDeny(
                502, response.error or "the tunnel refused the websocket")
        self._stream_open = True
        chosen = response.protocol
        if WS_SUBPROTOCOL in features and chosen in offered:
            return chosen
        return None

    def _refused(self, failure):
        self._pending = None
        if failure.check(ConnectionDeny):
            return failure
        if failure.check(CancelledError):
            raise ConnectionDeny(499, "the visitor went away")
        if failure.check(TimeoutError):
            # The ws-request went out; the client must not open the local
            # websocket for nobody.
            self._teardown()
        answer = failure_answer(failure, self.route[0],
                                self.factory.hub.request_timeout)
        if answer is None:
            self._log.failure("opening a tunnelled websocket failed", failure)
            answer = INTERNAL_ERROR
        raise ConnectionDeny(*answer)

    def sendHttpErrorResponse(self, code, reason, responseHeaders=None):
        # Autobahn sends only a status line; visitors deserve the reason in
        # the body too, like every other error from this proxy.
        body = (reason + "\n").encode("utf-8")
        phrase = RESPONSES.get(code, b"Error").decode("latin-1")
        head = ["HTTP/1.1 {} {}".format(code, phrase),
                "Content-Type: text/plain; charset=utf-8",
                "Content-Length: {}".format(len(body)),
                "Connection: close"]
        for name, value in responseHeaders or ():
            head.append("{}: {}".format(name, value))
        self.sendData(("\r\n".join(head) + "\r\n\r\n").encode("utf-8") + body)

    def onOpen(self):
        try:
            self._drain = SendBufferWatch(
                self.factory.max_buffered,
                self._streamed.resumed if self._streamed is not None else None)
            self.transport.registerProducer(self._drain, True)
            self._backpressure = self.factory.hub.backpressure_for(self.route[0])
            if self._backpressure is not None:
                self._backpressure.add(self)
        except Exception:
            self._log.failure("visitor websocket setup failed")

    # -- visitor -> tunnel -------------------------------------------------

    def onMessage(self, payload, isBinary):
        if self._streamed is not None:
            self._streamed.send(payload, isBinary)
            return
        stream_id = self.route[1]
        message = WSMessage.from_payload(
            stream_id, payload, isBinary, BINARY_WS in self.route[3]
        )
        if not self.factory.hub.websockets.to_tunnel(stream_id, encode(message)):
            close_websocket(self, CLOSE_GOING_AWAY, "the tunnel is gone")

    def onClose(self, wasClean, code, reason):
        if self._backpressure is not None:
            self._backpressure.discard(self)
            self._backpressure = None
        if self._pending is not None:
            # The visitor left before the tunnel answered the ws-request.
            pending, self._pending = self._pending, None
            pending.cancel()
            self._teardown()
            return
        if self._stream_open:
            self._stream_open = False
            if self.closedByMe and self.localCloseCode is not None:
                # We failed the connection (e.g. Autobahn's 1009 for a
                # message over the limit): our code counts, not whatever
                # the visitor answered (Autobahn clients answer 1000).
                code = self.localCloseCode
                reason = (self.localCloseReason or b"").decode("utf-8", "replace")
            if code == CLOSE_TOO_BIG:
                self._log.warn(
                    "tunnel {client_id}: visitor websocket closed, a message was "
                    "over the limit of {limit} bytes",
                    client_id=self.route[0], limit=self.factory.max_message_size,
                )
            self._teardown(code, reason)

    def _teardown(self, code=None, reason=None):
        if self._teardown_sent or self.route is None:
            return
        self._teardown_sent = True
        stream_id = self.route[1]
        if self._streamed is not None:
            self.factory.hub.websockets.forget(stream_id)
            if code is not None:
                self._streamed.visitor_closed(code, reason)
            else:
                self._streamed.reset("the visitor went away")
            return
        if WS_CLOSE in self.route[3] and code is not None and 1000 <= code <= 4999:
            teardown = WSTeardown(id=stream_id, code=code, reason=reason or "")
        else:
            teardown = WSTeardown(id=stream_id)
        if not self.factory.hub.websockets.to_tunnel(stream_id, encode(teardown), last=True):
            self.factory.hub.websockets.forget(stream_id)

    # -- tunnel -> visitor -------------------------------------------------

    def deliver(self, message):
        """
        A ws-message or ws-teardown for this visitor from the tunnel.
        """
        if type(message) is WSMessage:
            try:
                payload = message.payload()
            except MessageError as e:
                self._log.warn("bad ws-message from tunnel {client_id}: {error}",
                               client_id=self.route[0], error=str(e))
                return
            if not is_open(self):
                return
            if self._drain is not None and self._drain.too_slow(len(payload)):
                self._log.warn(
                    "tunnel {client_id}: visitor websocket not reading; "
                    "closing it", client_id=self.route[0],
                )
                self._teardown(CLOSE_POLICY, "visitor too slow")
                close_websocket(self, CLOSE_POLICY, "too slow to read")
                return
            self.sendMessage(payload, message.message_type == 2)
        else:
            # The tunnel side closed: don't send a teardown back.
            self._teardown_sent = True
            self._stream_open = False
            close_websocket(self, message.code or 1000, message.reason)

    def throttle(self, paused):
        """
        Stop (C{paused}) or resume reading this visitor: its frames wait for
        their pace to a v1 tunnel client.
        """
        if self.transport is None:
            return
        if paused:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    def tunnel_lost(self, reason):
        """
        The tunnel carrying this websocket is gone: close with 1001.
        """
        self._teardown_sent = True
        self._stream_open = False
        if self._streamed is not None:
            self.factory.hub.websockets.forget(self.route[1])
            self._streamed.reset(reason)
        close_websocket(self, CLOSE_GOING_AWAY, reason)


class VisitorFactory(WebSocketServerFactory):
    """
    Shared settings of visitor websockets.
    """

    protocol = VisitorProtocol

    def __init__(self, hub, clock, max_message_size, ping_interval=30.0,
                 max_buffered=None):
        WebSocketServerFactory.__init__(self, reactor=clock)
        self.hub = hub
        self.clock = clock
        self.max_message_size = max_message_size
        self.max_buffered = max_buffered or max(4 * max_message_size, 4 * 1024 * 1024)
        options = dict(
            maxFramePayloadSize=max_message_size,
            maxMessagePayloadSize=max_message_size,
            # Send the 1009 close frame rather than just dropping TCP.
            failByDrop=False,
            # Answer a visitor's close with its own code, as browsers do.
            echoCloseCodeReason=True,
            openHandshakeTimeout=0,
        )
        if ping_interval:
            options.update(autoPingInterval=ping_interval,
                           autoPingTimeout=ping_interval)
        self.setProtocolOptions(**options)


def accept_visitor(request, factory, client_id, raw_path, features,
                   trust_forwarded=False):
    """
    Take over a twisted.web request's connection for a visitor websocket
    (as L{autobahn.twisted.resource.WebSocketResource} does), with the
    ws-request for the tunnel prepared from the request.
    """
    headers = headers_to_wire(
        request.requestHeaders, MULTI_HEADER in features, _DROP_FROM_WS_REQUEST
    )
    # headers_to_wire drops Connection/Upgrade as hop-by-hop already.
    path = raw_path.decode("utf-8", "replace")
    if RAW_PATH not in features:
        path = unquote(path, errors="replace")
    message = WSRequest(
        url=path,
        query=request.uri.partition(b"?")[2].decode("utf-8", "replace"),
        headers=headers,
    )
    add_forwarded_headers(request, message.headers, trust_forwarded)
    protocol = factory.buildProtocol(request.transport.getPeer())
    protocol.route = (client_id, message.id, encode(message), features)
    protocol.ws_head = {"kind": "ws", "url": message.url, "query": message.query,
                        "headers": message.headers}
    hand_over_connection(request, protocol)
    return NOT_DONE_YET


