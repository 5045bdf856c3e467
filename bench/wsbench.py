"""
Websocket echo round trips: N connections, each sending one message and
waiting for its echo before sending the next (sequential per connection).
Every echo is checked byte for byte against what was sent.

    python bench/wsbench.py --url ws://127.0.0.1:8080/ws --connections 16 \
        --duration 5 [--size 100] [--warmup 0.5] [--host NAME.localhost:8080]

Prints one JSON object: round trips/s, p50/p99 in microseconds, the
fewest and the most round trips on one connection, errors.
Runs in its own process, so it does not share a CPU with what it measures.
"""

import argparse
import asyncio
import json
import os
import sys
import time
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wslite  # noqa: E402


class Stats:
    def __init__(self, measure_from, deadline):
        self.measure_from = measure_from
        self.deadline = deadline
        self.latencies = []
        self.errors = []
        self.opened = 0
        self.first_done = None
        self.last_done = None
        #: connection index -> round trips measured on it
        self.per_connection = {}


class RoundTrips(asyncio.Protocol):
    def __init__(self, index, host, path, size, stats, done):
        self.index = index
        self.host = host
        self.path = path
        self.size = size
        self.stats = stats
        self.done = done
        self.key = wslite.new_key()
        self.head = bytearray()
        self.reader = None
        self.seq = 0
        self.expected = None
        self.sent_at = 0
        self.finished = False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(wslite.client_handshake(self.host, self.path, self.key))

    def _fail(self, text):
        if not self.finished:
            self.stats.errors.append("conn %d: %s" % (self.index, text))
            self._finish()

    def _finish(self):
        if self.finished:
            return
        self.finished = True
        try:
            self.transport.write(wslite.frame(wslite.OP_CLOSE, b"\x03\xe8", True))
        except Exception:
            pass
        self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def _payload(self):
        prefix = b"%04d-%012d-" % (self.index, self.seq)
        return prefix + b"x" * (self.size - len(prefix))

    def _send(self):
        self.seq += 1
        self.expected = self._payload()
        self.sent_at = time.perf_counter()
        self.transport.write(wslite.frame(wslite.OP_TEXT, self.expected, True))

    def data_received(self, data):
        if self.reader is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            first, headers = wslite.parse_head(bytes(self.head[:end]))
            rest = bytes(self.head[end + 4:])
            if " 101 " not in first + " ":
                self._fail("handshake refused: %s" % (first,))
                return
            if headers.get("sec-websocket-accept", "").encode() != wslite.accept_key(self.key):
                self._fail("bad Sec-WebSocket-Accept")
                return
            self.reader = wslite.FrameReader(expect_masked=False)
            self.stats.opened += 1
            self._send()
            if not rest:
                return
            data = rest
        try:
            messages = self.reader.feed(data)
        except wslite.ProtocolError as e:
            self._fail(str(e))
            return
        for opcode, payload in messages:
            if opcode == wslite.OP_PING:
                self.transport.write(wslite.frame(wslite.OP_PONG, payload, True))
                continue
            if opcode == wslite.OP_CLOSE:
                self._fail("closed by the server: %r" % (payload[:60],))
                return
            now = time.perf_counter()
            if opcode != wslite.OP_TEXT or payload != self.expected:
                self._fail("echo mismatch at message %d" % (self.seq,))
                return
            stats = self.stats
            if now >= stats.measure_from and self.sent_at >= stats.measure_from:
                stats.latencies.append(now - self.sent_at)
                stats.per_connection[self.index] = stats.per_connection.get(self.index, 0) + 1
                stats.last_done = now
                if stats.first_done is None:
                    stats.first_done = now
            if now >= stats.deadline:
                self._finish()
                return
            self._send()

    def connection_lost(self, exc):
        if not self.finished:
            self._fail("connection lost: %s" % (exc,))


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


async def run(url, connections, duration, size, warmup, timeout, host_header=None):
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    stats = Stats(start + warmup, start + warmup + duration)
    dones = []
    transports = []
    for i in range(connections):
        done = loop.create_future()
        dones.append(done)
        try:
            transport, _ = await loop.create_connection(
                lambda i=i, done=done: RoundTrips(
                    i, host_header or parts.netloc, path, size, stats, done),
                host, port)
            transports.append(transport)
        except OSError as e:
            stats.errors.append("conn %d: connect failed: %s" % (i, e))
            done.set_result(None)
    try:
        await asyncio.wait_for(asyncio.gather(*dones), warmup + duration + timeout)
    except asyncio.TimeoutError:
        stats.errors.append("timed out waiting for echoes")
        for t in transports:
            t.close()
    lat = sorted(stats.latencies)
    elapsed = None
    if lat and stats.last_done is not None:
        elapsed = max(stats.last_done - stats.measure_from, 1e-9)
    return {
        "url": url,
        "connections": connections,
        "opened": stats.opened,
        "size": size,
        "duration": duration,
        "round_trips": len(lat),
        # The fewest and the most on one connection (a connection that never
        # got through counts 0): a server that serves only some of them shows.
        "per_connection_min": min([stats.per_connection.get(i, 0) for i in range(connections)]
                                  or [0]),
        "per_connection_max": max(stats.per_connection.values() or [0]),
        "rps": (len(lat) / elapsed) if elapsed else 0.0,
        "p50_us": percentile(lat, 50) * 1e6 if lat else None,
        "p99_us": percentile(lat, 99) * 1e6 if lat else None,
        "errors": len(stats.errors),
        "error_samples": stats.errors[:5],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=15.0,
                        help="extra seconds allowed past the run before giving up")
    parser.add_argument("--host", default=None,
                        help="the handshake's Host header (default: the URL's host:port)")
    args = parser.parse_args()
    if args.size < 20:
        parser.error("--size must be at least 20")
    result = asyncio.run(run(args.url, args.connections, args.duration, args.size,
                             args.warmup, args.timeout, args.host))
    print(json.dumps(result))
    return 0 if result["errors"] == 0 and result["round_trips"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
