#!/usr/bin/env python3
"""
A soak with faults: mixed load through two proxy instances on one Redis,
every answer checked, while Redis, a proxy and a tunnel client are killed
(SIGKILL) and restarted on a schedule.

Starts, on 127.0.0.1 and free ports, in a temporary directory:

  - a throwaway C{redis-server} (no persistence);
  - proxy instances A and B: C{twistd -n brickproxy --bus redis://...
    --request-timeout 10}, each its own process;
  - two local services (C{--serve-local}, each its own asyncio process,
    named C{a} and C{b}): HTTP GET answers a body derived from the request
    id, POST answers the id with the length and SHA-256 of the body it
    read, and C{/ws} echoes every websocket message;
  - tunnel client C{a} (C{twistd -n brickclient}) on proxy A, forwarding
    to service C{a}, and client C{b} on proxy B, forwarding to service
    C{b}.

Each client is pointed at one proxy: killing that proxy means its client
reconnects, within its backoff, to the proxy restarted on the same port
(a load balancer in front would let it move to the other instance; the
recovery measured here is the slower case).

The load generator (this process, asyncio) runs one worker per path: via
A or B, to tunnel a or b (so same-instance and cross-instance paths), for
each of GET, POST and websocket echo sessions -- twelve paths.  Bodies are
random, from empty to 64 KiB, and one in eight is between 1 and 2 MiB (they
ride the stream layer in 64 KiB frames).  Every answer is checked:

  - GET: 200, the request id and the service's name in the headers, and
    the body exactly the bytes derived from that id;
  - POST: 200 and the JSON the service wrote: the request id, its name,
    the length and the SHA-256 of the body it read;
  - websocket: every message echoed exactly, in order (each carries its
    session id and sequence number).

An answer is:

  - B{ok}: as asked for;
  - B{wrong}: a complete-looking answer that is not the one asked for: a
    200 with another request's (or another service's) body, a body that
    does not match, an echo out of order or changed;
  - B{hung}: nothing within C{HUNG} (30 s), well above the two bounds
    the proxy sets on a wait: C{--request-timeout} (10 s here) for an
    answer's head, and the probe (every 20 s) that finds a dead instance
    under a stream already answering;
  - an B{error}: a refusal the visitor can see, counted by status and by
    phase: a non-200 status, a refused connection, a connection closed
    before the answer was complete (a truncated body the visitor can tell
    is truncated), a websocket handshake refused or a websocket closed
    (with its close code).

Faults, each a phase of its own followed by a recovery phase and a steady
phase: Redis SIGKILLed and restarted on the same port, a proxy instance
SIGKILLed and restarted on the same port, a tunnel client SIGKILLed and
restarted (same key, so same clientID).  The recovery time of a fault is
the time from the restart until the first correct answer, to a request sent
after the restart, on every one of the twelve paths.

    .venv/bin/python bench/soak_faults.py --quick        # about 60 s
    .venv/bin/python bench/soak_faults.py --duration 600 [--json FILE] [--keep]

Exit status: 0 when no answer was wrong or hung, no error happened in a
steady phase and every recovery came within C{--budget} (30 s: the
client's largest backoff delay); 1 otherwise; 2 when the set-up failed.

The daemons run the code of this checkout: C{PYTHONPATH} is set to it for
every child process.
"""

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wslite  # noqa: E402
from processes import ROOT, Processes, SetupError, free_port  # noqa: E402

#: Seconds without an answer that make it "hung": above the proxies'
#: --request-timeout (REQUEST_TIMEOUT) and their 20 s probe of the instances
#: their streams run through.
HUNG = 30.0
REQUEST_TIMEOUT = 10.0
BUDGET = 30.0  # the client's backoff: 0.5 s doubling up to 30 s
LARGE_SHARE = 8  # one body in LARGE_SHARE is 1-2 MiB
KINDS = ("get", "post", "ws")


def log(text):
    print("[soak_faults %s] %s" % (time.strftime("%H:%M:%S"), text),
          file=sys.stderr, flush=True)


