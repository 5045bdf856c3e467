"""
Fixtures for end-to-end websocket tests: a real local websocket service with
a few routes, a real visitor websocket client, a raw upgrade client that
reads the HTTP answer to a refused handshake (status, headers and body), and
a raw tunnel client on C{/proxy/subscribe} that sends whatever a test says.

Everything listens and connects on 127.0.0.1 with the global reactor; every
fixture registers cleanups that wait until its sockets are closed (see
L{tests.support.close_connections}).
"""

import base64
import os
from urllib.parse import urlsplit

import attr
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol

from brickchain_proxy.messages import RegistrationRequest, decode, encode
from tests.support import close_connections, track_connections, wait_until


class _Event:
    """
    A result that many may wait for: each L{wait} is a fresh L{Deferred}, so
    one waiter never changes what the next one sees, and a failure nobody
    waits for is never reported as unhandled.
    """

    def __init__(self):
        self._waiters = []
        self._result = None
        self.fired = False

    def fire(self, result):
        if self.fired:
            return
        self.fired, self._result = True, result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._deliver(d)

    def wait(self):
        d = defer.Deferred(lambda d: self._waiters.remove(d))
        if self.fired:
            self._deliver(d)
        else:
            self._waiters.append(d)
        return d

    def _deliver(self, d):
        if isinstance(self._result, Exception):
            d.errback(self._result)
        else:
            d.callback(self._result)


# -- the local websocket service ----------------------------------------------


@attr.s
class LocalConnection:
    """
    One websocket handshake the local service received.

    @ivar route: the first path segment (C{"echo"}, C{"record"}, ...).
    @ivar uri: the request target exactly as it arrived (path and query).
    @ivar headers: the handshake's headers, names in lower case.
    @ivar offered: the subprotocols the handshake offered.
    @ivar chosen: the subprotocol the service chose, or L{None}.
    @ivar messages: C{(payload, is_binary)} for every message received.
    @ivar close: C{(code, reason)} once the websocket has closed, or L{None}.
    """

    route = attr.ib()
    uri = attr.ib()
    headers = attr.ib()
    offered = attr.ib()
    chosen = attr.ib(default=None)
    messages = attr.ib(factory=list)
    close = attr.ib(default=None)
    protocol = attr.ib(default=None, repr=False)
    _closed = attr.ib(factory=_Event, repr=False)

    @property
    def closed(self):
        """
        A L{Deferred} firing with C{(code, reason)} when the websocket closes.
        """
        return self._closed.wait()


class _LocalServiceProtocol(WebSocketServerProtocol):
    """
    Routes (first path segment):

      - C{/echo}: sends every message back as it came (text or binary);
      - C{/record}: only records; picks C{superchat} when offered;
      - C{/close/<code>}: on the first message, closes with C{<code>} and
        reason C{"bye <code>"};
      - C{/refuse}: refuses the handshake with 403;
      - C{/big/<n>}: answers every message with C{n} binary bytes;
      - C{/greet}: sends C{"hello"} the moment it opens;
      - C{/hold}: the handshake completes only when the test calls
        L{LocalWebSocketService.release};
      - C{/flood/<n>}: on open, sends C{n} binary messages of
        L{FLOOD_CHUNK} bytes each.
    """

    record = None

    def onConnect(self, request):
        service = self.factory.service
        parts = request.path.split("/")
        self.route = parts[1] if len(parts) > 1 else ""
        self.argument = parts[2] if len(parts) > 2 else ""
        record = LocalConnection(
            route=self.route,
            uri=self.http_request_uri,
            headers=dict(request.headers),
            offered=list(request.protocols),
            protocol=self,
        )
        self.record = record
        service.connections.append(record)
        if self.route == "refuse":
            raise ConnectionDeny(403, "no websockets here")
        if self.route == "record" and "superchat" in request.protocols:
            record.chosen = "superchat"
            return "superchat"
        if self.route == "hold":
            held = defer.Deferred()
            service.held.append(held)
            return held
        return None

    def onOpen(self):
        if self.route == "greet":
            self.sendMessage(b"hello")
        elif self.route == "flood":
            chunk = b"\x00" * FLOOD_CHUNK
            for _ in range(int(self.argument)):
                self.sendMessage(chunk, isBinary=True)

    def onMessage(self, payload, isBinary):
        self.record.messages.append((payload, isBinary))
        if self.route == "echo":
            self.sendMessage(payload, isBinary)
        elif self.route == "big":
            self.sendMessage(b"b" * int(self.argument), isBinary=True)
        elif self.route == "close" and self.state == self.STATE_OPEN:
            code = int(self.argument)
            self.sendClose(code, "bye {}".format(code))

    def onClose(self, wasClean, code, reason):
        if self.record is not None and self.record.close is None:
            self.record.close = (code, reason)
            self.record._closed.fire((code, reason))


#: Size of each message C{/flood/<n>} sends.
FLOOD_CHUNK = 256 * 1024


