"""
A short path through Autobahn for the frames that make up nearly all
websocket traffic: one unfragmented text or binary message, uncompressed,
within the limits.

Autobahn handles every frame in the general way: a frame header object, a
C masker set up per frame (even for ten bytes), begin/data/end hooks for
frame and message, a signal fired per message, and debug log lines whose
arguments (coloured type names) are formatted whether or not anyone logs
at debug level.  The profile of every benchmark row showed that machinery
at 15-45 % of the proxy's and the client's CPU.

L{ShortFrames} goes first in a protocol's bases.  A frame it can handle
whole -- complete in the buffer, FIN set, no RSV bits, opcode 1 or 2,
masked as the role requires, within C{maxFramePayloadSize} and
C{maxMessagePayloadSize}, valid UTF-8 if text and validated -- it reads and
writes itself; anything else (a control frame, a fragment, a frame not yet
complete, a violation, compression, fuzzing options, Autobahn's frame or
octet logging) goes to Autobahn as before, so every close, ping, limit and
error keeps Autobahn's behaviour.

It reads and updates Autobahn's own state as its C{processData} and
C{sendMessage} do (C{data}, C{current_frame}, C{inside_message},
C{send_queue}, C{trafficStats}, C{_perMessageCompress}, the autoping
timer) and hands a message on through C{_onMessage}.  Those are private:
C{tests/test_wsframes.py} checks them against real Autobahn peers, byte
for byte and one byte at a time, and CI runs it against the newest
Autobahn too (as C{compat.py}'s shims are).
"""

import random
import struct

from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.xormasker import create_xor_masker

from .compat import flush_now, write_now

_OPEN = WebSocketProtocol.STATE_OPEN

#: Payloads up to this size are masked with Python's big integers, which
#: beats setting up Autobahn's C masker; larger ones use the C masker.
_INT_MASK_LIMIT = 1024

#: A frame up to this size is waited for whole before it is read (so it
#: takes the short path); a larger one is streamed by Autobahn as it
#: arrives, rather than copied into the buffer again at every read.
_WAIT_WHOLE_LIMIT = 256 * 1024

#: Writes up to this size are joined into one string and sent at once
#: (copying 256 KiB costs less than the epoll calls a queued write does);
#: larger payloads are written after their header without a copy.
_JOIN_LIMIT = 256 * 1024

_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")


def masked(key, payload):
    """
    C{payload} XORed with the 4-byte masking C{key} (RFC 6455 5.3); the
    same function masks and unmasks.
    """
    n = len(payload)
    if n <= _INT_MASK_LIMIT:
        keys = (key * ((n >> 2) + 1))[:n]
        return (int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")).to_bytes(
            n, "little")
    return create_xor_masker(key, n).process(payload)


def frame_header(opcode, length, mask_bit):
    """
    The header of an unfragmented frame of C{length} payload bytes
    (C{mask_bit} is 0x80 or 0; the key follows the header).
    """
    b0 = 0x80 | opcode
    if length < 126:
        return bytes((b0, mask_bit | length))
    if length < 65536:
        return _HEAD_16.pack(b0, mask_bit | 126, length)
    return _HEAD_64.pack(b0, mask_bit | 127, length)


class ShortFrames:
    """
    Mixin for an Autobahn protocol (server or client): the short path for
    whole single-frame messages, both ways.  See the module docstring.
    """

    def dataReceived(self, data):
        # Autobahn's own formats a debug line's arguments for every read.
        self._dataReceived(data)

    def processData(self):
        if (self.current_frame is None and not self.inside_message
                and self.state == _OPEN and self._perMessageCompress is None
                and not self.logFrames):
            read = self._read_whole_frame()
            if read is not None:
                return read
        return super().processData()

    def _read_whole_frame(self):
        """
        Read the whole message frame at the head of the buffer.

        @return: what C{processData} returns when it did (whether to go
            on), C{False} when a frame it will read is not complete yet, or
            L{None} to leave the buffer to Autobahn.
        """
        data = self.data
        n = len(data)
        if n < 2:
            return None
        b0 = data[0]
        if b0 != 0x81 and b0 != 0x82:
            return None
        b1 = data[1]
        length = b1 & 0x7F
        start = 2
        if length == 126:
            if n < 4:
                return None
            length = (data[2] << 8) | data[3]
            if length < 126:
                return None
            start = 4
        elif length == 127:
            if n < 10:
                return None
            length = int.from_bytes(data[2:10], "big")
            if length < 65536 or length > _WAIT_WHOLE_LIMIT:
                return None  # not minimal (a violation), or streamed by Autobahn
            start = 10
        mask_bit = b1 & 0x80
        if self.factory.isServer:
            if not mask_bit or not self.applyMask:
                return None
        elif mask_bit:
            return None
        if mask_bit:
            start += 4
        if (0 < self.maxFramePayloadSize < length
                or 0 < self.maxMessagePayloadSize < length):
            return None
        end = start + length
        if n < end:
            return False if end <= _WAIT_WHOLE_LIMIT else None
        payload = data[start:end]
        if mask_bit and length:
            payload = masked(data[start - 4:start], payload)
        if b0 == 0x81 and self.utf8validateIncoming:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                return None  # Autobahn fails the connection with 1007
        self.data = data[end:]
        stats = self.trafficStats
        stats.incomingWebSocketFrames += 1
        stats.incomingWebSocketMessages += 1
        stats.incomingOctetsWebSocketLevel += length
        stats.incomingOctetsAppLevel += length
        if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
            self._cancelAutoPingTimeoutCall()
        self._onMessage(payload, b0 == 0x82)
        return len(self.data) > 0

    def sendMessage(self, payload, isBinary=False, fragmentSize=None, sync=False,
                    doNotCompress=False):
        n = len(payload)
        if (fragmentSize is not None or sync or self.state != _OPEN
                or self._perMessageCompress is not None or self.send_queue
                or 0 < self.autoFragmentSize < n or 0 < self.maxMessagePayloadSize < n
                or self.logFrames or self.logOctets or type(payload) is not bytes):
            return super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)
        if self.factory.isServer:
            mask_bit = 0x80 if self.maskServerFrames else 0
        else:
            mask_bit = 0x80 if self.maskClientFrames else 0
        if mask_bit and not self.applyMask:
            return super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)
        head = frame_header(2 if isBinary else 1, n, mask_bit)
        if mask_bit:
            key = random.getrandbits(32).to_bytes(4, "big")
            head += key
            if n:
                payload = masked(key, payload)
        stats = self.trafficStats
        stats.outgoingWebSocketMessages += 1
        stats.outgoingWebSocketFrames += 1
        stats.outgoingOctetsAppLevel += n
        stats.outgoingOctetsWebSocketLevel += n
        stats.outgoingOctetsWireLevel += len(head) + n
        transport = self.transport
        if n <= _JOIN_LIMIT:
            write_now(transport, head + payload)
        else:
            transport.writeSequence((head, payload))
            flush_now(transport)
