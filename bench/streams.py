"""
The stream layer's rows, direct vs through one tunnel (our proxy and our
client, which negotiate streams), on 127.0.0.1:

  - a 64 MiB download and a 64 MiB upload (MB/s; the growth of the proxy's
    and the client's peak RSS, VmHWM, over the transfers);
  - time to first byte of a 10 MB download;
  - a slow visitor (curl --limit-rate) reading a 64 MiB download: the peak
    RSS growth while it reads, which the windows bound;
  - server-sent events: added latency from the local service's write to
    the visitor's read (p50/p99 over N events).

With C{--cross-instance}, the tunnel rows go through the other instance:
a throwaway redis-server, proxy instances A and B on it, the client on A,
the visitor on B (the streams cross Redis, relayed by A); the RSS columns
are A / B / the client.

Every body is checked by SHA-256.  Run: .venv/bin/python bench/streams.py
[--rounds 3] [--events 300] [--cross-instance] (bench/run runs it with its
defaults, then with --cross-instance).
"""

import argparse
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from processes import (  # noqa: E402  (bench/ is a script directory)
    PYTHON, Processes, SetupError, free_port, start_client, start_proxy, wait_listening)
from procfs import proc_status  # noqa: E402

MIB = 1024 * 1024
SIZE = 64 * MIB
TTFB_SIZE = 10 * 1000 * 1000


NGINX_CONF = """\
{user}daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    client_max_body_size 0;
    client_body_temp_path {tmp}/nginx-body;
    log_format upload '$request_length $status';
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
        # POST /up: nginx reads the whole body (mirror_request_body), then
        # answers 200 and logs the length it read.
        location = /up {{
            client_body_buffer_size 1m;
            mirror /_sink;
            mirror_request_body on;
            error_page 405 =200 @uploaded;
        }}
        location = /_sink {{ internal; return 204; }}
        location @uploaded {{
            access_log {tmp}/upload.log upload;
            return 200 "ok\\n";
        }}
        location /events {{ proxy_pass http://127.0.0.1:{sse_port}; proxy_buffering off; }}
    }}
}}
"""


SSE_SERVER = r'''
import socket, sys, threading, time
port, count, interval = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port)); server.listen(16)
def serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
    for n in range(count):
        time.sleep(interval)
        line = b"data: %d\n\n" % time.time_ns()
        conn.sendall(b"%x\r\n%s\r\n" % (len(line), line))
    conn.sendall(b"0\r\n\r\n"); conn.close()
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
'''


def _curl(*args):
    out = subprocess.run(["curl", "-s", "--max-time", "120", *args],
                         capture_output=True, check=True).stdout
    return out.decode()


def transfer(url, upload=None, limit=None):
    """
    One transfer with curl.

    @return: C{(seconds, ttfb, sha256 of what came back)}.
    """
    fmt = "%{time_total} %{time_starttransfer}"
    args = ["-o", "-", "-w", "\n" + fmt]
    if upload:
        args += ["--data-binary", "@" + upload, "-H", "Content-Type: application/octet-stream"]
    if limit:
        args += ["--limit-rate", limit]
    out = subprocess.run(["curl", "-s", "--max-time", "300", *args, url],
                         capture_output=True, check=True).stdout
    body, _, timing = out.rpartition(b"\n")
    total, ttfb = (float(x) for x in timing.split())
    return total, ttfb, hashlib.sha256(body).hexdigest()


def sse_latency(url, count):
    """
    Read C{count} events (each carrying its send time, ns) and return the
    delays in ms.
    """
    host, port, path = _split(url)
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n"
                 % (path.encode(), host.encode()))
    delays, buffer = [], b""
    while len(delays) < count:
        data = sock.recv(65536)
        if not data:
            break
        now = time.time_ns()
        buffer += data
        while b"data: " in buffer:
            start = buffer.index(b"data: ") + 6
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            delays.append((now - int(buffer[start:end])) / 1e6)
            buffer = buffer[end:]
    sock.close()
    return delays


def _split(url):
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    return host, int(port), "/" + path


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


class PeakWatch:
    """
    Samples VmRSS of some pids every 20 ms in a thread; the peak growth
    over the start value, in KiB.
    """

    def __init__(self, pids):
        self._pids = pids
        self.start = {pid: proc_status(pid, "VmRSS") for pid in pids}
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            for pid in self._pids:
                rss = proc_status(pid, "VmRSS") or 0
                self.peak[pid] = max(self.peak[pid], rss)

    def growth(self):
        self._stop.set()
        self._thread.join()
        return {pid: self.peak[pid] - self.start[pid] for pid in self._pids}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--cross-instance", action="store_true",
                        help="the visitor on instance B, the client on A (Redis)")
    args = parser.parse_args(argv)
    # SIGTERM (bench/run's trap, a test's deadline), like Ctrl-C, stops
    # everything started (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix="bench-streams-")
    procs = Processes(tmp)
    try:
        return run(procs, tmp, args)
    except SetupError as e:
        print("setup failed: %s" % e, file=sys.stderr)
        return 2
    finally:
        procs.stop_all()


