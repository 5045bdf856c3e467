#!/usr/bin/env python3
"""
Sequential websocket round trips per second on one connection, through the
tunnel and direct: a quick look at the websocket path alone.

Starts, on 127.0.0.1 and free ports, in a temporary directory, the echo
backend (bench/ws_echo.py), C{twistd -n brickproxy} and C{twistd -n
brickclient} forwarding to the echo backend (no nginx, no wrk, no ab).
Then, on one websocket through the tunnel and one directly to the echo
backend, sends C{--count} messages of C{--size} bytes, each after the echo
of the one before (after one warm-up echo), checks every echo byte for byte
and prints the round trips per second:

    .venv/bin/python bench/ws_roundtrips.py [--count 2000] [--size 100] [--keep]

    websocket round trips/s (2000 x 100 B, sequential): through the tunnel 1979, direct 8810

The load generator runs in this process, the servers in their own.  The
full measurement, with latency percentiles, CPU per round trip and 16
connections, is bench/run's "WS echo 100 B" rows.

Exit status: 0 every echo matched, 1 one did not or the set-up failed.
"""

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wslite  # noqa: E402
from processes import (  # noqa: E402
    Processes, SetupError, free_port, start_client, start_echo, start_proxy, wait_listening)


def log(text):
    print("[ws_roundtrips %s] %s" % (time.strftime("%H:%M:%S"), text),
          file=sys.stderr, flush=True)


class EchoMismatch(Exception):
    pass


class EchoConnection:
    """One client websocket over asyncio streams, one message at a time."""

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer
        self.frames = wslite.FrameReader(expect_masked=False)
        self.received = []

    @classmethod
    async def open(cls, url):
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        key = wslite.new_key()
        writer.write(wslite.client_handshake(parts.netloc, parts.path or "/", key))
        head = await reader.readuntil(b"\r\n\r\n")
        first, headers = wslite.parse_head(head[:-4])
        if " 101 " not in first + " ":
            writer.close()
            raise SetupError("%s: handshake refused: %s" % (url, first))
        if headers.get("sec-websocket-accept", "").encode() != wslite.accept_key(key):
            writer.close()
            raise SetupError("%s: bad Sec-WebSocket-Accept" % (url,))
        return cls(reader, writer)

    async def _next_message(self):
        while not self.received:
            data = await self.reader.read(65536)
            if not data:
                raise EchoMismatch("connection closed by the server")
            for opcode, payload in self.frames.feed(data):
                if opcode == wslite.OP_PING:
                    self.writer.write(wslite.frame(wslite.OP_PONG, payload, True))
                elif opcode == wslite.OP_CLOSE:
                    raise EchoMismatch("closed by the server: %r" % (payload[:60],))
                else:
                    self.received.append((opcode, payload))
        return self.received.pop(0)

    async def echo(self, payload):
        self.writer.write(wslite.frame(wslite.OP_TEXT, payload, True))
        opcode, echoed = await self._next_message()
        if opcode != wslite.OP_TEXT or echoed != payload:
            raise EchoMismatch("echo of %r came back as %r" % (payload[:30], echoed[:30]))

    async def close(self):
        self.writer.write(wslite.frame(wslite.OP_CLOSE, b"\x03\xe8", True))
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def round_trips_per_second(url, count, size):
    """C{count} sequential echoes of C{size} bytes on one new connection."""
    connection = await EchoConnection.open(url)
    try:
        await connection.echo(b"warm-up".ljust(size, b"x"))
        started = time.perf_counter()
        for seq in range(count):
            await connection.echo(b"%012d-" % (seq,) + b"x" * (size - 13))
        return count / (time.perf_counter() - started)
    finally:
        await connection.close()


def measure(args):
    """
    @return: C{{"tunnel": round trips/s, "direct": round trips/s}}
    """
    tmp = tempfile.mkdtemp(prefix="ws_roundtrips.")
    procs = Processes(tmp)
    try:
        echo, echo_port = start_echo(procs)
        proxy_port = free_port()
        proxy = start_proxy(procs, "proxy", proxy_port)
        wait_listening(proxy_port, proxy, "the proxy")
        client, client_id = start_client(procs, proxy, proxy_port,
                                         "http://127.0.0.1:%d" % (echo_port,))
        log("ws echo :%d, proxy :%d, client %s" % (echo_port, proxy_port, client_id))
        urls = [
            ("tunnel", "ws://127.0.0.1:%d/proxy/request/%s/echo" % (proxy_port, client_id)),
            ("direct", "ws://127.0.0.1:%d/echo" % (echo_port,)),
        ]
        rates = {}
        for name, url in urls:
            rates[name] = asyncio.run(round_trips_per_second(url, args.count, args.size))
        for proc in (echo, proxy, client):
            if proc.poll() is not None:
                raise SetupError("%s died during the run" % (proc.bench_name,))
        return rates
    finally:
        procs.stop_all()
        if args.keep:
            log("logs kept in " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="round trips per target")
    parser.add_argument("--size", type=int, default=100, help="bytes per message")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args(argv)
    if args.size < 20:
        parser.error("--size must be at least 20")
    if args.count < 1:
        parser.error("--count must be at least 1")
    # SIGTERM, like Ctrl-C, stops everything started (measure's finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        rates = measure(args)
    except (SetupError, EchoMismatch, OSError) as e:
        log("failed: %s" % (e,))
        return 1
    print("websocket round trips/s (%d x %d B, sequential): "
          "through the tunnel %.0f, direct %.0f" % (
              args.count, args.size, rates["tunnel"], rates["direct"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