class LocalWebSocketService:
    """
    The local websocket service behind the tunnel (see
    L{_LocalServiceProtocol} for its routes).

    @ivar connections: a L{LocalConnection} per handshake, in arrival order.
    @ivar held: the pending handshakes of C{/hold}, as L{Deferred}s.
    @ivar url: C{http://127.0.0.1:<port>} once started.
    """

    def __init__(self):
        self.connections = []
        self.held = []
        self.url = None
        self.port = None

    def start(self, testcase, tls=None):
        """
        Listen on 127.0.0.1 on a free port until the end of the test.

        @param tls: server TLS options (a C{CertificateOptions}) to serve
            wss with, or L{None} for plain ws.
        @return: the base URL, C{http://127.0.0.1:<port>} (C{https://}
            with C{tls}).
        """
        factory = WebSocketServerFactory(reactor=reactor)
        factory.protocol = _LocalServiceProtocol
        factory.service = self
        factory.setProtocolOptions(openHandshakeTimeout=0)
        transports = track_connections(factory)
        if tls is None:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=1024)
        else:
            port = reactor.listenSSL(0, factory, tls, interface="127.0.0.1")
        testcase.addCleanup(self._stop, port, transports)
        self.port = port.getHost().port
        self.url = "{}://127.0.0.1:{}".format("http" if tls is None else "https",
                                              self.port)
        return self.url

    def ws_url(self, path):
        """
        The URL of C{path} on this service, for connecting to it directly.
        """
        return "ws://127.0.0.1:{}{}".format(self.port, path)

    def on(self, route):
        """
        The connections made to C{route}.
        """
        return [c for c in self.connections if c.route == route]

    def open_connections(self):
        """
        The connections that have not closed yet.
        """
        return [c for c in self.connections if c.close is None]

    def release(self):
        """
        Let every held C{/hold} handshake complete.
        """
        held, self.held = self.held, []
        for d in held:
            d.callback(None)

    @defer.inlineCallbacks
    def _stop(self, port, transports):
        yield port.stopListening()
        yield close_connections(transports)


# -- the visitor ---------------------------------------------------------------


class HandshakeFailed(Exception):
    """
    The visitor's websocket handshake did not complete.

    @ivar status: the HTTP status the server answered, or L{None}.
    """

    def __init__(self, status, reason):
        Exception.__init__(self, status, reason)
        self.status = status
        self.reason = reason


class VisitorClient(WebSocketClientProtocol):
    """
    A visitor's websocket.

    @ivar messages: a L{DeferredQueue} of C{(payload, is_binary)}.
    @ivar status: the HTTP status of a failed handshake, or L{None}.
    @ivar close: C{(code, reason)} once closed, or L{None}.
    """

    status = None
    close = None

    def __init__(self):
        WebSocketClientProtocol.__init__(self)
        self.messages = defer.DeferredQueue()
        self._opened = _Event()
        self._closed = _Event()

    @property
    def opened(self):
        """
        A L{Deferred} firing with this protocol once the handshake
        completed, or failing with L{HandshakeFailed}.
        """
        return self._opened.wait()

    @property
    def closed(self):
        """
        A L{Deferred} firing with C{(code, reason)} once closed.
        """
        return self._closed.wait()

    @property
    def chosen_protocol(self):
        """
        The subprotocol the handshake completed with.
        """
        return self.websocket_protocol_in_use

    def onOpen(self):
        self._opened.fire(self)

    def onMessage(self, payload, isBinary):
        self.messages.put((payload, isBinary))

    def onClose(self, wasClean, code, reason):
        if not self._opened.fired:
            line = getattr(self, "http_status_line", None)
            if line:
                parts = line.split()
                if len(parts) > 1 and parts[1].isdigit():
                    self.status = int(parts[1])
            self._opened.fire(HandshakeFailed(self.status, reason))
        self.close = (code, reason)
        self._closed.fire((code, reason))

    async def echo(self, payload, is_binary=False):
        """
        Send one message and wait for the next message back.
        """
        self.sendMessage(payload, is_binary)
        return await self.messages.get()


def open_visitor(testcase, url, protocols=None, headers=None, origin=None,
                 port=None):
    """
    Connect a visitor websocket to C{url} on 127.0.0.1 (at C{port}, default
    the URL's port: the URL's host only goes into the Host header, so
    C{ws://<clientID>.localhost:<port>/...} uses host routing).  Closes it
    at the end of the test.

    @return: a L{Deferred} firing with the L{VisitorClient} once connected
        (wait on its C{opened} for the handshake).
    """
    factory = WebSocketClientFactory(
        url, protocols=protocols or [], headers=headers or {}, origin=origin,
        reactor=reactor,
    )
    factory.protocol = VisitorClient
    factory.setProtocolOptions(openHandshakeTimeout=30, closeHandshakeTimeout=5)
    transports = track_connections(factory)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port or urlsplit(url).port)
    d = endpoint.connect(factory)

    def connected(protocol):
        testcase.addCleanup(_close_visitor, protocol, transports)
        return protocol

    return d.addCallback(connected)


async def connect_visitor(testcase, url, **kwargs):
    """
    L{open_visitor} and wait for the handshake to complete.
    """
    protocol = await open_visitor(testcase, url, **kwargs)
    return await protocol.opened


