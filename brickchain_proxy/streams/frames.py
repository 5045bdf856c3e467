"""
The frames of the stream layer: one frame per binary websocket message on
the tunnel, a 12-byte header (as hashicorp/yamux's) and the payload::

    version  u8    0
    type     u8    DATA, WINDOW_UPDATE, HEAD, WS, RESET, WS_CLOSE
    flags    u16   SYN, FIN (and TEXT, MORE for WS)
    stream   u32   the stream id (chosen by the proxy, never 0)
    length   u32   payload bytes; for WINDOW_UPDATE the window increment

All big-endian.  The websocket message already delimits the frame, so
C{length} is checked against it.  Anything malformed raises L{FrameError}
and nothing else.
"""

import struct

import orjson

VERSION = 0

DATA = 0  # body bytes
WINDOW_UPDATE = 1  # the receiver consumed `length` more bytes
HEAD = 2  # a request or response head, JSON
WS = 3  # a websocket message (or a part of one)
RESET = 4  # the stream is aborted; payload: a reason, UTF-8
WS_CLOSE = 5  # the sender's websocket closed; payload: [u16 code, UTF-8 reason]

TYPES = frozenset([DATA, WINDOW_UPDATE, HEAD, WS, RESET, WS_CLOSE])

SYN = 0x1  # first frame of the stream (on HEAD, from the opener)
FIN = 0x2  # the sender has sent everything on this stream
TEXT = 0x4  # WS: a text message (else binary)
MORE = 0x8  # WS: the message continues in the next WS frame

_HEADER = struct.Struct(">BBHII")
HEADER_SIZE = _HEADER.size
MAX_STREAM_ID = 2 ** 32 - 1
MAX_WINDOW_INCREMENT = 2 ** 31 - 1


class FrameError(ValueError):
    """
    Bytes that are not a valid frame.
    """


def encode(kind, flags, stream_id, payload=b""):
    """
    One frame's bytes.
    """
    return _HEADER.pack(VERSION, kind, flags, stream_id, len(payload)) + payload


def window_update(stream_id, increment):
    """
    A WINDOW_UPDATE frame granting C{increment} more bytes.
    """
    return _HEADER.pack(VERSION, WINDOW_UPDATE, 0, stream_id, increment)


def encode_head(stream_id, head, flags=0):
    """
    A HEAD frame carrying C{head} (a JSON-able dict).
    """
    return encode(HEAD, flags, stream_id, orjson.dumps(head))


def decode(data):
    """
    Split one frame.

    @return: C{(kind, flags, stream_id, length, payload)}; C{payload} is a
        L{memoryview} of C{data} (no copy), empty for WINDOW_UPDATE.
    @raise FrameError: C{data} is not one valid frame.
    """
    if len(data) < HEADER_SIZE:
        raise FrameError("a frame is at least 12 bytes")
    version, kind, flags, stream_id, length = _HEADER.unpack_from(data)
    if version != VERSION:
        raise FrameError("unknown frame version {}".format(version))
    if kind not in TYPES:
        raise FrameError("unknown frame type {}".format(kind))
    if stream_id == 0:
        raise FrameError("stream 0 is reserved")
    if kind == WINDOW_UPDATE:
        if len(data) != HEADER_SIZE:
            raise FrameError("a window update has no payload")
        if not 0 < length <= MAX_WINDOW_INCREMENT:
            raise FrameError("bad window increment {}".format(length))
        return kind, flags, stream_id, length, memoryview(b"")
    if len(data) - HEADER_SIZE != length:
        raise FrameError("frame length {} but {} payload bytes".format(
            length, len(data) - HEADER_SIZE))
    return kind, flags, stream_id, length, memoryview(data)[HEADER_SIZE:]


def encode_close(stream_id, code, reason):
    """
    A WS_CLOSE frame: the websocket close C{code} (L{None}: none) and
    C{reason}.
    """
    if code is None:
        return encode(WS_CLOSE, 0, stream_id)
    return encode(WS_CLOSE, 0, stream_id,
                  struct.pack(">H", code) + reason.encode("utf-8")[:123])


def decode_close(payload):
    """
    C{(code, reason)} from a WS_CLOSE payload (C{(None, "")} when empty).

    @raise FrameError: a payload of one byte.
    """
    if not payload:
        return None, ""
    if len(payload) < 2:
        raise FrameError("a websocket close needs a 2-byte code")
    (code,) = struct.unpack_from(">H", payload)
    return code, bytes(payload[2:]).decode("utf-8", "replace")


def decode_head(payload):
    """
    The head a HEAD frame carries.

    @raise FrameError: it is not a JSON object.
    """
    try:
        head = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise FrameError("head is not JSON: {}".format(e)) from None
    if type(head) is not dict:
        raise FrameError("head is not a JSON object")
    return head
