"""
Small helpers for Autobahn websocket protocols shared by proxy and client.
"""

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.web.resource import IResource
from zope.interface import implementer

from .compat import hand_over_connection
from .errors import CLOSE_INVALID_PAYLOAD

#: Close codes that may not be sent in a close frame (RFC 6455 7.4.1).
_UNSENDABLE = frozenset([1005, 1006, 1015])


def close_websocket(protocol, code=1000, reason=""):
    """
    Start the closing handshake with any valid close code.

    Autobahn's C{sendClose} only allows 1000 and 3000-4999; a proxy must
    relay 1001, 1008, 1009, 1011 and friends too.  Code 1006 (abnormal
    closure) cannot be sent: the connection is dropped instead, which is
    what the other side would have seen.  Safe to call in any state.
    """
    state = protocol.state
    if state == WebSocketProtocol.STATE_OPEN:
        if code == 1006 or code == 1015:
            protocol.dropConnection(abort=True)
            return
        if code is None or code in _UNSENDABLE:
            protocol.sendCloseFrame(isReply=False)
            return
        payload = None
        if reason:
            payload = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
        protocol.sendCloseFrame(code=code, reasonUtf8=payload, isReply=False)
    elif state in (WebSocketProtocol.STATE_CONNECTING,
                   WebSocketProtocol.STATE_PROXY_CONNECTING):
        protocol.dropConnection(abort=True)


def fail_if_invalid_text(protocol, payload, is_binary):
    """
    Tunnel connections skip Autobahn's UTF-8 validation (orjson validates
    every message it decodes); a message that did not decode is checked
    here, and a text message that is not UTF-8 fails the connection with
    1007 as RFC 6455 requires.

    @return: L{True} if the connection was failed.
    """
    if is_binary:
        return False
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        close_websocket(protocol, CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in a text message")
        return True
    return False


class CleanClose:
    """
    Mixin for Autobahn server protocols: once the closing handshake is
    complete, close the TCP connection normally.  Autobahn aborts it
    (C{abortConnection}, a TCP reset) when the peer answers our close
    frame, and browsers then report the close as unclean
    (C{CloseEvent.wasClean} false) though code and reason arrived.
    """

    def dropConnection(self, abort=False):
        if abort and self.wasClean:
            abort = False
        super().dropConnection(abort)


def is_open(protocol):
    """
    Whether C{protocol} can send messages.
    """
    return protocol.state == WebSocketProtocol.STATE_OPEN


@implementer(IResource)
class WebSocketEndpointResource:
    """
    A twisted.web leaf resource serving websockets from an Autobahn factory
    (L{compat.hand_over_connection}); plain HTTP gets 426 Upgrade Required.
    """

    isLeaf = True

    def __init__(self, factory):
        self._factory = factory

    def getChildWithDefault(self, name, request):
        return self

    def putChild(self, path, child):
        raise NotImplementedError()

    def render(self, request):
        from twisted.web.server import NOT_DONE_YET

        if request.channel.transport is None or not is_websocket_upgrade(request):
            request.setResponseCode(426)
            request.setHeader(b"Upgrade", b"websocket")
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"this is a websocket endpoint\n"
        protocol = self._factory.buildProtocol(request.transport.getPeer())
        hand_over_connection(request, protocol)
        return NOT_DONE_YET


def is_websocket_upgrade(request):
    """
    Whether a twisted.web request asks for a websocket upgrade
    (C{Upgrade: websocket} and C{Connection: upgrade}, RFC 6455 4.2.1).
    """
    upgrade = request.requestHeaders.getRawHeaders(b"upgrade")
    if not upgrade or upgrade[0].strip().lower() != b"websocket":
        return False
    connection = request.requestHeaders.getRawHeaders(b"connection") or ()
    return any(b"upgrade" in value.lower() for value in connection)


@implementer(IPushProducer)
class TunnelBackpressure:
    """
    Registered as the producer on a tunnel connection's transport: when the
    transport's buffer fills, stop reading every websocket (visitors on the
    proxy, local websockets on the client) that sends into that tunnel;
    resume them when it drains.
    """

    def __init__(self):
        self.visitors = set()
        self.paused = False

    def add(self, visitor):
        self.visitors.add(visitor)
        if self.paused:
            visitor.transport.pauseProducing()

    def discard(self, visitor):
        self.visitors.discard(visitor)

    def pauseProducing(self):
        self.paused = True
        for visitor in self.visitors:
            visitor.transport.pauseProducing()

    def resumeProducing(self):
        self.paused = False
        for visitor in self.visitors:
            visitor.transport.resumeProducing()

    def stopProducing(self):
        self.visitors.clear()


@implementer(IPushProducer)
class SendBufferWatch:
    """
    Registered as the producer on a websocket's transport only to learn when
    its send buffer is full (paused) and when it has drained (resumed), and
    to count what is sent meanwhile.

    @param limit: how many bytes may be queued for a peer that does not
        read before L{too_slow} says so.
    """

    def __init__(self, limit, on_resume=None):
        self.limit = limit
        self.backed_up = False
        self.queued = 0
        self._on_resume = on_resume

    def too_slow(self, size):
        """
        Account for C{size} more bytes about to be sent.

        @return: L{True} if the peer has stopped reading and more than
            C{limit} bytes already wait for it.
        """
        if not self.backed_up:
            self.queued = 0
            return False
        self.queued += size
        return self.queued > self.limit

    def pauseProducing(self):
        self.backed_up = True

    def resumeProducing(self):
        self.backed_up = False
        if self._on_resume is not None:
            self._on_resume()

    def stopProducing(self):
        self.backed_up = False
