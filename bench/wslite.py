"""
A deliberately tiny RFC 6455 implementation for the benchmark's own tools
(the echo backend, the round-trip client and the idle-tunnel client).

It is kept minimal so that the load generators and the echo backend spend as
little CPU as possible: on a 2-core machine every cycle they burn is taken
from the proxy and the client under test.  No extensions, no subprotocols.
"""

import base64
import hashlib
import os
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class ProtocolError(Exception):
    pass


def accept_key(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (bytes)."""
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def new_key():
    return base64.b64encode(os.urandom(16))


def xor_mask(data, mask):
    """Mask or unmask C{data} with the 4-byte C{mask}."""
    n = len(data)
    if not n:
        return data
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little"
    )


def frame(opcode, payload, masked):
    """One complete (FIN) frame."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if masked:
        mask = os.urandom(4)
        return head + mask + xor_mask(payload, mask)
    return head + payload


def client_handshake(host, path, key, extra_headers=()):
    lines = [
        "GET %s HTTP/1.1" % (path,),
        "Host: %s" % (host,),
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: %s" % (key.decode("ascii"),),
        "Sec-WebSocket-Version: 13",
    ]
    lines.extend(extra_headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(head):
    """(first line, {lower-case name: value}) of an HTTP head (bytes)."""
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


class FrameReader:
    """
    Incremental frame parser: C{feed(data)} returns a list of complete
    messages as (opcode, payload); fragmented messages are reassembled.
    """

    def __init__(self, expect_masked, max_size=64 * 1024 * 1024):
        self._buf = bytearray()
        self._expect_masked = expect_masked
        self._max = max_size
        self._frag_op = None
        self._frag = []

    def feed(self, data):
        buf = self._buf
        buf += data
        out = []
        while True:
            if len(buf) < 2:
                break
            b0, b1 = buf[0], buf[1]
            fin = b0 & 0x80
            opcode = b0 & 0x0F
            masked = b1 & 0x80
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n = struct.unpack_from("!H", buf, 2)[0]
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n = struct.unpack_from("!Q", buf, 2)[0]
                pos = 10
            if bool(masked) != self._expect_masked:
                raise ProtocolError("unexpected masking")
            if n > self._max:
                raise ProtocolError("frame too large")
            if masked:
                if len(buf) < pos + 4 + n:
                    break
                mask = bytes(buf[pos:pos + 4])
                payload = xor_mask(bytes(buf[pos + 4:pos + 4 + n]), mask)
                del buf[:pos + 4 + n]
            else:
                if len(buf) < pos + n:
                    break
                payload = bytes(buf[pos:pos + n])
                del buf[:pos + n]
            if opcode >= 0x8:  # control frames are never fragmented
                out.append((opcode, payload))
            elif opcode == OP_CONT:
                if self._frag_op is None:
                    raise ProtocolError("continuation without a start")
                self._frag.append(payload)
                if fin:
                    out.append((self._frag_op, b"".join(self._frag)))
                    self._frag_op, self._frag = None, []
            elif fin:
                out.append((opcode, payload))
            else:
                self._frag_op, self._frag = opcode, [payload]
        return out