@defer.inlineCallbacks
def _close_visitor(protocol, transports):
    if protocol.state == protocol.STATE_OPEN:
        protocol.sendClose(1000)
    yield close_connections(transports, strict=False)


# -- a raw upgrade request -------------------------------------------------------


@attr.s
class RawResponse:
    """
    The HTTP answer to an upgrade request.

    @ivar headers: header name (lower case) -> list of values.
    """

    status = attr.ib()
    headers = attr.ib()
    body = attr.ib()

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")


class _RawUpgrade(Protocol):
    def __init__(self, request, finished):
        self._request = request
        self._finished = finished
        self._buffer = b""
        self._head = None
        self._length = None

    def connectionMade(self):
        self.transport.write(self._request)

    def dataReceived(self, data):
        self._buffer += data
        if self._head is None:
            head, sep, rest = self._buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self._head, self._buffer = head, rest
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            self.headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                self.headers.setdefault(name.strip().lower(), []).append(value.strip())
            if self.status == 101:
                self.transport.loseConnection()
                return
            if "content-length" in self.headers:
                self._length = int(self.headers["content-length"][0])
        if self._length is not None and len(self._buffer) >= self._length:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if self._head is None:
            self._finished.errback(reason)
        else:
            self._finished.callback(
                RawResponse(self.status, self.headers, self._buffer))


def raw_upgrade(port, path, host="127.0.0.1", headers=()):
    """
    Send a websocket upgrade request for C{path} to 127.0.0.1:C{port} with
    Host C{host}, and read the answer's status line, headers and body.

    @param headers: extra C{(name, value)} pairs.
    @return: a L{Deferred} firing with a L{RawResponse} once the connection
        is closed.
    """
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    lines = [
        "GET {} HTTP/1.1".format(path),
        "Host: {}".format(host),
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: {}".format(key),
        "Sec-WebSocket-Version: 13",
    ]
    lines += ["{}: {}".format(name, value) for name, value in headers]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    finished = defer.Deferred()
    factory = Factory.forProtocol(lambda: _RawUpgrade(request, finished))
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    connecting = endpoint.connect(factory)
    connecting.addErrback(finished.errback)
    return finished


# -- a raw tunnel client ------------------------------------------------------


class RawTunnelClient(WebSocketClientProtocol):
    """
    A bare websocket client on C{/proxy/subscribe}: sends what the test says
    and records what the proxy sends.

    @ivar messages: every message payload received, in order.
    @ivar close_code: the close code the proxy sent, or L{None}.
    @ivar opened: whether the handshake completed and it is still open.
    @ivar gone: whether the connection is closed.
    """

    opened = False
    gone = False
    close_code = None
    close_reason = None

    def __init__(self):
        WebSocketClientProtocol.__init__(self)
        self.messages = []

    def onOpen(self):
        self.opened = True

    def onMessage(self, payload, isBinary):
        self.messages.append(payload)

    def onClose(self, wasClean, code, reason):
        self.opened = False
        self.gone = True
        self.close_code = self.remoteCloseCode
        self.close_reason = self.remoteCloseReason
        # Autobahn may leave this timer behind when the proxy drops TCP
        # first; nothing is waiting for it any more.
        call = getattr(self, "closeHandshakeTimeoutCall", None)
        if call is not None and call.active():
            call.cancel()
        self.closeHandshakeTimeoutCall = None

    def register(self, key, proxy_url, session=None, features=None):
        """
        Send a registration-request signed by C{key} for C{proxy_url}.

        @return: the mandate token sent.
        """
        token = key.sign_mandate_token(proxy_url)
        self.send(RegistrationRequest(mandate_token=token, session=session,
                                      features=features))
        return token

    def send(self, message):
        """
        Send a message (encoded unless it is bytes already).
        """
        if not isinstance(message, bytes):
            message = encode(message)
        self.sendMessage(message, isBinary=False)

    def decoded(self):
        """
        The messages received, decoded.
        """
        return [decode(m) for m in self.messages]


async def connect_raw_tunnel(testcase, port):
    """
    Open a L{RawTunnelClient} to C{ws://127.0.0.1:<port>/proxy/subscribe}
    and wait for its handshake; close it at the end of the test.
    """
    factory = WebSocketClientFactory(
        "ws://127.0.0.1:{}/proxy/subscribe".format(port), reactor=reactor)
    factory.protocol = RawTunnelClient
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=5)
    transports = track_connections(factory)
    protocol = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    testcase.addCleanup(_close_raw, protocol, transports)
    await wait_until(lambda: protocol.opened or protocol.gone,
                     what="raw tunnel handshake")
    testcase.assertTrue(protocol.opened, "raw tunnel handshake failed")
    return protocol


@defer.inlineCallbacks
def _close_raw(protocol, transports):
    if protocol.state == protocol.STATE_OPEN:
        protocol.sendClose(1000)
    yield close_connections(transports, strict=False)


__all__ = [
    "LocalConnection", "LocalWebSocketService", "FLOOD_CHUNK", "HandshakeFailed",
    "VisitorClient", "open_visitor", "connect_visitor", "RawResponse",
    "raw_upgrade", "RawTunnelClient", "connect_raw_tunnel", "wait_until",
]
