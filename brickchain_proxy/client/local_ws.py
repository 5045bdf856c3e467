"""
The client's side of a tunnelled websocket: on ws-request, open a websocket
to the local service (same path and query, forwarded headers and
subprotocols) and answer ws-response; then relay frames both ways and turn a
close on either side into ws-teardown.
"""

from urllib.parse import urlsplit

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from twisted.logger import Logger

from ..endpoints import client_endpoint
from ..errors import CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_BIG
from ..features import BINARY_WS, WS_CLOSE, WS_SUBPROTOCOL
from ..headers import join_values, wire_to_pairs
from ..messages import MessageError, WSMessage, WSResponse, WSTeardown
from ..tls import LOCAL_TLS_REFUSED, SYSTEM_TRUST, tls_failure_reason
from ..wsframes import ShortFrames
from ..wsutil import SendBufferWatch, close_websocket, is_open
from .rewrite import LocalRewrite
from .streamed_ws import StreamedLocal, StreamHead
from .urls import ESCAPES_PREFIX, PathEscapesPrefix, local_url

#: Headers Autobahn writes into every opening handshake itself (RFC 6455
#: 4.1: Host, Upgrade, Connection, Sec-WebSocket-Key/-Version/-Extensions,
#: plus its fixed Pragma and Cache-Control "no-cache"), so a forwarded copy
#: would reach the local service twice -- aiohttp, for one, answers a second
#: User-Agent with 400.  User-Agent, Origin and the offered subprotocols are
#: forwarded through Autobahn's own fields instead (L{handshake_fields}).
_WRITTEN_BY_AUTOBAHN = frozenset(
    ["host", "user-agent", "origin", "pragma", "cache-control",
     "sec-websocket-protocol", "sec-websocket-key", "sec-websocket-version",
     "sec-websocket-extensions", "sec-websocket-accept", "content-length"]
)


def handshake_fields(wire):
    """
    Split a ws-request's headers into what Autobahn's client factory takes:
    the visitor's User-Agent, Origin and offered subprotocols go into their
    own fields (so each is written once, and the User-Agent is the
    visitor's, not Autobahn's); every other end-to-end header is forwarded
    as it came, one line per name.

    @param wire: the ws-request's headers object.
    @return: C{(headers, useragent, origin, protocols)}: a L{dict} of name to
        value, the User-Agent or L{None} (then none is sent), the Origin or
        L{None}, and the list of offered subprotocols or L{None}.
    """
    headers = {}
    for name, values in wire_to_pairs(wire, _WRITTEN_BY_AUTOBAHN):
        text = [v.decode("utf-8") for v in values]
        headers[name.decode("ascii")] = join_values(name.decode("ascii").lower(), text)
    useragent = origin = protocols = None
    for name, value in wire.items():
        lower = name.lower()
        if lower not in _HANDSHAKE_FIELDS:
            continue
        values = [v for v in (value if isinstance(value, list) else [value])
                  if isinstance(v, str)]
        if not values:
            continue
        # CR and LF cannot be sent in a header line.
        values = [v.replace("\r", " ").replace("\n", " ") for v in values]
        if lower == "sec-websocket-protocol":
            protocols = [p.strip() for v in values for p in v.split(",") if p.strip()]
        elif lower == "origin":
            origin = values[0]
        else:
            useragent = ", ".join(values)
    return headers, useragent, origin, protocols


_HANDSHAKE_FIELDS = frozenset(["user-agent", "origin", "sec-websocket-protocol"])


class LocalWebSocket(ShortFrames, WebSocketClientProtocol):
    """
    The websocket to the local service for one tunnelled stream.
    """

    _log = Logger()

    _opened = False
    _closed_by_tunnel = False
    _watch = None

    def onConnect(self, response):
        self.chosen_protocol = response.protocol

    def onOpen(self):
        factory = self.factory
        self._opened = True
        try:
            self._watch = SendBufferWatch(
                self.factory.manager.max_buffered,
                lambda: factory.manager.local_drained(factory.stream_id))
            self.transport.registerProducer(self._watch, True)
        except Exception:
            self._log.failure("local websocket setup failed")
        factory.manager.local_opened(factory.stream_id, self)

    def onMessage(self, payload, isBinary):
        self.factory.manager.local_message(self.factory.stream_id, payload, isBinary)

    def deliver(self, message):
        """
        A ws-message from the visitor, through the tunnel.
        """
        try:
            payload = message.payload()
        except MessageError as e:
            self._log.warn("bad ws-message from the proxy: {error}", error=str(e))
            return
        self.deliver_payload(payload, message.message_type == 2)

    @property
    def backed_up(self):
        """
        Whether the local service is not reading what we send it.
        """
        return self._watch is not None and self._watch.backed_up

    def deliver_payload(self, payload, is_binary):
        """
        One message from the visitor.
        """
        if not is_open(self):
            return
        if self._watch is not None and self._watch.too_slow(len(payload)):
            self._log.warn("local websocket not reading; closing it")
            self.close_from_tunnel(CLOSE_POLICY, "local service too slow")
            self.factory.manager.local_closed(
                self.factory.stream_id, self, CLOSE_POLICY, "local service too slow")
            return
        self.sendMessage(payload, is_binary)

    def close_from_tunnel(self, code, reason):
        """
        The visitor closed (or the tunnel went away): close our end.
        """
        self._closed_by_tunnel = True
        close_websocket(self, code, reason)

    _tls_refused = None

    def connectionLost(self, reason):
        why = tls_failure_reason(reason)
        if why is not None and not self._opened:
            self._tls_refused = why
        return WebSocketClientProtocol.connectionLost(self, reason)

    def onClose(self, wasClean, code, reason):
        manager = self.factory.manager
        manager.forget_backpressure(self)
        if not self._opened:
            if self._tls_refused is not None:
                manager.local_tls_refused(self.factory.stream_id, self._tls_refused)
                return
            manager.local_failed(self.factory.stream_id, reason or "connection closed")
            return
        if self.closedByMe and self.localCloseCode is not None:
            # We failed the connection (e.g. 1009): our code counts, not the
            # local service's answer.
            code = self.localCloseCode
            reason = (self.localCloseReason or b"").decode("utf-8", "replace")
        if code == CLOSE_TOO_BIG:
            self._log.warn("local websocket closed: a message was over the limit")
        if not self._closed_by_tunnel:
            manager.local_closed(self.factory.stream_id, self, code, reason)