def run(procs, tmp, args):
    www = os.path.join(tmp, "www")
    os.makedirs(www)
    big = os.urandom(SIZE)
    with open(os.path.join(www, "64m.bin"), "wb") as f:
        f.write(big)
    with open(os.path.join(www, "10m.bin"), "wb") as f:
        f.write(big[:TTFB_SIZE])
    with open(os.path.join(www, "up"), "w") as f:
        f.write("ok\n")
    upload = os.path.join(www, "64m.bin")
    big_sha = hashlib.sha256(big).hexdigest()
    del big

    sse_port = free_port()
    sse = procs.start("sse", [PYTHON, "-c", SSE_SERVER, str(sse_port), str(args.events), "0.01"])
    wait_listening(sse_port, sse, "the event source")
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(tmp=tmp, port=port, sse_port=sse_port,
                                  user="user root;\n" if os.geteuid() == 0 else ""))
    nginx = procs.start("nginx", ["/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                  else "nginx", "-c", conf, "-p", tmp])
    wait_listening(port, nginx, "nginx")
    extra = ()
    if args.cross_instance:
        redis = shutil.which("redis-server")
        if redis is None:
            raise SetupError("redis-server is not installed")
        redis_port = free_port()
        redis_proc = procs.start("redis", [
            redis, "--port", str(redis_port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", tmp])
        wait_listening(redis_port, redis_proc, "redis-server")
        extra = ("--bus", "redis://127.0.0.1:%d" % redis_port)
    proxy_port = free_port()
    proxy = start_proxy(procs, "proxy", proxy_port, extra)
    wait_listening(proxy_port, proxy, "the proxy")
    client, client_id = start_client(procs, proxy, proxy_port, "http://127.0.0.1:%d" % port)
    pids = [proxy.pid]
    visitor_port = proxy_port
    if args.cross_instance:
        visitor_port = free_port()
        other = start_proxy(procs, "proxyB", visitor_port, extra)
        wait_listening(visitor_port, other, "proxy B")
        pids.append(other.pid)
    pids.append(client.pid)
    bases = {"direct": "http://127.0.0.1:%d" % port,
             "tunnel": "http://127.0.0.1:%d/proxy/request/%s" % (visitor_port, client_id)}
    rows = []

    for kind, path, up in (("download 64 MiB", "/64m.bin", None),
                           ("upload 64 MiB", "/up", upload)):
        figures = {}
        for where, base in bases.items():
            watch = PeakWatch(pids) if where == "tunnel" else None
            rates = []
            for _ in range(args.rounds):
                total, _, sha = transfer(base + path, upload=up)
                if up is None and sha != big_sha:
                    raise SetupError("%s %s: body differs" % (where, kind))
                rates.append(SIZE / total / 1e6)
            growth = watch.growth() if watch else None
            figures[where] = (sorted(rates)[len(rates) // 2], growth)
        if up is not None:
            with open(os.path.join(tmp, "upload.log")) as f:
                lengths = [line.split() for line in f if line.strip()]
            if any(int(length) < SIZE for length, _ in lengths):
                raise SetupError("an upload was not fully read: %r" % lengths)
        rows.append((kind, figures))

    ttfb = {}
    for where, base in bases.items():
        ttfb[where] = sorted(transfer(base + "/10m.bin")[1] * 1000
                             for _ in range(args.rounds))[args.rounds // 2]

    watch = PeakWatch(pids)
    total, _, sha = transfer(bases["tunnel"] + "/64m.bin", limit="16M")
    if sha != big_sha:
        raise SetupError("slow visitor: body differs")
    slow = (SIZE / total / 1e6, watch.growth())

    sse = {where: sse_latency(base + "/events", args.events)
           for where, base in bases.items()}

    def mib(growth):
        return " / ".join("%.1f" % (growth[pid] / 1024) for pid in pids) + " MiB"

    if args.cross_instance:
        print("stream rows through the other instance (client on A, visitor on B, "
              "Redis between; MB = 10^6 bytes)")
        who = "A / B / client"
    else:
        print("stream rows (one tunnel, our proxy + our client; MB = 10^6 bytes)")
        who = "proxy / client"
    print("%-22s | %10s | %10s | %6s | %s" % ("row", "direct", "tunnel", "ratio",
                                             "peak RSS growth " + who))
    for kind, figures in rows:
        direct, tunnel = figures["direct"][0], figures["tunnel"][0]
        print("%-22s | %7.0f MB/s | %7.0f MB/s | %6.3f | %s" % (
            kind, direct, tunnel, tunnel / direct, mib(figures["tunnel"][1])))
    print("%-22s | %7.1f ms | %7.1f ms |" % ("first byte of 10 MB", ttfb["direct"],
                                              ttfb["tunnel"]))
    print("%-22s | %10s | %7.1f MB/s |        | %s" % (
        "slow visitor (16 MB/s)", "", slow[0], mib(slow[1])))
    d50, d99 = percentile(sse["direct"], 50), percentile(sse["direct"], 99)
    t50, t99 = percentile(sse["tunnel"], 50), percentile(sse["tunnel"], 99)
    print("%-22s | p50 %.2f p99 %.2f ms | p50 %.2f p99 %.2f ms | added p50 %.2f p99 %.2f ms"
          % ("SSE event latency", d50, d99, t50, t99, t50 - d50, t99 - d99))
    print("(%d events per side; every body checked by SHA-256; uploads fully read)"
          % len(sse["tunnel"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