def payload_for(request_id, size):
    """The GET body of C{request_id}: C{size} bytes both sides derive."""
    return random.Random(request_id).randbytes(size)


def body_size(rng):
    if rng.randrange(LARGE_SHARE) == 0:
        return rng.randrange(1 << 20, 2 << 20)
    return rng.choice((0, rng.randrange(1, 1024), rng.randrange(1024, 65536)))


# -- the local service (its own process: --serve-local PORT --name NAME) ---------------


async def _read_body(reader, headers):
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    return b""


async def _serve_ws(reader, writer, headers):
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                 % wslite.accept_key(headers["sec-websocket-key"].encode()))
    frames = wslite.FrameReader(expect_masked=True)
    while True:
        data = await reader.read(65536)
        if not data:
            return
        for opcode, payload in frames.feed(data):
            if opcode == wslite.OP_PING:
                writer.write(wslite.frame(wslite.OP_PONG, payload, False))
            elif opcode == wslite.OP_CLOSE:
                writer.write(wslite.frame(wslite.OP_CLOSE, payload[:2], False))
                await writer.drain()
                return
            elif opcode in (wslite.OP_TEXT, wslite.OP_BINARY):
                writer.write(wslite.frame(opcode, payload, False))
        await writer.drain()


def serve_local(port, name):
    async def handle(reader, writer):
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                first, headers = wslite.parse_head(head[:-4])
                method, target = first.split(" ")[:2]
                if headers.get("upgrade", "").lower() == "websocket":
                    await _serve_ws(reader, writer, headers)
                    return
                body = await _read_body(reader, headers)
                url = urlsplit(target)
                query = parse_qs(url.query)
                request_id = query.get("id", [""])[0]
                if method == "GET" and url.path == "/get":
                    answer = payload_for(request_id, int(query["size"][0]))
                    kind = b"application/octet-stream"
                elif method == "POST" and url.path == "/post":
                    answer = json.dumps({
                        "id": request_id, "service": name, "length": len(body),
                        "sha256": hashlib.sha256(body).hexdigest()}).encode()
                    kind = b"application/json"
                else:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nX-Soak-Id: %s\r\n"
                    b"X-Soak-Service: %s\r\nContent-Length: %d\r\n\r\n" % (
                        kind, request_id.encode(), name.encode(), len(answer)))
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, wslite.ProtocolError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port, limit=1 << 20)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the record of every answer ------------------------------------------------------


class Record:
    """
    Every outcome, counted by phase, path and status; the correct answers'
    times per path, for the recovery times.
    """

    def __init__(self):
        self.phase = "warm-up"
        self.phases = []  # names, in order
        self.counts = defaultdict(Counter)  # phase -> outcome -> n
        self.errors = defaultdict(Counter)  # phase -> status -> n
        self.paths = defaultdict(Counter)  # path -> outcome -> n
        self.path_errors = defaultdict(Counter)  # path -> status -> n
        self.oks = defaultdict(list)  # path -> [(sent, answered)]
        self.slowest = defaultdict(Counter)  # phase -> "ok"/"error" -> longest wait, s
        self.wrong = []
        self.hung = []
        self.started = time.monotonic()

    def now(self):
        return time.monotonic() - self.started

    def enter(self, phase):
        self.phase = phase
        self.phases.append(phase)
        log("phase: " + phase)

    def _waited(self, outcome, sent):
        now = self.now()
        slowest = self.slowest[self.phase]
        slowest[outcome] = max(slowest[outcome], now - sent)
        return now

    def ok(self, path, sent):
        self.counts[self.phase]["ok"] += 1
        self.paths[path]["ok"] += 1
        self.oks[path].append((sent, self._waited("ok", sent)))

    def error(self, path, status, sent):
        self._waited("error", sent)
        self.counts[self.phase]["error"] += 1
        self.errors[self.phase][status] += 1
        self.paths[path]["error"] += 1
        self.path_errors[path]["%s: %s" % (self.phase, status)] += 1

    def bad(self, path, outcome, sent, detail):
        self.counts[self.phase][outcome] += 1
        self.paths[path][outcome] += 1
        entry = {"path": path, "phase": self.phase, "sent": round(sent, 3),
                 "at": round(self.now(), 3), "detail": detail}
        (self.wrong if outcome == "wrong" else self.hung).append(entry)
        log("%s on %s: %s" % (outcome.upper(), path, detail))

    def recovered_at(self, path, since):
        """When the first correct answer to a request sent at C{since} or later came."""
        first = None
        for sent, answered in reversed(self.oks[path]):  # in the order answered
            if answered < since:
                break
            if sent >= since:
                first = answered
        return first


