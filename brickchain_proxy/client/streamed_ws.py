"""
The client's side of a websocket on a stream (the negotiated C{streams}
feature): the local websocket is opened and driven by L{local_ws}, as for a
ws-request; this is its stream's handler -- messages from the visitor as WS
frames, flow-controlled (no credit while the local service is not
reading), a close as WS_CLOSE with its code.
"""

from zope.interface import implementer

from ..errors import CLOSE_GOING_AWAY
from ..streams.session import IStreamHandler


class StreamHead:
    """
    A streamed websocket's head, shaped as a ws-request for
    L{LocalWebSockets.open}.
    """

    def __init__(self, id, url, query, headers):
        self.id = id
        self.url = url
        self.query = query
        self.headers = headers


@implementer(IStreamHandler)
class StreamedLocal:
    """
    The stream of one local websocket.
    """

    def __init__(self, manager, stream):
        self._manager = manager
        self._stream = stream
        self._uncredited = 0

    def ws_received(self, payload, is_text):
        local = self._manager.opened(self._stream.id)
        if local is None:
            return  # not open yet: the proxy waits for the answer first
        local.deliver_payload(payload, not is_text)
        if local.backed_up:
            self._uncredited += len(payload)
        else:
            self._stream.consumed(len(payload))

    def drained(self):
        credit, self._uncredited = self._uncredited, 0
        if credit:
            self._stream.consumed(credit)

    def ws_closed(self, code, reason):
        self._manager.visitor_closed(self._stream.id, code, reason)

    def reset_received(self, reason):
        self._manager.visitor_closed(self._stream.id, CLOSE_GOING_AWAY, reason)

    def head_received(self, head, fin):
        self._stream.reset("a second head")

    def data_received(self, data):
        self._stream.reset("body bytes on a websocket stream")

    def end_received(self):
        pass

    def write_paused(self):
        local = self._manager.opened(self._stream.id)
        if local is not None and local.transport is not None:
            local.transport.pauseProducing()

    def write_resumed(self):
        local = self._manager.opened(self._stream.id)
        if local is not None and local.transport is not None:
            local.transport.resumeProducing()
