"""
The streams of one tunnel connection: the stream table, per-stream
credit-based flow control, and reset.

Each side of a stream may send at most the other side's *window* of body
bytes (DATA and WS payloads) it has not yet been granted back; the receiver
grants bytes back (WINDOW_UPDATE) once it has passed them on, so a slow
consumer holds at most one window of memory on either side.  A writer that
runs out of window is told to pause (L{IStreamHandler.write_paused}) and to
resume when credit comes back.  Bodies are cut into frames of at most
C{max_frame} bytes, so streams interleave on the connection.
"""

from collections import deque

from twisted.logger import Logger
from zope.interface import Interface

from . import frames
from .frames import DATA, FIN, HEAD, MORE, RESET, SYN, TEXT, WINDOW_UPDATE, WS, WS_CLOSE

INITIAL_WINDOW = 256 * 1024
MAX_FRAME = 64 * 1024

#: The reason every stream is reset with when the connection goes.
CONNECTION_LOST = "the tunnel's connection was lost"


class IStreamHandler(Interface):
    """
    What one end of a stream is told about the other.
    """

    def head_received(head, fin):
        """
        The other side's head (a dict); C{fin}: no body follows.
        """

    def data_received(data):
        """
        Body bytes; call L{Stream.consumed} once they are passed on.
        """

    def ws_received(payload, is_text):
        """
        One whole websocket message; call L{Stream.consumed} with its size
        once it is passed on.
        """

    def end_received():
        """
        The other side has sent everything (FIN).
        """

    def ws_closed(code, reason):
        """
        The other side's websocket closed with C{code} (L{None}: no code)
        and C{reason}; it sends nothing more.
        """

    def reset_received(reason):
        """
        The stream was aborted, by the other side or by the connection
        going away; nothing more happens on it.
        """

    def write_paused():
        """
        The other side's window is used up: stop producing.
        """

    def write_resumed():
        """
        Credit came back: produce again.
        """


class StreamError(Exception):
    """
    A stream was used after it ended.
    """


