#!/usr/bin/env python3
"""
Same-instance vs cross-instance request path with the Redis bus.

Starts, on 127.0.0.1 and free ports, in a temporary directory:

  - a throwaway C{redis-server} (no persistence);
  - proxy instances A and B: C{twistd -n brickproxy --bus redis://...},
    each its own process, with a rate limit too high to matter (the shared
    limiter still runs its Redis script on every request, as in
    production);
  - a local service answering every GET with 1 KB (a tiny asyncio server
    in its own process: C{--serve-local});
  - C{twistd -n brickclient} connected to A.

Then, for each path, sends C{--requests} GETs of 1 KB (after a warm-up)
over C{--concurrency} keep-alive HTTP/1.1 connections, each sending its
next request as soon as the previous answer is complete, and prints
requests/second and latency percentiles:

  - same instance: through A, which holds the tunnel (no bus involved);
  - cross instance: through B, whose requests travel A <-> B over Redis
    PUBLISH/SUBSCRIBE.

Every answer must be 200 with the expected 1 KB body, or the run fails.
All processes share the machine's cores with the load generator, so
compare the two rows rather than reading the numbers as absolutes.

    .venv/bin/python bench/redis_paths.py [--requests 2000] [--concurrency 16]
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time

# Process handling is shared with the main benchmark (bench/processes.py).
from processes import Processes, SetupError, free_port, wait_listening  # noqa: E402

BODY = bytes(range(256)) * 4  # 1 KB, deterministic



def log(text):
    print("[redis_paths %s] %s" % (time.strftime("%H:%M:%S"), text),
          file=sys.stderr, flush=True)


# -- the local service ----------------------------------------------------------


class _LocalService(asyncio.Protocol):
    """
    HTTP/1.1 keep-alive: answers every request with L{BODY}.  Requests are
    GETs without a body (the benchmark's only kind).
    """

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.buffer = self.buffer[end + 4:]
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


def serve_local(port):
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_LocalService, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- processes ----------------------------------------------------------------------


def wait_for_file(path, procs, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise SetupError("%s exited (status %s)" % (proc.bench_name, proc.returncode))
        if os.path.exists(path) and os.path.getsize(path):
            return
        time.sleep(0.05)
    raise SetupError("%s not there after %gs" % (what, timeout))


# -- the load generator ---------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """
    One keep-alive connection sending GETs back to back while the shared
    budget lasts, recording each request's latency.
    """

    def __init__(self, request, budget, latencies, done):
        self.request = request
        self.budget = budget
        self.latencies = latencies
        self.done = done
        self.buffer = bytearray()

    def connection_made(self, transport):
        self.transport = transport
        self.send_next()

    def send_next(self):
        if self.budget[0] <= 0:
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        self.budget[0] -= 1
        self.started = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data):
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        length = None
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length is None:
            self.fail("answer without Content-Length: %r" % (head,))
            return
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        if not head[0].startswith("HTTP/1.1 200") or body != BODY:
            self.fail("bad answer: %s, %d bytes: %r" % (head[0], len(body), body[:200]))
            return
        self.latencies.append(time.perf_counter() - self.started)
        self.send_next()

    def connection_lost(self, exc):
        if not self.done.done():
            if self.budget[0] > 0 or exc is not None:
                self.done.set_exception(SetupError("connection lost: %r" % (exc,)))
            else:
                self.done.set_result(None)

    def fail(self, why):
        if not self.done.done():
            self.done.set_exception(SetupError(why))
        self.transport.close()


async def load(port, path, requests, concurrency):
    """
    @return: C{(seconds, latencies)}.
    """
    loop = asyncio.get_running_loop()
    request = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path, port)).encode()
    budget = [requests]
    latencies = []
    started = time.perf_counter()
    waits = []
    for _ in range(concurrency):
        done = loop.create_future()
        await loop.create_connection(
            lambda done=done: _Connection(request, budget, latencies, done),
            "127.0.0.1", port)
        waits.append(done)
    await asyncio.wait_for(asyncio.gather(*waits), timeout=300)
    return time.perf_counter() - started, latencies


def percentile(sorted_values, p):
    index = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values))) - 1))
    return sorted_values[index]


def summarize(name, seconds, latencies):
    values = sorted(latencies)
    return {
        "path": name,
        "requests": len(values),
        "rps": len(values) / seconds,
        "p50_ms": percentile(values, 50) * 1000,
        "p90_ms": percentile(values, 90) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "max_ms": values[-1] * 1000,
    }


# -- the run ----------------------------------------------------------------------------


def run(args):
    redis = shutil.which("redis-server")
    if redis is None:
        raise SetupError("redis-server is not installed (apt-get install redis-server)")
    bindir = os.path.dirname(sys.executable)
    twistd = os.path.join(bindir, "twistd")
    tmp = tempfile.mkdtemp(prefix="redis_paths.")
    procs = Processes(tmp)
    try:
        redis_port = free_port()
        redis_proc = procs.start("redis", [
            redis, "--port", str(redis_port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", tmp])
        wait_listening(redis_port, redis_proc, "redis-server")
        bus = "redis://127.0.0.1:%d" % (redis_port,)

        ports = {}
        for name in ("A", "B"):
            port = ports[name] = free_port()
            proc = procs.start("proxy" + name, [
                twistd, "-n", "--pidfile=", "--logfile=" + os.path.join(tmp, "proxy%s.log" % name),
                "brickproxy", "--bus", bus, "--domain", "localhost",
                "--listen", "tcp:%d:interface=127.0.0.1" % (port,),
                "--base", "http://127.0.0.1:%d" % (port,),
                "--rate-limit", "1000000000/1"])
            wait_listening(port, proc, "proxy " + name)

        local_port = free_port()
        local = procs.start("local", [sys.executable, os.path.abspath(__file__),
                                      "--serve-local", str(local_port)])
        wait_listening(local_port, local, "local service")

        state = os.path.join(tmp, "state.json")
        procs.start("client", [
            twistd, "-n", "--pidfile=", "--logfile=" + os.path.join(tmp, "client.log"),
            "brickclient", "--proxy", "http://127.0.0.1:%d" % (ports["A"],),
            "--local", "http://127.0.0.1:%d" % (local_port,),
            "--key", os.path.join(tmp, "key.pem"), "--state", state])
        wait_for_file(state, procs.running, "client registration")
        with open(state) as f:
            client_id = json.load(f)["clientID"]
        log("tunnel %s registered on A; %d cores" % (client_id, os.cpu_count()))
        path = "/proxy/request/%s/kb" % (client_id,)

        results = []
        for name, instance in (("same instance (via A)", "A"),
                               ("cross instance (via B)", "B")):
            port = ports[instance]
            # The directory may not know the tunnel for a moment after the
            # registration: the warm-up also waits for that.
            deadline = time.monotonic() + 10
            while True:
                try:
                    asyncio.run(load(port, path, 1, 1))
                    break
                except SetupError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            asyncio.run(load(port, path, args.warmup, args.concurrency))
            for round_number in range(args.rounds):
                seconds, latencies = asyncio.run(
                    load(port, path, args.requests, args.concurrency))
                row = summarize(name, seconds, latencies)
                row["round"] = round_number + 1
                results.append(row)
                log("%(path)s round %(round)d: %(rps).0f req/s, p50 %(p50_ms).2f ms, "
                    "p99 %(p99_ms).2f ms" % row)
        for proc in procs.running:
            if proc.poll() is not None:
                raise SetupError("%s died during the run" % (proc.bench_name,))
        return results
    finally:
        procs.stop_all()
        if args.keep:
            log("logs kept in " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def render(results, args):
    print()
    print("GET 1 KB, %d requests per round, concurrency %d, keep-alive, %d cores"
          % (args.requests, args.concurrency, os.cpu_count()))
    print("%-24s %5s %9s %8s %8s %8s %8s" % ("path", "round", "req/s", "p50 ms",
                                             "p90 ms", "p99 ms", "max ms"))
    for row in results:
        print("%-24s %5d %9.0f %8.2f %8.2f %8.2f %8.2f" % (
            row["path"], row["round"], row["rps"], row["p50_ms"], row["p90_ms"],
            row["p99_ms"], row["max_ms"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    parser.add_argument("--serve-local", type=int, metavar="PORT",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_local:
        serve_local(args.serve_local)
        return 0
    # SIGTERM (bench/run's trap, a test's deadline), like Ctrl-C, stops
    # everything started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        results = run(args)
    except SetupError as e:
        log("failed: %s" % (e,))
        return 1
    render(results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
