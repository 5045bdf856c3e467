"""
The benchmark's websocket echo backend: every text or binary message that
arrives on any path is sent back unchanged, with the same opcode.

A minimal asyncio server (see wslite.py) rather than Autobahn, so that the
backend costs as little CPU as possible and is never the bottleneck (the
benchmark prints its direct numbers, which show the headroom).

    python bench/ws_echo.py --port N [--interface 127.0.0.1]
"""

import argparse
import asyncio
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wslite  # noqa: E402


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.head = bytearray()
        self.reader = None

    def data_received(self, data):
        if self.reader is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self.transport.close()
                return
            rest = bytes(self.head[end + 4:])
            first, headers = wslite.parse_head(bytes(self.head[:end]))
            key = headers.get("sec-websocket-key")
            if not first.startswith("GET ") or not key or \
                    "websocket" not in headers.get("upgrade", "").lower():
                self.transport.write(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n")
                self.transport.close()
                return
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + wslite.accept_key(key.encode("latin-1")) + b"\r\n\r\n")
            self.reader = wslite.FrameReader(expect_masked=True)
            self.head = None
            if not rest:
                return
            data = rest
        try:
            messages = self.reader.feed(data)
        except wslite.ProtocolError:
            self.transport.write(wslite.frame(wslite.OP_CLOSE, b"\x03\xea", False))
            self.transport.close()
            return
        out = []
        for opcode, payload in messages:
            if opcode in (wslite.OP_TEXT, wslite.OP_BINARY):
                out.append(wslite.frame(opcode, payload, False))
            elif opcode == wslite.OP_PING:
                out.append(wslite.frame(wslite.OP_PONG, payload, False))
            elif opcode == wslite.OP_CLOSE:
                out.append(wslite.frame(wslite.OP_CLOSE, payload[:2], False))
                self.transport.write(b"".join(out))
                self.transport.close()
                return
        if out:
            self.transport.write(b"".join(out))


async def serve(interface, port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, interface, port, backlog=1024)
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    print("ws echo on ws://%s:%d/" % (interface, port), flush=True)
    await stop
    server.close()


def main():
    parser = argparse.ArgumentParser(description="websocket echo backend")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args()
    asyncio.run(serve(args.interface, args.port))


if __name__ == "__main__":
    main()