class Stream:
    """
    One stream of a L{StreamSession}.
    """

    def __init__(self, session, stream_id, handler, window):
        self.session = session
        self.id = stream_id
        self.handler = handler
        self._send_window = window  # what we may still send
        self._recv_window = window  # what the other side may still send
        self._unacked = 0  # consumed, not yet granted back
        self._queue = deque()  # frames waiting for window
        self._paused = False
        self.sent_fin = False
        self.received_fin = False
        self.closed = False
        self._ws_parts = []
        self._ws_size = 0
        self._pregranted = 0  # credit given for parts of a message not yet whole

    # -- sending -------------------------------------------------------------

    def send_head(self, head, fin=False, syn=False):
        """
        Send this side's head (a JSON-able dict); with C{fin}, no body.
        """
        flags = (SYN if syn else 0) | (FIN if fin else 0)
        self._check_open()
        self.session._send(frames.encode_head(self.id, head, flags))
        if fin:
            self.sent_fin = True
            self.session._maybe_forget(self)

    def write(self, data, fin=False):
        """
        Send body bytes, in frames of at most C{max_frame}, as the window
        allows; the rest waits (and the handler is told to pause).

        @param fin: these are the last bytes: the last frame carries FIN.
        """
        self._check_open()
        size = self.session.max_frame
        last = len(data) - size
        if fin:
            if self.sent_fin:
                raise StreamError("stream {} already finished".format(self.id))
            self.sent_fin = True
        for start in range(0, len(data), size):
            flags = FIN if fin and start >= last else 0
            self._send_or_queue(DATA, flags, data[start:start + size])
        if fin and not data:
            self._send_or_queue(DATA, FIN, b"")
        if fin and not self._queue:
            self.session._maybe_forget(self)

    def write_ws(self, payload, is_text):
        """
        Send one websocket message (cut into frames if large).
        """
        self._check_open()
        size = self.session.max_frame
        text = TEXT if is_text else 0
        if not payload:
            self._send_or_queue(WS, text, b"")
            return
        for start in range(0, len(payload), size):
            more = MORE if start + size < len(payload) else 0
            self._send_or_queue(WS, text | more, payload[start:start + size])

    def close_ws(self, code=None, reason=""):
        """
        This side's websocket closed: send WS_CLOSE (after what is queued);
        nothing more is sent.
        """
        if self.closed or self.sent_fin:
            return
        self.sent_fin = True
        frame = frames.encode_close(self.id, code, reason)
        if self._queue:
            self._queue.append((WS_CLOSE, FIN, frame[frames.HEADER_SIZE:]))
        else:
            self.session._send(frame)
            self.session._maybe_forget(self)

    def finish(self):
        """
        Send FIN after whatever is queued: this side is done.
        """
        if self.closed or self.sent_fin:
            return
        self.sent_fin = True
        if self._queue:
            self._queue.append((DATA, FIN, b""))
        else:
            self.session._send(frames.encode(DATA, FIN, self.id))
            self.session._maybe_forget(self)

    def reset(self, reason=""):
        """
        Abort the stream: the other side gets RESET with C{reason}; nothing
        more is sent or delivered.
        """
        if self.closed:
            return
        self.session._send(frames.encode(RESET, 0, self.id, reason.encode("utf-8")[:500]))
        self._close()

    def _send_or_queue(self, kind, flags, chunk):
        if self._queue or len(chunk) > self._send_window:
            self._queue.append((kind, flags, chunk))
            if not self._paused:
                self._paused = True
                self.handler.write_paused()
            return
        self._send_window -= len(chunk)
        self.session._send(frames.encode(kind, flags, self.id, chunk))

    def _credit(self, increment):
        self._send_window += increment
        queue = self._queue
        while queue:
            kind, flags, chunk = queue[0]
            if len(chunk) > self._send_window:
                return
            queue.popleft()
            self._send_window -= len(chunk)
            self.session._send(frames.encode(kind, flags, self.id, chunk))
            if flags & FIN:
                self.session._maybe_forget(self)
                return
        if self._paused and not self.closed:
            self._paused = False
            self.handler.write_resumed()

    @property
    def queued(self):
        """
        Bytes waiting for window.
        """
        return sum(len(chunk) for _, _, chunk in self._queue)

    # -- receiving -----------------------------------------------------------

    def consumed(self, size):
        """
        C{size} bytes received on this stream have been passed on: grant
        them back (in batches of a quarter window).
        """
        pregranted = min(self._pregranted, size)
        self._pregranted -= pregranted
        self._grant(size - pregranted)

    def _grant(self, size):
        if self.closed or size <= 0 or self.received_fin:
            return  # nothing more will come: no credit needed
        self._unacked += size
        if self._unacked >= self.session.window // 4:
            increment, self._unacked = self._unacked, 0
            self._recv_window += increment
            self.session._send(frames.window_update(self.id, increment))

    def _received(self, kind, flags, payload):
        if kind == RESET:
            self._close()
            self.handler.reset_received(bytes(payload).decode("utf-8", "replace"))
            return
        if self.received_fin:
            self.session._violation(self, "frame after FIN")
            return
        if kind == HEAD:
            try:
                head = frames.decode_head(payload)
            except frames.FrameError as e:
                self.session._violation(self, str(e))
                return
            fin = bool(flags & FIN)
            if fin:
                self.received_fin = True
            self.handler.head_received(head, fin)
            if fin:
                self.session._maybe_forget(self)
            return
        if kind == WS_CLOSE:
            try:
                code, reason = frames.decode_close(payload)
            except frames.FrameError as e:
                self.session._violation(self, str(e))
                return
            self.received_fin = True
            self.handler.ws_closed(code, reason)
            self.session._maybe_forget(self)
            return
        size = len(payload)
        self._recv_window -= size
        if self._recv_window < 0:
            self.session._violation(self, "more data than the window allows")
            return
        if kind == DATA:
            if size:
                self.handler.data_received(bytes(payload))
            if flags & FIN and not self.closed:
                self.received_fin = True
                self.handler.end_received()
                self.session._maybe_forget(self)
            return
        # WS
        self._ws_parts.append(bytes(payload))
        self._ws_size += size
        if self._ws_size > self.session.max_ws_message:
            self.session._violation(self, "websocket message over the limit")
            return
        if flags & MORE:
            # A message larger than the window must not stall: its parts
            # are held here (bounded by max_ws_message), so grant them now.
            self._grant(size)
            self._pregranted += size
        else:
            message = b"".join(self._ws_parts)
            self._ws_parts = []
            self._ws_size = 0
            self.handler.ws_received(message, bool(flags & TEXT))
        if flags & FIN and not self.closed:
            self.received_fin = True
            self.handler.end_received()
            self.session._maybe_forget(self)

    def _check_open(self):
        if self.closed:
            raise StreamError("stream {} is closed".format(self.id))

    def _close(self):
        self.closed = True
        self._queue.clear()
        self.session._forget(self)

    def _connection_lost(self, reason):
        self.closed = True
        self._queue.clear()
        if self.handler is not None:
            self.handler.reset_received(reason)


