"""
A visitor's websocket on a stream (the negotiated C{streams} feature): the
handshake goes to the tunnel as a HEAD (C{"kind": "ws"}), the client's
answer comes back as a HEAD (C{ok}, C{error}, C{protocol}), then every
message travels as WS frames -- raw bytes, text or binary, in order, counted
against the stream's window -- and a close as WS_CLOSE with its code.

The visitor protocol (L{visitor_ws.VisitorProtocol}) stays the websocket's
owner; this object is its stream's handler.
"""

import attr
from twisted.internet.defer import Deferred, TimeoutError
from zope.interface import implementer

from ..correlation import TunnelGone
from ..errors import RemoteFailure
from ..streams.session import CONNECTION_LOST, IStreamHandler, StreamError
from ..wsutil import close_websocket


@attr.s(slots=True, frozen=True)
class WebSocketAnswer:
    """
    The client's answer to a websocket's head, shaped like a ws-response.
    """

    ok = attr.ib()
    error = attr.ib(default="")
    protocol = attr.ib(default=None)


@implementer(IStreamHandler)
class StreamedVisitor:
    """
    The stream of one visitor websocket.

    @param protocol: the visitor's L{VisitorProtocol}.
    @param connection: the tunnel connection (it speaks streams).
    """

    def __init__(self, protocol, connection, clock, timeout):
        self._protocol = protocol
        self._connection = connection
        self._clock = clock
        self._timeout = timeout
        self._stream = None
        self._answer = None
        self._uncredited = 0

    def open(self, head):
        """
        Send the handshake's head.

        @return: a L{Deferred} firing with a L{WebSocketAnswer}, or failing
            with L{TimeoutError}, L{TunnelGone} or L{RemoteFailure};
            cancelling it resets the stream.
        """
        self._answer = Deferred(lambda d: self.reset("the visitor went away"))
        try:
            self._stream = self._connection.streams.open(self, head)
        except StreamError:
            self._answer.errback(TunnelGone("the tunnel's connection was lost"))
            return self._answer
        self._answer.addTimeout(self._timeout, self._clock,
                                onTimeoutCancel=self._timed_out)
        return self._answer

    def _timed_out(self, result, timeout):
        self.reset("no answer within the request timeout")
        raise TimeoutError("no answer within {:g} seconds".format(timeout))

    # -- from the visitor ----------------------------------------------------

    def send(self, payload, is_binary):
        """
        A message from the visitor.
        """
        if self._stream is not None and not self._stream.closed:
            self._stream.write_ws(payload, not is_binary)

    def visitor_closed(self, code, reason):
        """
        The visitor's websocket closed (with C{code}, or L{None}).
        """
        if self._stream is not None and not self._stream.closed:
            self._stream.close_ws(code if code and 1000 <= code <= 4999 else None,
                                  reason or "")

    def reset(self, reason):
        if self._stream is not None and not self._stream.closed:
            self._stream.reset(reason)

    def resumed(self):
        """
        The visitor's transport drained: grant what was withheld.
        """
        credit, self._uncredited = self._uncredited, 0
        if credit and self._stream is not None:
            self._stream.consumed(credit)

    # -- from the tunnel -----------------------------------------------------

    def head_received(self, head, fin):
        answer, self._answer = self._answer, None
        if answer is None or answer.called:
            return
        protocol = head.get("protocol")
        ok = head.get("ok") is True
        if not ok and not self._stream.closed:
            # Refused: the stream ends here too, on both sides.
            self._stream.finish()
        answer.callback(WebSocketAnswer(
            ok=ok,
            error=head.get("error") if type(head.get("error")) is str else "",
            protocol=protocol if type(protocol) is str else None))

    def ws_received(self, payload, is_text):
        protocol = self._protocol
        protocol.sendMessage(payload, not is_text)
        drain = protocol.drain
        if drain is not None and drain.backed_up:
            self._uncredited += len(payload)
        else:
            self._stream.consumed(len(payload))

    def ws_closed(self, code, reason):
        close_websocket(self._protocol, code or 1000, reason)

    def data_received(self, data):
        self.reset("body bytes on a websocket stream")

    def end_received(self):
        pass

    def reset_received(self, reason):
        answer, self._answer = self._answer, None
        if answer is not None and not answer.called:
            if reason == CONNECTION_LOST:
                answer.errback(TunnelGone(reason))
            else:
                answer.errback(RemoteFailure(reason))
            return
        self._protocol.tunnel_lost(reason if reason != CONNECTION_LOST
                                   else "the tunnel's connection was lost")

    def write_paused(self):
        transport = self._protocol.transport
        if transport is not None:
            transport.pauseProducing()

    def write_resumed(self):
        transport = self._protocol.transport
        if transport is not None:
            transport.resumeProducing()

