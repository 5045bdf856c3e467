"""
Register many idle tunnels with a proxy: N websockets to /proxy/subscribe,
each sending a valid registration-request (its own fresh P-256 key and a
signed mandate token, the features a real client offers) and waiting for the
registration-response.  The tunnels are then held open, idle, until standard
input closes (or SIGTERM), so the caller can measure the proxy's memory.

    python bench/many_tunnels.py --base http://127.0.0.1:6519 --count 1000

Prints one JSON line when all registrations are answered, e.g.
{"registered": 1000, "failed": 0, "seconds": 4.2}, and another
({"closed": true}) after closing them.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wslite  # noqa: E402
from brickchain_proxy import features  # noqa: E402
from brickchain_proxy.identity import ClientKey  # noqa: E402
from brickchain_proxy.messages import (  # noqa: E402
    MessageError,
    RegistrationRequest,
    RegistrationResponse,
    decode,
    encode,
)


class Tunnel(asyncio.Protocol):
    def __init__(self, host, path, request, registered):
        self.host = host
        self.path = path
        self.request = request
        self.registered = registered
        self.key = wslite.new_key()
        self.head = bytearray()
        self.reader = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(wslite.client_handshake(self.host, self.path, self.key))

    def _result(self, value):
        if not self.registered.done():
            self.registered.set_result(value)

    def data_received(self, data):
        if self.reader is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            first, _ = wslite.parse_head(bytes(self.head[:end]))
            rest = bytes(self.head[end + 4:])
            if " 101 " not in first + " ":
                self._result("handshake refused: " + first)
                self.transport.close()
                return
            self.reader = wslite.FrameReader(expect_masked=False)
            self.transport.write(
                wslite.frame(wslite.OP_TEXT, encode(self.request), True))
            data = rest
            if not data:
                return
        try:
            messages = self.reader.feed(data)
        except wslite.ProtocolError as e:
            self._result("protocol error: %s" % (e,))
            self.transport.close()
            return
        for opcode, payload in messages:
            if opcode == wslite.OP_PING:
                self.transport.write(wslite.frame(wslite.OP_PONG, payload, True))
            elif opcode == wslite.OP_CLOSE:
                self._result("closed by the proxy")
            elif not self.registered.done():
                try:
                    message = decode(payload)
                except MessageError:
                    self._result("refused: %s" % (payload[:200].decode("utf-8", "replace"),))
                    continue
                if isinstance(message, RegistrationResponse) and message.id == self.request.id:
                    self._result(None)
                else:
                    self._result("unexpected %s" % (type(message).__name__,))
            # After registration: pings from the proxy (protocol messages)
            # are read and ignored, as an idle client would.

    def connection_lost(self, exc):
        self._result("connection lost: %s" % (exc,))


async def open_tunnel(loop, host, port, netloc, path, base, semaphore, transports):
    key = ClientKey.generate()
    request = RegistrationRequest(
        mandate_token=key.sign_mandate_token(base),
        features=sorted(features.SUPPORTED),
    )
    async with semaphore:
        registered = loop.create_future()
        try:
            transport, _ = await loop.create_connection(
                lambda: Tunnel(netloc, path, request, registered), host, port)
        except OSError as e:
            return "connect failed: %s" % (e,)
        transports.append(transport)
        try:
            return await asyncio.wait_for(registered, 30)
        except asyncio.TimeoutError:
            return "no registration-response within 30 s"


async def main_async(args):
    loop = asyncio.get_running_loop()
    parts = urlsplit(args.base)
    host, port = parts.hostname, parts.port or 80
    path = parts.path.rstrip("/") + "/proxy/subscribe"
    semaphore = asyncio.Semaphore(args.concurrency)
    transports = []
    started = time.monotonic()
    results = await asyncio.gather(*[
        open_tunnel(loop, host, port, parts.netloc, path, args.base, semaphore, transports)
        for _ in range(args.count)
    ])
    failures = [r for r in results if r is not None]
    print(json.dumps({
        "registered": len(results) - len(failures),
        "failed": len(failures),
        "failure_samples": failures[:5],
        "seconds": round(time.monotonic() - started, 3),
    }), flush=True)
    # Hold the tunnels open until stdin closes or we are told to stop.
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    loop.add_reader(sys.stdin.fileno(),
                    lambda: (sys.stdin.readline(), stop.done() or stop.set_result(None)))
    await stop
    for transport in transports:
        if not transport.is_closing():
            transport.write(wslite.frame(wslite.OP_CLOSE, b"\x03\xe8", True))
        transport.close()
    await asyncio.sleep(0.2)
    try:
        print(json.dumps({"closed": True}), flush=True)
    except BrokenPipeError:
        pass
    return 0 if not failures else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--base", required=True,
                        help="the proxy's --base URL (tokens are signed for it)")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50,
                        help="registrations in flight at once")
    args = parser.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