class StreamSession:
    """
    The streams multiplexed on one tunnel connection.

    @param send: called with each frame's bytes (one binary websocket
        message).
    @param accept: called with C{(stream, head)} when the other side opens
        a stream; returns the stream's L{IStreamHandler}, or L{None} to
        refuse it (it is reset).
    @param allocate_id: returns the id of each stream this side opens
        (default: 1, 2, 3, ... for this session alone); sessions that must
        never reuse each other's ids share one (L{StreamIds}).
    @param on_forget: called with the id of each stream the session
        forgets (it ended, was reset, or the connection went).
    """

    _log = Logger()

    def __init__(self, send, accept=None, window=INITIAL_WINDOW,
                 max_frame=MAX_FRAME, max_ws_message=16 * 1024 * 1024,
                 allocate_id=None, on_forget=None):
        self._send = send
        self._accept = accept
        self.window = window
        self.max_frame = max_frame
        self.max_ws_message = max_ws_message
        self.streams = {}
        self._allocate_id = allocate_id if allocate_id is not None else StreamIds()
        self._on_forget = on_forget
        self.closed = False

    def __len__(self):
        return len(self.streams)

    def open(self, handler, head, fin=False):
        """
        Open a stream and send its C{head}; with C{fin}, no body follows.

        @return: the L{Stream}.
        """
        stream = Stream(self, self._free_id(), handler, self.window)
        self.streams[stream.id] = stream
        stream.send_head(head, fin=fin, syn=True)
        return stream

    def relay(self, make):
        """
        Reserve a stream id for a stream whose frames this side relays from
        elsewhere: C{make(session, stream_id)} returns the object that gets
        its frames from the other side (as a L{Stream} would:
        C{_received(kind, flags, payload)}, C{_credit(increment)} and
        C{_connection_lost(reason)}; L{Stream.closed}).  The relayer sends
        with L{send_frame} and ends it with L{forget_relay}.

        @return: what C{make} returned.
        """
        relayed = make(self, self._free_id())
        self.streams[relayed.id] = relayed
        return relayed

    def send_frame(self, frame):
        """
        Send one frame's bytes as they are (a relayed stream's).
        """
        self._send(frame)

    def forget_relay(self, relayed):
        """
        A relayed stream is over.
        """
        self._forget(relayed)

    def _free_id(self):
        # Ids wrap after 2**32 - 1 streams; skip one still in use.
        while True:
            stream_id = self._allocate_id()
            if stream_id not in self.streams:
                return stream_id

    def received(self, data):
        """
        One binary websocket message from the other side.

        @raise frames.FrameError: it is not a frame (the connection is
            broken; the caller closes it).
        """
        kind, flags, stream_id, length, payload = frames.decode(data)
        stream = self.streams.get(stream_id)
        if stream is None:
            if kind == HEAD and flags & SYN and self._accept is not None:
                self._open_from_peer(stream_id, flags, payload)
            elif kind != RESET and kind != WINDOW_UPDATE:
                # A stream we already forgot (reset, or done): tell the
                # other side to stop.
                self._send(frames.encode(RESET, 0, stream_id, b"unknown stream"))
            return
        if kind == WINDOW_UPDATE:
            stream._credit(length)
            return
        stream._received(kind, flags, payload)

    def _open_from_peer(self, stream_id, flags, payload):
        try:
            head = frames.decode_head(payload)
        except frames.FrameError as e:
            self._send(frames.encode(RESET, 0, stream_id, str(e).encode("utf-8")))
            return
        stream = Stream(self, stream_id, None, self.window)
        self.streams[stream_id] = stream
        if flags & FIN:
            stream.received_fin = True
        handler = self._accept(stream, head)
        if handler is None:
            if not stream.closed:
                stream.reset("refused")
            return
        stream.handler = handler

    def connection_lost(self, reason):
        """
        The tunnel connection is gone: every stream is reset.
        """
        self.closed = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if self._on_forget is not None:
                self._on_forget(stream.id)
            stream._connection_lost(reason)

    def _violation(self, stream, what):
        self._log.warn("stream {id}: {what}; resetting it", id=stream.id, what=what)
        stream.reset(what)
        if stream.handler is not None:
            stream.handler.reset_received(what)

    def _maybe_forget(self, stream):
        if stream.sent_fin and stream.received_fin and not stream._queue:
            stream.closed = True
            self._forget(stream)

    def _forget(self, stream):
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
            if self._on_forget is not None:
                self._on_forget(stream.id)


class StreamIds:
    """
    The ids of the streams one side opens: 1, 2, 3, ... up to 2**32 - 1,
    then 1 again.
    """

    def __init__(self):
        self._next = 1

    def __call__(self):
        stream_id = self._next
        self._next = stream_id + 1 if stream_id < frames.MAX_STREAM_ID else 1
        return stream_id