def path_name(via, tunnel, kind):
    return "%s via %s to %s" % (kind, via, tunnel)


# -- the load generator --------------------------------------------------------------


class Answer(Exception):
    """An outcome other than ok: C{outcome} is "error" or "wrong"."""

    def __init__(self, outcome, status, detail=""):
        Exception.__init__(self, status)
        self.outcome = outcome
        self.status = status
        self.detail = detail


async def _open(port):
    try:
        return await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    except ConnectionRefusedError:
        raise Answer("error", "connect refused")
    except OSError as e:
        raise Answer("error", "connect %s" % (e.__class__.__name__,))


async def _read_answer(reader):
    """(status, headers, body) of one HTTP/1.1 answer; an error if cut short."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        raise Answer("error", "closed before the answer")
    first, headers = wslite.parse_head(head[:-4])
    try:
        status = int(first.split(" ")[1])
    except (IndexError, ValueError):
        raise Answer("wrong", "garbled status line", repr(first))
    try:
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_body(reader, headers)
        else:
            body = await reader.read()  # up to the close: truncation is invisible
    except asyncio.IncompleteReadError:
        raise Answer("error", "%d truncated (connection lost)" % (status,))
    return status, headers, body


class HttpWorker:
    """Requests of one kind on one path, one at a time, on a keep-alive connection."""

    def __init__(self, record, via, port, tunnel, client_id, kind, seed, pause):
        self.record = record
        self.port = port
        self.tunnel = tunnel
        self.prefix = "/proxy/request/%s" % (client_id,)
        self.kind = kind
        self.path = path_name(via, tunnel, kind)
        self.rng = random.Random(seed)
        self.pause = pause
        self.conn = None
        self.serial = 0

    def close(self):
        if self.conn is not None:
            self.conn[1].transport.abort()
            self.conn = None

    async def run(self, stop):
        while not stop.is_set():
            self.serial += 1
            request_id = "%s-%d-%08x" % (self.path.replace(" ", "_"), self.serial,
                                         self.rng.getrandbits(32))
            size = body_size(self.rng)
            sent = self.record.now()
            try:
                await asyncio.wait_for(self.one(request_id, size), HUNG)
            except asyncio.TimeoutError:
                self.close()
                self.record.bad(self.path, "hung", sent, "%s, %d bytes: no answer in %g s"
                                % (request_id, size, HUNG))
            except Answer as e:
                self.close()
                if e.outcome == "wrong":
                    self.record.bad(self.path, "wrong", sent, "%s %d bytes: %s %s" % (
                        request_id, size, e.status, e.detail))
                else:
                    self.record.error(self.path, e.status, sent)
                    await asyncio.sleep(0.2)
            else:
                self.record.ok(self.path, sent)
            await asyncio.sleep(self.pause)
        self.close()

    async def one(self, request_id, size):
        if self.conn is None:
            self.conn = await _open(self.port)
        reader, writer = self.conn
        host = "127.0.0.1:%d" % (self.port,)
        if self.kind == "get":
            body = b""
            head = "GET %s/get?id=%s&size=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (
                self.prefix, request_id, size, host)
        else:
            body = self.rng.randbytes(size)
            head = ("POST %s/post?id=%s HTTP/1.1\r\nHost: %s\r\n"
                    "Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
                    % (self.prefix, request_id, host, size))
        try:
            writer.write(head.encode() + body)
            status, headers, answer = await _read_answer(reader)
        except ConnectionError as e:
            raise Answer("error", "connection %s" % (e.__class__.__name__,))
        if status != 200:
            raise Answer("error", "%d" % (status,))
        if headers.get("connection", "").lower() == "close":
            self.close()
        self.check(request_id, size, body, headers, answer)

    def check(self, request_id, size, body, headers, answer):
        got = (headers.get("x-soak-id"), headers.get("x-soak-service"))
        if got != (request_id, self.tunnel):
            raise Answer("wrong", "200 for another request",
                         "id/service %r, asked %r" % (got, (request_id, self.tunnel)))
        if self.kind == "get":
            if answer != payload_for(request_id, size):
                raise Answer("wrong", "200 with another body", "%d bytes, asked %d" % (
                    len(answer), size))
            return
        try:
            doc = json.loads(answer)
        except ValueError:
            raise Answer("wrong", "200 with garbled JSON", repr(answer[:100]))
        expected = {"id": request_id, "service": self.tunnel, "length": size,
                    "sha256": hashlib.sha256(body).hexdigest()}
        if doc != expected:
            raise Answer("wrong", "200 for another body", "%r, expected %r" % (doc, expected))


class WsWorker:
    """
    Websocket echo sessions on one path, one after the other: each sends
    C{batches} batches of 1 to 4 messages (text or binary, up to 64 KiB)
    and reads the echoes, which must come back exactly and in order.
    """

    def __init__(self, record, via, port, tunnel, client_id, seed, pause, batches=10):
        self.record = record
        self.port = port
        self.tunnel = tunnel
        self.target = "/proxy/request/%s/ws" % (client_id,)
        self.path = path_name(via, tunnel, "ws")
        self.rng = random.Random(seed)
        self.pause = pause
        self.batches = batches
        self.sessions = 0

    async def run(self, stop):
        while not stop.is_set():
            self.sessions += 1
            session = "%s-%d-%08x" % (self.path.replace(" ", "_"), self.sessions,
                                      self.rng.getrandbits(32))
            writer = None
            self.stage = "handshake"
            opened = self.waiting_since = self.record.now()
            try:
                reader, writer = await asyncio.wait_for(self.handshake(session), HUNG)
                await self.session(stop, session, reader, writer)
            except asyncio.TimeoutError:
                self.record.bad(self.path, "hung", self.record.now() - HUNG,
                                "session %s (opened at %.1f s): %s: no answer in %g s" % (
                                    session, opened, self.stage, HUNG))
            except Answer as e:
                if e.outcome == "wrong":
                    self.record.bad(self.path, "wrong", self.record.now(),
                                    "session %s: %s %s" % (session, e.status, e.detail))
                else:
                    self.record.error(self.path, e.status, self.waiting_since)
                    await asyncio.sleep(0.2)
            except ConnectionError as e:
                self.record.error(self.path, "ws connection %s" % (e.__class__.__name__,),
                                  self.waiting_since)
                await asyncio.sleep(0.2)
            finally:
                if writer is not None:
                    writer.transport.abort()
            await asyncio.sleep(self.pause)

    async def handshake(self, session):
        reader, writer = await _open(self.port)
        key = wslite.new_key()
        writer.write(wslite.client_handshake(
            "127.0.0.1:%d" % (self.port,), "%s?session=%s" % (self.target, session), key))
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.transport.abort()
            raise Answer("error", "ws closed before the handshake")
        first, headers = wslite.parse_head(head[:-4])
        if " 101 " not in first + " ":
            writer.transport.abort()
            raise Answer("error", "ws %s" % (first.split(" ")[1:2] or ["?"])[0])
        if headers.get("sec-websocket-accept", "").encode() != wslite.accept_key(key):
            writer.transport.abort()
            raise Answer("wrong", "ws bad Sec-WebSocket-Accept")
        return reader, writer

    async def session(self, stop, session, reader, writer):
        frames = wslite.FrameReader(expect_masked=False)
        received = []
        seq = 0
        for _ in range(self.batches):
            if stop.is_set():
                break
            expected = []
            sent = self.waiting_since = self.record.now()
            for _ in range(self.rng.randint(1, 4)):
                seq += 1
                size = self.rng.choice((self.rng.randrange(0, 200),
                                        self.rng.randrange(200, 65536)))
                tag = ("%s:%d:" % (session, seq)).encode()
                if self.rng.randrange(2):
                    message = (wslite.OP_TEXT, tag + self.rng.randbytes(size // 2).hex().encode())
                else:
                    message = (wslite.OP_BINARY, tag + self.rng.randbytes(size))
                expected.append(message)
                writer.write(wslite.frame(message[0], message[1], True))
            for number, message in enumerate(expected, seq - len(expected) + 1):
                self.stage = "echo of message %d" % (number,)
                got = await asyncio.wait_for(
                    self.next_message(reader, writer, frames, received), HUNG)
                if got != message:
                    raise Answer("wrong", "ws echo mismatch", "message %r came back as %r" % (
                        message[1][:60], got[1][:60]))
                self.record.ok(self.path, sent)
            await asyncio.sleep(self.pause)
        writer.write(wslite.frame(wslite.OP_CLOSE, b"\x03\xe8", True))

    async def next_message(self, reader, writer, frames, received):
        while not received:
            try:
                data = await reader.read(1 << 20)
            except ConnectionError as e:
                raise Answer("error", "ws connection %s" % (e.__class__.__name__,))
            if not data:
                raise Answer("error", "ws connection lost")
            for opcode, payload in frames.feed(data):
                if opcode == wslite.OP_PING:
                    writer.write(wslite.frame(wslite.OP_PONG, payload, True))
                elif opcode == wslite.OP_CLOSE:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                    raise Answer("error", "ws close %s" % (code,))
                elif opcode != wslite.OP_PONG:
                    received.append((opcode, payload))
        return received.pop(0)


# -- the daemons ---------------------------------------------------------------------


class Cluster:
    """Redis, proxies A and B, services a and b, clients a (on A) and b (on B)."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = Processes(tmp)
        bindir = os.path.dirname(sys.executable)
        self.twistd = os.path.join(bindir, "twistd")
        self.redis = shutil.which("redis-server")
        if self.redis is None:
            raise SetupError("redis-server is not installed (apt-get install redis-server)")
        # The daemons run this checkout's code, whatever the venv was installed from.
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        self.ports = {"redis": free_port(), "A": free_port(), "B": free_port(),
                      "service a": free_port(), "service b": free_port()}
        self.running = {}
        self.client_ids = {}

    def start(self, name):
        """Start the daemon C{name} (not waited for)."""
        if name == "redis":
            argv = [self.redis, "--port", str(self.ports["redis"]), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", self.tmp]
        elif name in ("A", "B"):
            port = self.ports[name]
            argv = [self.twistd, "-n", "--pidfile=",
                    "--logfile=" + os.path.join(self.tmp, "proxy%s.log" % (name,)),
                    "brickproxy", "--domain", "localhost",
                    "--listen", "tcp:%d:interface=127.0.0.1" % (port,),
                    "--base", "http://127.0.0.1:%d" % (port,),
                    "--bus", "redis://127.0.0.1:%d" % (self.ports["redis"],),
                    "--request-timeout", str(REQUEST_TIMEOUT),
                    "--rate-limit", "100000000/1"]
        elif name.startswith("service "):
            argv = [sys.executable, os.path.abspath(__file__), "--serve-local",
                    str(self.ports[name]), "--name", name.split()[1]]
        elif name.startswith("client "):
            tunnel = name.split()[1]
            argv = [self.twistd, "-n", "--pidfile=",
                    "--logfile=" + os.path.join(self.tmp, "client-%s.log" % (tunnel,)),
                    "brickclient", "--proxy", "http://127.0.0.1:%d" % (
                        self.ports[tunnel.upper()],),
                    "--local", "http://127.0.0.1:%d" % (self.ports["service " + tunnel],),
                    "--key", os.path.join(self.tmp, "key-%s.pem" % (tunnel,)),
                    "--state", self.state_path(tunnel)]
        else:
            raise ValueError(name)
        self.running[name] = self.procs.start(name.replace(" ", "-"), argv, env=self.env)
        return self.running[name]

    def kill(self, name):
        """SIGKILL the daemon C{name} and reap it."""
        proc = self.running.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.procs.running.remove(proc)

    def state_path(self, tunnel):
        return os.path.join(self.tmp, "state-%s.json" % (tunnel,))

    async def wait_listening(self, name, timeout=20.0):
        port = self.ports.get(name)
        proc = self.running[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SetupError("%s exited (status %s)" % (name, proc.returncode))
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise SetupError("%s did not listen on %d within %g s" % (name, port, timeout))

    async def wait_registered(self, tunnel, timeout=30.0):
        path = self.state_path(tunnel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if os.path.exists(path) and os.path.getsize(path):
                with open(path) as f:
                    self.client_ids[tunnel] = json.load(f)["clientID"]
                return
            await asyncio.sleep(0.05)
        raise SetupError("client %s did not register within %g s" % (tunnel, timeout))

    def check_alive(self):
        for name, proc in self.running.items():
            if proc.poll() is not None:
                raise SetupError("%s exited (status %s)" % (name, proc.returncode))

    async def start_all(self):
        for name in ("redis", "A", "B", "service a", "service b"):
            self.start(name)
        for name in ("redis", "A", "B", "service a", "service b"):
            await self.wait_listening(name)
        for tunnel in ("a", "b"):
            self.start("client " + tunnel)
        for tunnel in ("a", "b"):
            await self.wait_registered(tunnel)


# -- the schedule ----------------------------------------------------------------------


class Schedule:
    """The phases' lengths: C{--quick}, or a cycle repeated for C{--duration}."""

    def __init__(self, quick, duration):
        if quick:
            self.steady, self.down, self.settle, self.cycles = 8.0, 4.0, 5.0, 1
        else:
            self.steady, self.down, self.settle = 20.0, 8.0, 20.0
            # one cycle: 3 faults, each down, recovering (a few s) and settling
            per_cycle = 3 * (self.down + 8.0 + self.settle)
            self.cycles = max(1, int((duration - self.steady) // per_cycle))

    def faults(self):
        for cycle in range(self.cycles):
            proxy = "AB"[cycle % 2]
            tunnel = "ba"[cycle % 2]
            yield "redis", "redis"
            yield "proxy " + proxy, proxy
            yield "client " + tunnel, "client " + tunnel


async def inject(cluster, record, name, daemon, down, budget, paths):
    """
    SIGKILL C{daemon}, wait C{down} s, start it again and wait until every
    path has answered correctly to a request sent after the restart.

    @return: the fault's figures (a dict).
    """
    n = sum(1 for p in record.phases if p.startswith(name) and p.endswith(" down")) + 1
    label = "%s #%d" % (name, n) if n > 1 else name
    record.enter(label + " down")
    killed = record.now()
    cluster.kill(daemon)
    await asyncio.sleep(down)
    record.enter(label + " recovery")
    restarted = record.now()
    cluster.start(daemon)
    listening = None
    deadline = restarted + budget + 10.0
    recovered = {}
    while record.now() < deadline:
        if listening is None and daemon in cluster.ports:
            try:
                await cluster.wait_listening(daemon, timeout=0.2)
                listening = record.now()
            except SetupError:
                if cluster.running[daemon].poll() is not None:
                    raise
        for path in paths:
            if path not in recovered:
                at = record.recovered_at(path, restarted)
                if at is not None:
                    recovered[path] = at - restarted
        if len(recovered) == len(paths):
            break
        await asyncio.sleep(0.1)
    slowest = max(recovered.items(), key=lambda kv: kv[1]) if recovered else (None, None)
    fault = {
        "fault": label, "killed_at": round(killed, 3), "restarted_at": round(restarted, 3),
        "down_s": round(restarted - killed, 3),
        "listening_after_s": None if listening is None else round(listening - restarted, 3),
        "recovery_s": (round(slowest[1], 3) if len(recovered) == len(paths) else None),
        "slowest_path": slowest[0],
        "per_path_s": {p: round(s, 3) for p, s in sorted(recovered.items())},
        "not_recovered": sorted(set(paths) - set(recovered)),
        "within_budget": len(recovered) == len(paths) and slowest[1] <= budget,
    }
    log("%s: recovered in %s s (slowest: %s)" % (label, fault["recovery_s"], slowest[0]))
    return fault


async def soak(args, tmp):
    cluster = Cluster(tmp)
    record = Record()
    stop = asyncio.Event()
    workers = []
    try:
        await cluster.start_all()
        log("redis :%(redis)d, proxy A :%(A)d, proxy B :%(B)d" % cluster.ports)
        log("tunnel a %s on A, tunnel b %s on B; %d cores" % (
            cluster.client_ids["a"], cluster.client_ids["b"], os.cpu_count()))
        seed = 0
        for via in ("A", "B"):
            for tunnel in ("a", "b"):
                for kind in KINDS:
                    seed += 1
                    common = (record, via, cluster.ports[via], tunnel,
                              cluster.client_ids[tunnel])
                    if kind == "ws":
                        workers.append(WsWorker(*common, seed=args.seed * 100 + seed,
                                                pause=args.pause))
                    else:
                        workers.append(HttpWorker(*common, kind=kind,
                                                  seed=args.seed * 100 + seed,
                                                  pause=args.pause))
        paths = [w.path for w in workers]
        tasks = [asyncio.ensure_future(w.run(stop)) for w in workers]
        # Warm-up: B must learn where tunnel a is (and A, b) before "steady".
        warm = record.now()
        while not all(record.recovered_at(p, warm) is not None for p in paths):
            if record.now() - warm > 30:
                raise SetupError("not every path answered within 30 s of the start: %s" % (
                    [p for p in paths if record.recovered_at(p, warm) is None],))
            cluster.check_alive()
            await asyncio.sleep(0.1)
        schedule = Schedule(args.quick, args.duration)
        record.enter("steady")
        await asyncio.sleep(schedule.steady)
        faults = []
        for name, daemon in schedule.faults():
            cluster.check_alive()
            faults.append(await inject(cluster, record, name, daemon, schedule.down,
                                       args.budget, paths))
            record.enter("steady")
            await asyncio.sleep(schedule.settle)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), HUNG + 5)
        cluster.check_alive()
        return record, faults, paths
    finally:
        stop.set()
        for w in workers:
            if isinstance(w, HttpWorker):
                w.close()
        cluster.procs.stop_all()


# -- the report ------------------------------------------------------------------------


def summarize(record, faults, paths, args):
    # Warm-up: until every path has answered once (B learning where tunnel
    # a is, say); its errors are expected, its wrong or hung answers count.
    phases = list(dict.fromkeys(["warm-up"] + record.phases))
    rows = []
    totals = Counter()
    for phase in phases:
        c = record.counts[phase]
        totals.update(c)
        rows.append({"phase": phase, "answers": sum(c.values()), "ok": c["ok"],
                     "wrong": c["wrong"], "hung": c["hung"], "errors": c["error"],
                     "slowest_ok_s": round(record.slowest[phase]["ok"], 2),
                     "slowest_error_s": round(record.slowest[phase]["error"], 2),
                     "errors_by_status": dict(record.errors[phase].most_common())})
    steady_errors = record.counts["steady"]["error"]
    failures = []
    if totals["wrong"]:
        failures.append("%d wrong answers" % (totals["wrong"],))
    if totals["hung"]:
        failures.append("%d hung answers" % (totals["hung"],))
    if steady_errors:
        failures.append("%d errors while steady" % (steady_errors,))
    for fault in faults:
        if not fault["within_budget"]:
            failures.append("%s: recovery %s over the %g s budget (not recovered: %s)" % (
                fault["fault"], fault["recovery_s"], args.budget,
                ", ".join(fault["not_recovered"]) or "-"))
    return {
        "seconds": round(record.now(), 1), "quick": args.quick, "budget_s": args.budget,
        "hung_after_s": HUNG, "request_timeout_s": REQUEST_TIMEOUT,
        "total": {"answers": sum(totals.values()), "ok": totals["ok"],
                  "wrong": totals["wrong"], "hung": totals["hung"], "errors": totals["error"]},
        "phases": rows, "faults": faults,
        "paths": {p: dict(record.paths[p]) for p in paths},
        "errors_by_path": {p: dict(record.path_errors[p].most_common()) for p in paths},
        "wrong": record.wrong, "hung": record.hung,
        "failures": failures, "ok": not failures,
    }


def render(result):
    t = result["total"]
    print()
    print("soak with faults: %.0f s, budget %g s, hung = no answer in %g s "
          "(proxy --request-timeout %g s)" % (
              result["seconds"], result["budget_s"], result["hung_after_s"],
              result["request_timeout_s"]))
    print("answers total %d: ok %d, wrong %d, hung %d, errors %d" % (
        t["answers"], t["ok"], t["wrong"], t["hung"], t["errors"]))
    print()
    print("%-22s %7s %7s %5s %4s %6s %9s  %s" % (
        "phase", "answers", "ok", "wrong", "hung", "errors", "slowest", "errors by status"))
    for row in result["phases"]:
        print("%-22s %7d %7d %5d %4d %6d %9s  %s" % (
            row["phase"], row["answers"], row["ok"], row["wrong"], row["hung"],
            row["errors"], "%.1f/%.1f" % (row["slowest_ok_s"], row["slowest_error_s"]),
            ", ".join("%s x%d" % kv for kv in row["errors_by_status"].items())))
    print("(slowest: the longest wait, in s, for an ok answer / for an error)")
    print()
    print("%-26s %6s %11s %10s  %s" % ("fault", "down s", "listening s", "recovery s",
                                       "slowest path"))
    for f in result["faults"]:
        print("%-26s %6.1f %11s %10s  %s" % (
            f["fault"], f["down_s"],
            "-" if f["listening_after_s"] is None else "%.2f" % f["listening_after_s"],
            "-" if f["recovery_s"] is None else "%.2f" % f["recovery_s"],
            f["slowest_path"] or "-"))
    print()
    print("%-26s %8s %6s %5s %7s" % ("path", "ok", "wrong", "hung", "errors"))
    for path, c in result["paths"].items():
        print("%-26s %8d %6d %5d %7d" % (path, c.get("ok", 0), c.get("wrong", 0),
                                         c.get("hung", 0), c.get("error", 0)))
    print()
    if result["ok"]:
        print("SOAK: OK (0 wrong, 0 hung, every recovery within %g s)" % (result["budget_s"],))
    else:
        print("SOAK: FAILED: " + "; ".join(result["failures"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one of each fault, short phases (about 60 s)")
    parser.add_argument("--duration", type=float, default=600.0,
                        help="seconds to soak, without --quick (default 600)")
    parser.add_argument("--budget", type=float, default=BUDGET,
                        help="largest recovery time allowed, s (default %g)" % (BUDGET,))
    parser.add_argument("--pause", type=float, default=0.02,
                        help="pause of each worker between requests, s (default 0.02)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    parser.add_argument("--serve-local", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_local:
        serve_local(args.serve_local, args.name)
        return 0
    # SIGTERM, like Ctrl-C, stops everything started (soak's finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix="soak_faults.")
    try:
        record, faults, paths = asyncio.run(soak(args, tmp))
    except (SetupError, OSError, subprocess.SubprocessError) as e:
        log("set-up failed: %s" % (e,))
        log("logs kept in " + tmp)
        return 2
    result = summarize(record, faults, paths, args)
    render(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.keep or not result["ok"]:
        log("logs kept in " + tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