class _LocalFactory(WebSocketClientFactory):
    protocol = LocalWebSocket

    def clientConnectionFailed(self, connector, reason):
        pass


class LocalWebSockets:
    """
    The local websockets of one tunnel connection, by stream id.

    @param send: callable taking one message to send to the proxy.
    @param features: the features negotiated on the tunnel.
    @param endpoint: L{None} (connect to C{local_url}'s host and port), or
        the endpoint every local websocket goes through (an in-process
        service).
    @param tls: the L{ClientTLSPolicy} a C{wss} local service is verified
        with.
    """

    _log = Logger()

    def __init__(self, reactor, local_url, send, features, timeout=25.0,
                 max_message_size=512000, backpressure=None, tls=SYSTEM_TRUST,
                 rewrite=None, endpoint=None):
        parts = urlsplit(local_url)
        self._reactor = reactor
        self._secure = parts.scheme in ("https", "wss")
        self._host = parts.hostname
        self._port = parts.port or (443 if self._secure else 80)
        self._netloc = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self._send = send
        self.features = features
        self.timeout = timeout
        self.max_message_size = max_message_size
        self.max_buffered = max(4 * max_message_size, 4 * 1024 * 1024)
        self._backpressure = backpressure
        self._tls = tls
        self._rewrite = rewrite if rewrite is not None else LocalRewrite()
        self._endpoint = endpoint
        self.streams = {}  # stream id -> LocalWebSocket, or a connect Deferred
        self._streamed = {}  # stream id -> its Stream, for websockets on streams

    def url_for(self, message):
        return local_url(
            "{}://{}{}".format("wss" if self._secure else "ws", self._netloc,
                               self._prefix),
            message, self.features)

    # -- from the proxy ----------------------------------------------------

    def open_streamed(self, stream, head):
        """
        A websocket on a stream (its head is the handshake): connect to the
        local service.

        @return: the stream's L{IStreamHandler}.
        """
        handler = StreamedLocal(self, stream)
        stream.handler = handler
        headers = head.get("headers")
        self._streamed[stream.id] = stream
        self.open(StreamHead(stream.id, head.get("url") or "/", head.get("query") or "",
                              headers if type(headers) is dict else {}))
        return handler

    def open(self, message):
        """
        A ws-request: connect to the local service.
        """
        stream_id = message.id
        if stream_id in self.streams:
            self._log.warn("duplicate ws-request {id} ignored", id=stream_id)
            return
        headers, useragent, origin, protocols = handshake_fields(message.headers)
        try:
            factory = _LocalFactory(
                url=self.url_for(message), headers=self._rewrite.apply_to_dict(headers),
                protocols=protocols, origin=origin, useragent=useragent,
                reactor=self._reactor,
            )
            if self._rewrite.host is not None:
                # Autobahn writes "Host: <host>:<port>" from these.
                host, _, port = self._rewrite.host.rpartition(":")
                if port.isdigit() and host:
                    factory.host, factory.port = host, int(port)
                else:
                    factory.host = self._rewrite.host
        except PathEscapesPrefix as e:
            self._log.warn(
                "refused websocket {path}: path escapes the local prefix {prefix}",
                path=e.path[:300], prefix=self._prefix + "/")
            self._answer(stream_id, False, ESCAPES_PREFIX)
            return
        except Exception as e:
            self._answer(stream_id, False, "bad websocket request: {}".format(e))
            return
        factory.manager = self
        factory.stream_id = stream_id
        factory.setProtocolOptions(
            maxFramePayloadSize=self.max_message_size,
            maxMessagePayloadSize=self.max_message_size,
            openHandshakeTimeout=self.timeout,
            failByDrop=False,
            echoCloseCodeReason=True,
        )
        endpoint = self._endpoint
        if endpoint is None:
            tls = None
            if self._secure:
                tls = self._tls.creator(self._host)
            endpoint = client_endpoint(self._reactor, self._host, self._port, tls,
                                       timeout=self.timeout)
        d = endpoint.connect(factory)
        self.streams[stream_id] = d

        def not_connected(f):
            if self.streams.get(stream_id) is d:
                del self.streams[stream_id]
                self._answer(stream_id, False, "cannot reach the local service: {}"
                             .format(f.getErrorMessage()))
            return None

        d.addErrback(not_connected)

    def deliver(self, message):
        """
        A ws-message from the visitor.
        """
        local = self.streams.get(message.id)
        if isinstance(local, LocalWebSocket):
            local.deliver(message)

    def teardown(self, message):
        """
        The visitor closed its websocket.
        """
        local = self.streams.pop(message.id, None)
        if local is None:
            return
        if isinstance(local, LocalWebSocket):
            local.close_from_tunnel(message.code or 1000, message.reason)
        else:
            local.cancel()  # still connecting

    def close_all(self):
        """
        The tunnel connection is gone: close every local websocket (1001).
        """
        streams, self.streams = self.streams, {}
        self._streamed = {}
        for local in streams.values():
            if isinstance(local, LocalWebSocket):
                local.close_from_tunnel(CLOSE_GOING_AWAY, "tunnel closed")
            else:
                local.cancel()

    # -- from the local websockets -----------------------------------------

    def local_opened(self, stream_id, local):
        if stream_id not in self.streams:
            # The visitor gave up while we were connecting.
            local.close_from_tunnel(CLOSE_GOING_AWAY, "visitor gone")
            return
        self.streams[stream_id] = local
        if self._backpressure is not None:
            self._backpressure.add(local)
        chosen = local.chosen_protocol if WS_SUBPROTOCOL in self.features else None
        self._answer(stream_id, True, protocol=chosen or None)

    def local_failed(self, stream_id, reason):
        if self.streams.pop(stream_id, None) is not None:
            self._answer(stream_id, False, "the local service refused the "
                         "websocket: {}".format(reason))

    def local_tls_refused(self, stream_id, why):
        """
        The local service's certificate was refused: the visitor is told
        why (a 502), the operator too.
        """
        self._log.error("TLS verification of the local service failed for a "
                        "websocket: {error} (verified against {trust})",
                        error=why, trust=self._tls.describe())
        if self.streams.pop(stream_id, None) is not None:
            self._answer(stream_id, False, LOCAL_TLS_REFUSED + self._tls.explain(why))

    def local_message(self, stream_id, payload, is_binary):
        stream = self._streamed.get(stream_id)
        if stream is not None:
            if not stream.closed:
                stream.write_ws(payload, not is_binary)
            return
        self._send(WSMessage.from_payload(
            stream_id, payload, is_binary, BINARY_WS in self.features))

    def forget_backpressure(self, local):
        if self._backpressure is not None:
            self._backpressure.discard(local)

    def local_closed(self, stream_id, local, code, reason):
        if self.streams.get(stream_id) is not local:
            return
        del self.streams[stream_id]
        stream = self._streamed.pop(stream_id, None)
        if stream is not None:
            stream.close_ws(code if code is not None and 1000 <= code <= 4999 else None,
                            reason or "")
            return
        if WS_CLOSE in self.features and code is not None and 1000 <= code <= 4999:
            self._send(WSTeardown(id=stream_id, code=code, reason=reason or ""))
        else:
            self._send(WSTeardown(id=stream_id))

    def _answer(self, stream_id, ok, error="", protocol=None):
        stream = self._streamed.get(stream_id)
        if stream is not None:
            if not ok:
                del self._streamed[stream_id]
            if not stream.closed:
                stream.send_head({"ok": ok, "error": error, "protocol": protocol},
                                 fin=not ok)
            return
        self._send(WSResponse(id=stream_id, ok=ok, error=error, protocol=protocol))

    def open_count(self):
        """
        How many local websockets are open (not those still connecting).
        """
        return sum(1 for local in self.streams.values()
                   if isinstance(local, LocalWebSocket))

    def opened(self, stream_id):
        """
        The open L{LocalWebSocket} of C{stream_id}, or L{None} (not open yet,
        or gone).
        """
        local = self.streams.get(stream_id)
        return local if isinstance(local, LocalWebSocket) else None

    def local_drained(self, stream_id):
        """
        The local service reads again: grant a streamed websocket's credit.
        """
        stream = self._streamed.get(stream_id)
        if stream is not None and stream.handler is not None:
            stream.handler.drained()

    def visitor_closed(self, stream_id, code, reason):
        """
        A streamed websocket's visitor closed (or its stream was reset).
        """
        stream = self._streamed.pop(stream_id, None)
        if stream is not None and not stream.closed:
            # Answer the close (as a websocket endpoint does), so the
            # stream ends on both sides and neither keeps it.
            stream.close_ws(code if code is not None and 1000 <= code <= 4999 else None,
                            reason or "")
        local = self.streams.pop(stream_id, None)
        if isinstance(local, LocalWebSocket):
            local.close_from_tunnel(code or 1000, reason)
        elif local is not None:
            local.cancel()  # still connecting
