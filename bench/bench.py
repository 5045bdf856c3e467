"""
The benchmark driver, started by bench/run (which installs the tools, sets
up .venv, makes the temp dir and owns the cleanup trap).  See bench/README.md.

It starts, all on 127.0.0.1 and free ports, all in the temp dir:

  - nginx (the fast local backend: static 1 KB / 100 KB files, a POST upload
    sink that really reads the body, and /ws proxied to the echo server);
  - bench/ws_echo.py (the websocket echo backend);
  - twistd brickproxy and twistd brickclient (--local = nginx);

checks that tunnelled answers equal direct ones byte for byte, measures
direct vs tunnel side by side, the memory of the proxy and the client, the
proxy's memory per idle tunnel (a fresh proxy and bench/many_tunnels.py),
and a sustained soak; prints one table, optionally writes JSON.

Exit status: 0 all correctness checks passed, 1 a correctness check failed,
2 the set-up failed.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
PYTHON = os.path.join(VENV_BIN, "python")
TWISTD = os.path.join(VENV_BIN, "twistd")

SIZE_1K = 1024
SIZE_100K = 100 * 1024
WS_MESSAGE = 100
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: "others" CPU (% of one core) above which a row is flagged as noisy.
NOISE_PERCENT = 25

TARGETS = {
    "get1k_c16_rps": 3000.0,        # req/s, GET 1 KB c=16 through one tunnel
    "added_p50_c1_ms": 1.0,         # added median latency at c=1
    "big_c16_rps": 800.0,           # GET/POST 100 KB c=16
    "ws_1_rps": 1500.0,             # ws round trips/s, one connection
    "ws_16_rps": 3000.0,            # ws round trips/s, 16 connections
    "idle_tunnel_kib": 50.0,        # proxy memory per idle tunnel
}


class SetupError(Exception):
    pass


def log(text):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), text), file=sys.stderr, flush=True)


# -- processes -----------------------------------------------------------------

def _start_time(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


class Processes:
    """
    Everything we start.  Each pid (with its start time, so the shell trap
    never signals a recycled pid) is appended to TMP/pids for bench/run's
    trap, the last line of defence.
    """

    def __init__(self, tmp):
        self.tmp = tmp
        self.running = []

    def start(self, name, argv, stdin=subprocess.DEVNULL, stdout=None, **kw):
        logfile = open(os.path.join(self.tmp, name + ".out"), "ab")
        proc = subprocess.Popen(
            argv, stdin=stdin, stdout=stdout if stdout is not None else logfile,
            stderr=logfile, cwd=self.tmp, **kw)
        logfile.close()
        proc.bench_name = name
        with open(os.path.join(self.tmp, "pids"), "a") as f:
            f.write("%d %s\n" % (proc.pid, _start_time(proc.pid) or "?"))
        self.running.append(proc)
        return proc

    def stop(self, proc, timeout=5.0):
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self):
        for proc in reversed(list(self.running)):
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 8
        for proc in reversed(list(self.running)):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.running = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError("%s exited (status %s) before listening" % (what, proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SetupError("%s did not listen on port %d within %gs" % (what, port, timeout))


def proc_status(pid, field):
    """VmRSS / VmHWM of a process, in KiB (None if gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_ticks(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except OSError:
        return None


def cpu_ticks_tree(pid):
    """CPU ticks of a process and its direct children (nginx master+worker)."""
    total = cpu_ticks(pid) or 0
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    for child in children:
        total += cpu_ticks(child) or 0
    return total


def machine_ticks():
    """
    (busy, total) jiffies of the whole machine, from /proc/stat.  Busy is
    user + nice + system + steal: time that processes account for.  irq and
    softirq are left out, as they are not in any process's utime/stime, and
    on loopback they are mostly our own traffic.
    """
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = [
            int(v) for v in f.readline().split()[1:9]]
    return (user + nice + system + steal,
            user + nice + system + idle + iowait + irq + softirq + steal)


class CpuMeter:
    """CPU used by our processes, and by the whole machine, over a run."""

    def __init__(self, pids):
        self.pids = pids
        self.start = {name: cpu_ticks_tree(pid) for name, pid in pids.items()}
        self.machine = machine_ticks()
        self.children = self._children()
        self.t0 = time.monotonic()

    @staticmethod
    def _children():
        # The load generator (wrk, ab, wsbench.py) is a child we wait for.
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def read(self, requests=None):
        elapsed = time.monotonic() - self.t0
        busy0, total0 = self.machine
        busy1, total1 = machine_ticks()
        machine = 100.0 * (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)
        out = {"percent": {}, "seconds": {}}
        for name, pid in self.pids.items():
            seconds = (cpu_ticks_tree(pid) - self.start[name]) / float(CLK_TCK)
            out["seconds"][name] = round(seconds, 2)
            out["percent"][name] = round(100.0 * seconds / elapsed, 1)
        loadgen = self._children() - self.children
        out["seconds"]["load generator"] = round(loadgen, 2)
        out["percent"]["load generator"] = round(100.0 * loadgen / elapsed, 1)
        # Everything else on the machine (other users' jobs, kernel threads):
        # noise to keep in mind when reading the numbers.
        out["machine_busy_percent"] = round(machine, 1)
        out["others_percent"] = round(max(0.0, machine - sum(out["percent"].values())), 1)
        if requests:
            out["us_per_request"] = {name: round(sec * 1e6 / requests, 1)
                                     for name, sec in out["seconds"].items()}
        return out


# -- the backend files and config ------------------------------------------------

def deterministic_bytes(size, seed):
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%s-%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:size])


def nginx_config(tmp, port, echo_port):
    user = "user root;\n" if os.geteuid() == 0 else ""
    return """\
# Generated by bench/bench.py; everything lives in {tmp}.
{user}daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-tmp/body;
    proxy_temp_path {tmp}/nginx-tmp/proxy;
    fastcgi_temp_path {tmp}/nginx-tmp/fastcgi;
    uwsgi_temp_path {tmp}/nginx-tmp/uwsgi;
    scgi_temp_path {tmp}/nginx-tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    log_format upload '$request_length $status';
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {tmp}/www;
        # POST: the mirror directive makes nginx read the whole request body
        # before the request goes on (mirror_request_body on); the static
        # handler then answers 405 for a POST, turned into 200 "ok".  Every
        # answered upload is logged with its $request_length, which the
        # benchmark checks.  (A bare "return 200" would answer before the
        # body arrived and discard it afterwards.)
        location = /upload {{
            client_max_body_size 1m;
            client_body_buffer_size 256k;
            mirror /_sink;
            mirror_request_body on;
            error_page 405 =200 @uploaded;
        }}
        location = /_sink {{ internal; return 204; }}
        location @uploaded {{
            access_log {tmp}/upload.log upload;
            default_type text/plain;
            return 200 "ok\\n";
        }}
        location /ws {{
            proxy_pass http://127.0.0.1:{echo_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_buffering off;
        }}
    }}
}}
""".format(tmp=tmp, user=user, port=port, echo_port=echo_port)


# -- load generators ---------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def run_wrk(url, conns, duration, script=None, timeout_s=10):
    argv = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % duration, "--latency",
            "--timeout", "%ds" % timeout_s]
    if script:
        argv += ["-s", script]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True,
                         timeout=duration + timeout_s + 30)
    text = out.stdout + out.stderr
    result = {"tool": "wrk", "requests": 0, "rps": 0.0, "p50_ms": None,
              "p99_ms": None, "errors": 0, "non2xx": 0, "raw": text}
    m = re.search(r"(\d+) requests in", text)
    if m:
        result["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        result["rps"] = float(m.group(1))
    for pct, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M):
        result["p%s_ms" % pct] = float(value) * _UNITS[unit]
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        result["errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        result["non2xx"] = int(m.group(1))
    if out.returncode != 0 or not result["requests"]:
        result["errors"] = max(result["errors"], 1)
        result["failure"] = "wrk exited %d: %s" % (out.returncode, text.strip()[-300:])
    return result


def run_ab(url, conns, duration, tmp, post_file=None):
    csv = os.path.join(tmp, "ab-percentiles.csv")
    # -t first: it sets -n to 50000, which the -n after it raises again.
    argv = ["ab", "-q", "-r", "-s", "30", "-c", str(conns), "-t", str(duration),
            "-n", str(duration * 100000), "-e", csv]
    if post_file:
        argv += ["-p", post_file, "-T", "application/octet-stream"]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    text = out.stdout + out.stderr
    result = {"tool": "ab", "requests": 0, "rps": 0.0, "p50_ms": None,
              "p99_ms": None, "errors": 0, "non2xx": 0, "raw": text}
    m = re.search(r"Complete requests:\s+(\d+)", text)
    if m:
        result["requests"] = int(m.group(1))
    m = re.search(r"Requests per second:\s+([\d.]+)", text)
    if m:
        result["rps"] = float(m.group(1))
    m = re.search(r"Failed requests:\s+(\d+)", text)
    if m:
        result["errors"] += int(m.group(1))
    m = re.search(r"Write errors:\s+(\d+)", text)
    if m:
        result["errors"] += int(m.group(1))
    m = re.search(r"Non-2xx responses:\s+(\d+)", text)
    if m:
        result["non2xx"] = int(m.group(1))
    try:
        with open(csv) as f:
            for line in f:
                pct, _, value = line.strip().partition(",")
                if pct in ("50", "99"):
                    result["p%s_ms" % pct] = float(value)
        os.unlink(csv)
    except (OSError, ValueError):
        pass
    if out.returncode != 0 or not result["requests"]:
        result["errors"] = max(result["errors"], 1)
        result["failure"] = "ab exited %d: %s" % (out.returncode, text.strip()[-300:])
    return result


def run_wsbench(url, conns, duration, warmup):
    argv = [PYTHON, os.path.join(HERE, "wsbench.py"), "--url", url,
            "--connections", str(conns), "--duration", str(duration),
            "--size", str(WS_MESSAGE), "--warmup", str(warmup)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + warmup + 60)
    try:
        data = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"tool": "wsbench", "requests": 0, "rps": 0.0, "p50_ms": None,
                "p99_ms": None, "errors": 1, "non2xx": 0,
                "failure": "wsbench failed: %s" % (out.stderr.strip()[-300:],)}
    return {
        "tool": "wsbench", "requests": data["round_trips"], "rps": data["rps"],
        "p50_ms": data["p50_us"] / 1000.0 if data["p50_us"] is not None else None,
        "p99_ms": data["p99_us"] / 1000.0 if data["p99_us"] is not None else None,
        "errors": data["errors"], "non2xx": 0,
        "failure": "; ".join(data["error_samples"]) or None,
    }


# -- the benchmark ---------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = args.tmp
        self.procs = Processes(self.tmp)
        self.failures = []
        self.results = {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "kernel": platform.release(),
            },
            "settings": {
                "duration_s": args.duration,
                "quick": args.quick,
                "soak_s": args.soak,
                "idle_tunnels": args.tunnels,
                "ws_message_bytes": WS_MESSAGE,
                "load_tools": "wrk -t1 (keep-alive), ab (no keep-alive), bench/wsbench.py",
                "retry_noisy": args.retry_noisy,
            },
            "http": [],
            "ws": [],
        }

    def fail(self, text):
        log("CHECK FAILED: " + text)
        self.failures.append(text)

    # -- set-up --

    def setup(self):
        tmp = self.tmp
        os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin"
        missing = [tool for tool in ("nginx", "wrk", "ab", "curl") if not shutil.which(tool)]
        if missing:
            raise SetupError("not found on PATH: %s (bench/run installs them)" % ", ".join(missing))
        www = os.path.join(tmp, "www")
        os.makedirs(www)
        os.makedirs(os.path.join(tmp, "nginx-tmp"))
        os.chmod(tmp, 0o755)
        self.files = {
            "/1k.bin": deterministic_bytes(SIZE_1K, b"bench-1k"),
            "/100k.bin": deterministic_bytes(SIZE_100K, b"bench-100k"),
            "/upload": b"ok\n",
        }
        for name, data in self.files.items():
            with open(os.path.join(www, name.lstrip("/")), "wb") as f:
                f.write(data)
        self.post_file = os.path.join(tmp, "post-100k.bin")
        with open(self.post_file, "wb") as f:
            f.write(deterministic_bytes(SIZE_100K, b"bench-post"))
        self.post_lua = os.path.join(tmp, "post.lua")
        with open(self.post_lua, "w") as f:
            f.write(
                'local f = assert(io.open(%s, "rb"))\n'
                "wrk.body = f:read(\"*a\")\nf:close()\n"
                'wrk.method = "POST"\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n'
                % json.dumps(self.post_file))

        self.echo_port = free_port()
        self.echo = self.procs.start("ws-echo", [
            PYTHON, os.path.join(HERE, "ws_echo.py"), "--port", str(self.echo_port)])
        wait_listening(self.echo_port, self.echo, "the ws echo backend")

        self.nginx_port = free_port()
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_config(tmp, self.nginx_port, self.echo_port))
        self.nginx = self.procs.start("nginx", [
            shutil.which("nginx") or "nginx", "-c", conf, "-p", tmp,
            "-e", os.path.join(tmp, "nginx-error.log")])
        wait_listening(self.nginx_port, self.nginx, "nginx")

        self.proxy_port = free_port()
        self.proxy = self.start_proxy("proxy", self.proxy_port)
        wait_listening(self.proxy_port, self.proxy, "the proxy")

        state = os.path.join(tmp, "state.json")
        self.client = self.procs.start("client", [
            TWISTD, "-n", "--pidfile=", "--logfile=" + os.path.join(tmp, "client.log"),
            "brickclient", "--proxy", "http://127.0.0.1:%d" % self.proxy_port,
            "--local", "http://127.0.0.1:%d" % self.nginx_port,
            "--key", os.path.join(tmp, "key.pem"), "--state", state])
        deadline = time.monotonic() + 30
        while not os.path.exists(state):
            for proc in (self.proxy, self.client):
                if proc.poll() is not None:
                    raise SetupError("%s exited (status %s)" % (proc.bench_name, proc.returncode))
            if time.monotonic() > deadline:
                raise SetupError("the client did not register within 30 s")
            time.sleep(0.05)
        with open(state) as f:
            self.client_id = json.load(f)["clientID"]
        self.direct_base = "http://127.0.0.1:%d" % self.nginx_port
        self.tunnel_base = "http://127.0.0.1:%d/proxy/request/%s" % (self.proxy_port, self.client_id)
        self.bases = {"direct": self.direct_base, "tunnel": self.tunnel_base}
        log("nginx :%d, ws echo :%d, proxy :%d, client %s (tmp %s)" % (
            self.nginx_port, self.echo_port, self.proxy_port, self.client_id, tmp))

    def start_proxy(self, name, port):
        return self.procs.start(name, [
            TWISTD, "-n", "--pidfile=", "--logfile=" + os.path.join(self.tmp, name + ".log"),
            "brickproxy", "--domain", "localhost",
            "--listen", "tcp:%d:interface=127.0.0.1" % port,
            "--base", "http://127.0.0.1:%d" % port,
            "--rate-limit", "100000000/1"])

    # -- correctness --

    def curl(self, url, post=None):
        out_file = os.path.join(self.tmp, "curl.body")
        argv = ["curl", "-sS", "--max-time", "30", "-o", out_file, "-w", "%{http_code}"]
        if post:
            argv += ["-H", "Content-Type: application/octet-stream", "--data-binary", "@" + post]
        argv.append(url)
        out = subprocess.run(argv, capture_output=True, text=True)
        try:
            with open(out_file, "rb") as f:
                body = f.read()
        except OSError:
            body = b""
        return out.stdout.strip(), body, out.stderr.strip()

    def upload_lengths(self):
        try:
            with open(os.path.join(self.tmp, "upload.log")) as f:
                return [int(line.split()[0]) for line in f if line.strip()]
        except OSError:
            return []

    def check_bodies(self):
        checks = []
        for path, post in (("/1k.bin", None), ("/100k.bin", None), ("/upload", self.post_file)):
            expected = self.files[path]
            digests = {}
            for target, base in self.bases.items():
                before = len(self.upload_lengths())
                status, body, err = self.curl(base + path, post)
                digests[target] = hashlib.sha256(body).hexdigest()
                what = "%s %s %s" % ("POST" if post else "GET", path, target)
                if status != "200":
                    self.fail("%s: HTTP status %s %s" % (what, status, err))
                elif body != expected:
                    self.fail("%s: body differs from the file (%d bytes, sha256 %s)"
                              % (what, len(body), digests[target][:16]))
                if post:
                    lengths = self.upload_lengths()[before:]
                    if not lengths or lengths[-1] < SIZE_100K:
                        self.fail("%s: nginx did not receive the 100 KB body (%s)" % (what, lengths))
            same = digests["direct"] == digests["tunnel"]
            if not same:
                self.fail("%s %s: tunnel body sha256 %s != direct %s" % (
                    "POST" if post else "GET", path, digests["tunnel"], digests["direct"]))
            checks.append({"path": path, "method": "POST" if post else "GET",
                           "sha256_direct": digests["direct"],
                           "sha256_tunnel": digests["tunnel"], "equal": same})
        self.results["body_checks"] = checks
        log("bodies: tunnel == direct for %s" % ", ".join(
            "%s %s" % (c["method"], c["path"]) for c in checks if c["equal"]))

    # -- measurements --

    def meters(self):
        return CpuMeter({"proxy": self.proxy.pid, "client": self.client.pid,
                         "nginx": self.nginx.pid, "echo": self.echo.pid})

    def check_row(self, row):
        if row["errors"] or row["non2xx"] or not row["requests"]:
            self.fail("%s %s c=%d %s: %d errors, %d non-2xx, %d requests%s" % (
                row["test"], row.get("mode", ""), row["concurrency"], row["target"],
                row["errors"], row["non2xx"], row["requests"],
                (" (" + row["failure"] + ")") if row.get("failure") else ""))
        row.pop("raw", None)

    def measure_pair(self, kind, labels, run):
        """
        Run C{run(target)} for direct, then tunnel.  With --retry-noisy N,
        a pair during which other processes on the machine used more than
        NOISE_PERCENT of a core is measured again, up to N times, and the
        quietest attempt is kept (every attempt is checked for errors).
        """
        best = None
        for attempt in range(1, self.args.retry_noisy + 2):
            rows = {}
            for target in ("direct", "tunnel"):
                meter = self.meters()
                row = run(target)
                row.update(labels, target=target, cpu=meter.read(row["requests"]))
                log("%-11s %-13s c=%-3d %-6s %9.1f %s  p50 %s ms  p99 %s ms  err %d/%d  "
                    "others %.0f%%" % (
                        row["test"], row["mode"], row["concurrency"], target, row["rps"],
                        "rt/s " if kind == "ws" else "req/s", _fmt(row["p50_ms"]),
                        _fmt(row["p99_ms"]), row["errors"], row["non2xx"],
                        row["cpu"]["others_percent"]))
                self.check_row(row)
                self.check_alive()
                rows[target] = row
            noise = max(r["cpu"]["others_percent"] for r in rows.values())
            if best is None or noise < best[0]:
                best = (noise, rows)
            if noise <= NOISE_PERCENT or attempt > self.args.retry_noisy:
                break
            log("other processes used %.0f%% of a core meanwhile: measuring again" % noise)
        for target in ("direct", "tunnel"):
            best[1][target]["attempts"] = attempt
            self.results[kind].append(best[1][target])

    def http_matrix(self):
        d = self.args.duration
        cases = [
            ("GET 1 KB", "/1k.bin", None, 1),
            ("GET 1 KB", "/1k.bin", None, 16),
            ("GET 1 KB", "/1k.bin", None, 64),
            ("GET 100 KB", "/100k.bin", None, 16),
            ("POST 100 KB", "/upload", self.post_file, 16),
        ]
        for mode in ("keep-alive", "no keep-alive"):
            for test, path, post, conns in cases:
                def run(target, mode=mode, path=path, post=post, conns=conns):
                    url = self.bases[target] + path
                    if mode == "keep-alive":
                        return run_wrk(url, conns, d, script=self.post_lua if post else None)
                    return run_ab(url, conns, d, self.tmp, post_file=post)
                self.measure_pair("http", dict(test=test, mode=mode, concurrency=conns), run)

    def ws_runs(self):
        d = self.args.duration
        warmup = 0.3 if self.args.quick else 1.0
        urls = {
            "direct": "ws://127.0.0.1:%d/ws" % self.nginx_port,
            "tunnel": "ws://127.0.0.1:%d/proxy/request/%s/ws" % (self.proxy_port, self.client_id),
        }
        for conns in (1, 16):
            self.measure_pair(
                "ws", dict(test="WS echo 100 B", mode="round trips", concurrency=conns),
                lambda target, conns=conns: run_wsbench(urls[target], conns, d, warmup))

    def check_alive(self):
        for proc in (self.nginx, self.echo, self.proxy, self.client):
            if proc.poll() is not None:
                raise SetupError("%s died (status %s)" % (proc.bench_name, proc.returncode))

    def check_uploads(self):
        lengths = self.upload_lengths()
        short = [n for n in lengths if n < SIZE_100K]
        self.results["uploads"] = {"answered": len(lengths), "short_bodies": len(short)}
        if short:
            self.fail("nginx answered %d uploads without the full 100 KB body" % len(short))
        log("uploads: nginx answered %d POSTs, each after reading the full body" % len(lengths))

    def profile(self):
        directory = os.path.abspath(self.args.profile)
        os.makedirs(directory, exist_ok=True)
        pyspy = os.path.join(VENV_BIN, "py-spy")
        if not os.path.exists(pyspy):
            pyspy = shutil.which("py-spy")
        if not pyspy:
            self.fail("--profile: py-spy is not installed")
            return
        seconds = self.args.profile_seconds
        url = self.tunnel_base + "/1k.bin"
        log("profiling proxy and client for %d s under GET 1 KB c=16 keep-alive" % seconds)
        wrk = self.procs.start("wrk-profile", [
            "wrk", "-t1", "-c16", "-d%ds" % (seconds + 3), "--latency", "--timeout", "10s", url],
            stdout=subprocess.PIPE)
        time.sleep(1.0)
        meter = self.meters()
        spies = {}
        for name, proc in (("proxy", self.proxy), ("client", self.client)):
            out = os.path.join(directory, "%s.speedscope.json" % name)
            spies[name] = (out, self.procs.start("py-spy-" + name, [
                pyspy, "record", "-p", str(proc.pid), "-d", str(seconds), "-r", "100",
                "--format", "speedscope", "-o", out]))
        for name, (out, spy) in spies.items():
            spy.wait(seconds + 60)
        cpu_all = meter.read()
        cpu = cpu_all["percent"]
        text = wrk.communicate(timeout=seconds + 60)[0].decode()
        self.procs.stop(wrk)
        m = re.search(r"Requests/sec:\s+([\d.]+)", text)
        profile = {"seconds": seconds, "rps_during_profile": float(m.group(1)) if m else None,
                   "cpu_percent": cpu, "others_percent": cpu_all["others_percent"], "files": {}}
        for name, (out, spy) in spies.items():
            profile["files"][name] = out
            profile[name] = summarize_speedscope(out, seconds)
        self.results["profile"] = profile

    def soak(self):
        seconds = self.args.soak
        if seconds <= 0:
            return
        if seconds >= 20:
            warmup, interval = 10.0, 5.0
        else:
            warmup, interval = seconds / 3.0, max(0.5, seconds / 6.0)
        log("soak: GET 1 KB c=16 keep-alive through the tunnel for %d s" % seconds)
        url = self.tunnel_base + "/1k.bin"
        wrk = self.procs.start("wrk-soak", [
            "wrk", "-t1", "-c16", "-d%ds" % seconds, "--latency", "--timeout", "10s", url],
            stdout=subprocess.PIPE)
        meter = self.meters()
        t0 = time.monotonic()
        samples = []
        next_at = warmup
        while next_at <= seconds - 0.2:
            time.sleep(max(0.0, t0 + next_at - time.monotonic()))
            samples.append({"t": round(time.monotonic() - t0, 1),
                            "proxy_rss_kib": proc_status(self.proxy.pid, "VmRSS"),
                            "client_rss_kib": proc_status(self.client.pid, "VmRSS")})
            next_at += interval
        text = wrk.communicate(timeout=seconds + 60)[0].decode()
        self.procs.stop(wrk)
        row = {"requests": 0, "rps": 0.0, "errors": 0, "non2xx": 0}
        row["cpu"] = meter.read()
        m = re.search(r"(\d+) requests in", text)
        row["requests"] = int(m.group(1)) if m else 0
        m = re.search(r"Requests/sec:\s+([\d.]+)", text)
        row["rps"] = float(m.group(1)) if m else 0.0
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        row["errors"] = sum(int(x) for x in m.groups()) if m else 0
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        row["non2xx"] = int(m.group(1)) if m else 0
        rss = [s["proxy_rss_kib"] for s in samples if s["proxy_rss_kib"]]
        flat = None
        growth = slope = None
        if len(rss) >= 2:
            growth = rss[-1] - rss[0]
            ts = [s["t"] for s in samples if s["proxy_rss_kib"]]
            mt, mr = sum(ts) / len(ts), sum(rss) / len(rss)
            den = sum((t - mt) ** 2 for t in ts) or 1.0
            slope = sum((t - mt) * (r - mr) for t, r in zip(ts, rss)) / den  # KiB/s
            # Flat: it grew by no more than 2 MiB (or 3 %) over the samples,
            # and the trend agrees.
            allowed = max(2048.0, 0.03 * rss[0])
            flat = growth <= allowed and slope * (ts[-1] - ts[0]) <= allowed
        self.results["soak"] = dict(row, seconds=seconds, warmup_s=warmup, interval_s=interval,
                                    samples=samples, growth_kib=growth,
                                    slope_kib_per_s=round(slope, 2) if slope is not None else None,
                                    flat=flat)
        if row["errors"] or row["non2xx"] or not row["requests"]:
            self.fail("soak: %d errors, %d non-2xx, %d requests" % (
                row["errors"], row["non2xx"], row["requests"]))
        log("soak: %.1f req/s, proxy RSS %s KiB -> %s" % (
            row["rps"], " ".join(str(r) for r in rss),
            "flat" if flat else "GROWING" if flat is False else "n/a"))

    def memory(self):
        self.results["memory"] = {
            "proxy_peak_rss_kib": proc_status(self.proxy.pid, "VmHWM"),
            "proxy_rss_kib": proc_status(self.proxy.pid, "VmRSS"),
            "client_peak_rss_kib": proc_status(self.client.pid, "VmHWM"),
            "client_rss_kib": proc_status(self.client.pid, "VmRSS"),
        }

    def idle_tunnels(self):
        count = self.args.tunnels
        if count <= 0:
            return
        port = free_port()
        proxy = self.start_proxy("proxy-idle", port)
        wait_listening(port, proxy, "the idle-tunnel proxy")
        base = "http://127.0.0.1:%d" % port
        argv = [PYTHON, os.path.join(HERE, "many_tunnels.py"), "--base", base]

        def hold(n, name):
            holder = self.procs.start(name, argv + ["--count", str(n)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            line = holder.stdout.readline().decode()
            try:
                return holder, json.loads(line)
            except ValueError:
                holder.stdin.close()
                self.procs.stop(holder)
                raise SetupError("many_tunnels.py failed: %r" % (line,))

        def release(holder):
            holder.stdin.close()
            holder.stdout.read()
            holder.wait(30)
            self.procs.stop(holder)

        # Warm-up: pay one-time costs (imports, caches) before the baseline.
        warm, _ = hold(min(20, count), "tunnels-warmup")
        release(warm)
        time.sleep(1.0)
        before = proc_status(proxy.pid, "VmRSS")
        # Three rounds of N tunnels, each closed before the next: the first
        # gives the cost per tunnel; the RSS after closing each round shows
        # whether the memory of closed tunnels is reused (Python's allocator
        # keeps freed memory, and objects in reference cycles wait for the
        # cyclic GC, so round two may still take some more).
        rounds = []
        for i in range(3):
            holder, info = hold(count, "tunnels-%d" % (i + 1))
            time.sleep(1.5)
            held = proc_status(proxy.pid, "VmRSS")
            release(holder)
            time.sleep(1.5)
            rounds.append(dict(info, rss_with_tunnels_kib=held,
                               rss_after_close_kib=proc_status(proxy.pid, "VmRSS")))
            if info["failed"]:
                self.fail("idle tunnels, round %d: %d of %d registrations failed (%s)" % (
                    i + 1, info["failed"], count, "; ".join(info.get("failure_samples", []))))
        alive = proxy.poll() is None
        self.procs.stop(proxy)
        first = rounds[0]
        growth = first["rss_with_tunnels_kib"] - before
        per = growth / float(first["registered"]) if first["registered"] else None
        last_growth = rounds[2]["rss_after_close_kib"] - rounds[1]["rss_after_close_kib"]
        self.results["idle_tunnels"] = {
            "requested": count, "registered": first["registered"], "failed": first["failed"],
            "register_seconds": first["seconds"], "rss_before_kib": before,
            "rss_with_tunnels_kib": first["rss_with_tunnels_kib"],
            "rss_after_close_kib": first["rss_after_close_kib"],
            "kib_per_tunnel": round(per, 2) if per is not None else None,
            "rounds": [{k: r[k] for k in ("registered", "failed", "seconds",
                                          "rss_with_tunnels_kib", "rss_after_close_kib")}
                       for r in rounds],
            "growth_round3_kib": last_growth,
        }
        if not alive:
            self.fail("idle tunnels: the proxy died")
        log("idle tunnels: %d registered in %.1f s, proxy RSS %d -> %d KiB (%.1f KiB/tunnel); "
            "after closing rounds 1-3: %s KiB" % (
                first["registered"], first["seconds"], before, first["rss_with_tunnels_kib"],
                per or 0, ", ".join(str(r["rss_after_close_kib"]) for r in rounds)))

    # -- all of it --

    def run(self):
        self.setup()
        self.check_bodies()
        self.http_matrix()
        self.ws_runs()
        self.check_uploads()
        if self.args.profile:
            for attempt in range(self.args.retry_noisy + 1):
                self.profile()
                noise = self.results.get("profile", {}).get("others_percent") or 0
                if noise <= NOISE_PERCENT or attempt == self.args.retry_noisy:
                    break
                log("other processes used %.0f%% of a core during the profile: again" % noise)
        self.soak()
        self.check_alive()
        self.memory()
        self.idle_tunnels()


# -- profiles ------------------------------------------------------------------------

def _short_file(filename):
    for marker in ("site-packages/", ROOT + "/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


_PLUMBING = (
    "twisted/python/log.py", "twisted/python/context.py", "twisted/internet/posixbase.py",
    "twisted/internet/epollreactor.py", "twisted/internet/base.py", "twisted/application/",
    "twisted/scripts/", "bin/twistd", "twisted/internet/tcp.py", "twisted/internet/endpoints.py",
    "(<module>", "twisted/python/util.py",
)


def summarize_speedscope(path, seconds, top=15):
    """
    What C{py-spy top} shows, from a C{py-spy record --format speedscope}
    file of the main thread: functions by own time (leaf) with their total
    (inclusive) time, and by total time leaving out the plumbing every
    sample goes through (twistd, the reactor loop, log contexts, the TCP
    transport's read/write).  Percentages are of the samples in which
    the thread was busy; C{busy_pct} is those samples over the wall time.
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        return {"error": str(e)}
    frames = data["shared"]["frames"]
    keys = ["%s (%s)" % (fr["name"], _short_file(fr.get("file") or "")) for fr in frames]
    own, total = {}, {}
    weight_sum = 0.0
    other_threads = {}
    for profile in data["profiles"]:
        name = profile.get("name", "")
        weights = profile.get("weights") or [1.0] * len(profile["samples"])
        if "MainThread" not in name:
            other_threads[name] = round(sum(weights), 2)
            continue
        unit = profile.get("unit", "none")
        for stack, w in zip(profile["samples"], weights):
            if not stack:
                continue
            weight_sum += w
            leaf = keys[stack[-1]]
            own[leaf] = own.get(leaf, 0.0) + w
            for key in set(keys[i] for i in stack):
                total[key] = total.get(key, 0.0) + w
    if not weight_sum:
        return {"error": "no samples of the main thread"}
    busy = (100.0 * weight_sum / seconds if unit == "seconds" else None)

    def pct(v):
        return round(100.0 * v / weight_sum, 1)

    by_own = [{"own_pct": pct(v), "total_pct": pct(total[k]), "function": k}
              for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    below = [(k, v) for k, v in total.items() if not any(p in k for p in _PLUMBING)]
    by_total = [{"total_pct": pct(v), "own_pct": pct(own.get(k, 0.0)), "function": k}
                for k, v in sorted(below, key=lambda kv: -kv[1])[:top]]
    return {"busy_pct": round(busy, 1) if busy is not None else None,
            "sampled_seconds": round(weight_sum, 2), "other_threads_seconds": other_threads,
            "by_own": by_own, "by_total": by_total}


# -- output ----------------------------------------------------------------------------

def _fmt(value, digits=2):
    if value is None:
        return "-"
    return "%.*f" % (digits, value)


def _kib(value):
    return "-" if value is None else "%.1f MiB" % (value / 1024.0)


def _label(row):
    if row["mode"] == "round trips":
        return row["test"]
    return "%s %s" % (row["test"], "ka" if row["mode"] == "keep-alive" else "close")


def render(results, failures):
    lines = []
    fmt = ("%-18s %4s | %9s %7s %7s %5s | %9s %7s %7s %5s | %6s %7s | %-11s %-11s %6s")
    head = fmt % ("test", "conc", "direct/s", "p50 ms", "p99 ms", "err",
                  "tunnel/s", "p50 ms", "p99 ms", "err", "ratio", "+p50 ms",
                  "proxy cpu", "client cpu", "others")
    rule = "-" * len(head)
    settings = results["settings"]
    lines.append("brickchain-proxy benchmark: %s CPUs, %s s per run%s; %s" % (
        results["machine"]["cpus"], settings["duration_s"],
        " (--quick)" if settings["quick"] else "", settings["load_tools"]))
    lines.append("direct = nginx (ws: nginx -> echo backend); tunnel = brickproxy -> websocket -> "
                 "brickclient -> the same nginx.  ka = keep-alive (wrk), close = no keep-alive (ab).")
    lines.append("ratio = tunnel/direct req/s; +p50 = tunnel p50 - direct p50; err = errors/non-2xx; "
                 "cpu = CPU % of one core during the tunnel run and CPU us per request;")
    lines.append("others = most CPU % used during the direct or the tunnel run by everything else "
                 "on the machine (not ours, not the load generator): background noise.")
    lines.append(rule)
    lines.append(head)
    lines.append(rule)
    rows = results["http"] + results["ws"]
    noisy_rows = 0
    keys = []
    for row in rows:
        key = (row["test"], row["mode"], row["concurrency"])
        if key not in keys:
            keys.append(key)
    for key in keys:
        pair = {r["target"]: r for r in rows if (r["test"], r["mode"], r["concurrency"]) == key}
        d, t = pair.get("direct"), pair.get("tunnel")

        def cells(r):
            if r is None:
                return ["-"] * 4
            return ["%.0f" % r["rps"], _fmt(r["p50_ms"]), _fmt(r["p99_ms"]),
                    "%d/%d" % (r["errors"], r["non2xx"]) if (r["errors"] or r["non2xx"]) else "0"]

        ratio = added = "-"
        if d and t and d["rps"]:
            ratio = "%.3f" % (t["rps"] / d["rps"])
        if d and t and d["p50_ms"] is not None and t["p50_ms"] is not None:
            added = "%.2f" % (t["p50_ms"] - d["p50_ms"])
        cpu = (t or {}).get("cpu", {})
        per = cpu.get("us_per_request", {})

        def cpu_cell(name):
            if name not in cpu.get("percent", {}):
                return "-"
            return "%3.0f%% %4.0fus" % (cpu["percent"][name], per.get(name, 0))

        others = max([r["cpu"]["others_percent"] for r in (d, t) if r and r.get("cpu")] or [0])
        noisy = others > NOISE_PERCENT
        noisy_rows += noisy
        lines.append(fmt % tuple([_label(d or t), key[2]] + cells(d) + cells(t)
                                 + [ratio, added, cpu_cell("proxy"), cpu_cell("client"),
                                    ("%.0f%%" % others) + ("!" if noisy else "")]))
    lines.append(rule)
    if noisy_rows:
        lines.append("WARNING: in %d rows (marked !) other processes on this machine used more than "
                     "%d%% of a core during the direct or the tunnel run: those numbers are low and "
                     "noisy; run again on a quiet machine." % (noisy_rows, NOISE_PERCENT))
        lines.append(rule)
    w = 38
    mem = results.get("memory", {})
    if mem:
        lines.append("%-*s| proxy %s peak (VmHWM), %s at the end; client %s peak, %s at the end" % (
            w, "memory of the running pair", _kib(mem.get("proxy_peak_rss_kib")),
            _kib(mem.get("proxy_rss_kib")), _kib(mem.get("client_peak_rss_kib")),
            _kib(mem.get("client_rss_kib"))))
    idle = results.get("idle_tunnels")
    if idle:
        lines.append("%-*s| %d registered in %.1f s: proxy RSS %s -> %s = %s KiB per tunnel; "
                     "%s after closing them" % (
                         w, "idle tunnels (fresh proxy)", idle["registered"],
                         idle["register_seconds"], _kib(idle["rss_before_kib"]),
                         _kib(idle["rss_with_tunnels_kib"]), _fmt(idle["kib_per_tunnel"], 1),
                         _kib(idle["rss_after_close_kib"])))
        rounds = idle.get("rounds")
        if rounds:
            lines.append("%-*s| closed, then twice N new ones: RSS after closing each round %s "
                         "(round 3: %+.1f KiB per closed tunnel; 0 = memory fully reused)" % (
                             w, "", " -> ".join(_kib(r["rss_after_close_kib"]) for r in rounds),
                             idle["growth_round3_kib"] / float(max(1, idle["requested"]))))
    soak = results.get("soak")
    if soak:
        samples = " ".join("%.1f" % (s["proxy_rss_kib"] / 1024.0) for s in soak["samples"]
                           if s["proxy_rss_kib"])
        verdict = {True: "FLAT", False: "GROWING", None: "n/a"}[soak["flat"]]
        cpu = soak.get("cpu", {})
        lines.append("%-*s| %d s of GET 1 KB c=16 ka: %.0f req/s, err %d/%d; CPU proxy %s%%, "
                     "client %s%%, others %s%%" % (
                         w, "soak through the tunnel", soak["seconds"], soak["rps"],
                         soak["errors"], soak["non2xx"], cpu.get("percent", {}).get("proxy"),
                         cpu.get("percent", {}).get("client"), cpu.get("others_percent")))
        lines.append("%-*s| proxy RSS MiB every %gs after %gs: %s -> %s (%+d KiB, slope %s KiB/s)"
                     % (w, "", soak["interval_s"], soak["warmup_s"], samples, verdict,
                        soak["growth_kib"] or 0, _fmt(soak["slope_kib_per_s"], 1)))
        client = " ".join("%.1f" % (s["client_rss_kib"] / 1024.0) for s in soak["samples"]
                          if s["client_rss_kib"])
        lines.append("%-*s| client RSS MiB: %s" % (w, "", client))
    lines.append(rule)
    for target in results.get("targets", []):
        lines.append("%-*s| %-6s %s (target %s)" % (
            w, "target: " + target["name"], "met" if target["met"] else "MISSED",
            target["measured"], target["target"]))
    lines.append(rule)
    if failures:
        lines.append("CORRECTNESS: FAILED (%d)" % len(failures))
        for f in failures:
            lines.append("  - " + f)
    else:
        checks = results.get("body_checks", [])
        lines.append("CORRECTNESS: OK (tunnel body == direct body by sha256 for %d endpoints; "
                     "no errors or non-2xx in any run; every echo verified; every upload fully "
                     "read by nginx)" % len(checks))
    return "\n".join(lines)


def evaluate_targets(results):
    def find(kind, test, mode, conns, target):
        for r in results.get(kind, []):
            if (r["test"], r["mode"], r["concurrency"], r["target"]) == (test, mode, conns, target):
                return r
        return None

    out = []

    def add(name, measured, target, met, unit=""):
        if measured is None:
            return
        out.append({"name": name, "measured": "%.2f%s" % (measured, unit),
                    "target": target, "met": bool(met)})

    r = find("http", "GET 1 KB", "keep-alive", 16, "tunnel")
    if r:
        add("GET 1 KB c=16 ka req/s", r["rps"], ">= %g" % TARGETS["get1k_c16_rps"],
            r["rps"] >= TARGETS["get1k_c16_rps"])
    for mode in ("keep-alive", "no keep-alive"):
        d = find("http", "GET 1 KB", mode, 1, "direct")
        t = find("http", "GET 1 KB", mode, 1, "tunnel")
        if d and t and d["p50_ms"] is not None and t["p50_ms"] is not None:
            added = t["p50_ms"] - d["p50_ms"]
            add("added p50 c=1 %s" % ("ka" if mode == "keep-alive" else "close"), added,
                "<= %g ms" % TARGETS["added_p50_c1_ms"], added <= TARGETS["added_p50_c1_ms"], " ms")
    for test in ("GET 100 KB", "POST 100 KB"):
        for mode in ("keep-alive", "no keep-alive"):
            r = find("http", test, mode, 16, "tunnel")
            if r:
                add("%s c=16 %s req/s" % (test, "ka" if mode == "keep-alive" else "close"),
                    r["rps"], ">= %g" % TARGETS["big_c16_rps"], r["rps"] >= TARGETS["big_c16_rps"])
    for conns, key in ((1, "ws_1_rps"), (16, "ws_16_rps")):
        r = find("ws", "WS echo 100 B", "round trips", conns, "tunnel")
        if r:
            add("ws round trips/s, %d conn" % conns, r["rps"], ">= %g" % TARGETS[key],
                r["rps"] >= TARGETS[key])
    idle = results.get("idle_tunnels")
    if idle and idle.get("kib_per_tunnel") is not None:
        add("proxy KiB per idle tunnel", idle["kib_per_tunnel"],
            "<= %g KiB" % TARGETS["idle_tunnel_kib"],
            idle["kib_per_tunnel"] <= TARGETS["idle_tunnel_kib"], " KiB")
    soak = results.get("soak")
    if soak and soak.get("flat") is not None:
        out.append({"name": "proxy RSS flat under soak", "measured":
                    "%+d KiB over the samples" % soak["growth_kib"], "target": "flat",
                    "met": soak["flat"]})
    return out


def print_profile(profile):
    cpu = profile["cpu_percent"]
    print("\nprofile under GET 1 KB c=16 keep-alive through the tunnel: py-spy record, %d s at "
          "100 Hz; %.0f req/s while profiled; CPU %% of one core: proxy %s, client %s; "
          "others %s%%" % (
              profile["seconds"], profile["rps_during_profile"] or 0,
              cpu.get("proxy"), cpu.get("client"), profile.get("others_percent")))
    for name in ("proxy", "client"):
        summary = profile.get(name, {})
        if "error" in summary:
            print("  %s: %s" % (name, summary["error"]))
            continue
        print("\n  %s main thread: busy in %s%% of the samples' wall time (%s s sampled); "
              "speedscope file: %s" % (name, summary["busy_pct"], summary["sampled_seconds"],
                                       profile["files"][name]))
        if summary["other_threads_seconds"]:
            print("  other threads (seconds sampled): %s" % summary["other_threads_seconds"])
        print("    top %d by own time      own%%  total%%" % len(summary["by_own"]))
        for e in summary["by_own"]:
            print("      %-70s %5.1f  %5.1f" % (e["function"][:70], e["own_pct"], e["total_pct"]))
        print("    top %d by total time (without reactor plumbing)  total%%  own%%"
              % len(summary["by_total"]))
        for e in summary["by_total"]:
            print("      %-70s %5.1f  %5.1f" % (e["function"][:70], e["total_pct"], e["own_pct"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description="brickchain-proxy benchmark (use bench/run)")
    parser.add_argument("--tmp", required=True, help="empty work directory (bench/run makes it)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--duration", type=int, default=None, help="seconds per run (default 5)")
    parser.add_argument("--soak", type=int, default=None, help="soak seconds (default 60; 0 skips)")
    parser.add_argument("--tunnels", type=int, default=None, help="idle tunnels (default 1000)")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="profile proxy and client with py-spy; speedscope files go to DIR")
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument("--retry-noisy", type=int, default=0, metavar="N",
                        help="measure a direct/tunnel pair again, up to N times, when other "
                             "processes used more than %d%% of a core meanwhile" % NOISE_PERCENT)
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 1 if args.quick else 5
    if args.soak is None:
        args.soak = 3 if args.quick else 60
    if args.tunnels is None:
        args.tunnels = 50 if args.quick else 1000
    if args.duration < 1:
        parser.error("--duration must be at least 1")
    if args.json:
        args.json = os.path.abspath(args.json)
    if args.profile:
        args.profile = os.path.abspath(args.profile)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(args)
    status = 0
    started = time.monotonic()
    try:
        bench.run()
    except SetupError as e:
        log("SET-UP FAILED: %s" % (e,))
        bench.failures.append("set-up: %s" % (e,))
        status = 2
        for name in ("proxy.log", "client.log", "nginx-error.log", "ws-echo.out",
                     "proxy.out", "client.out", "nginx.out"):
            path = os.path.join(args.tmp, name)
            if os.path.exists(path) and os.path.getsize(path):
                with open(path, errors="replace") as f:
                    tail = f.readlines()[-15:]
                print("--- %s (last lines)\n%s" % (name, "".join(tail)), file=sys.stderr)
    except KeyboardInterrupt:
        log("interrupted")
        status = 130
    except Exception as e:
        import traceback
        traceback.print_exc()
        bench.failures.append("bench error: %r" % (e,))
        status = 2
    finally:
        bench.procs.stop_all()
    if status in (0, 2) or bench.results["http"]:
        bench.results["elapsed_s"] = round(time.monotonic() - started, 1)
        bench.results["targets"] = evaluate_targets(bench.results)
        bench.results["failures"] = bench.failures
        bench.results["correct"] = not bench.failures
        print(render(bench.results, bench.failures))
        if "profile" in bench.results:
            print_profile(bench.results["profile"])
        if args.json:
            with open(args.json, "w") as f:
                json.dump(bench.results, f, indent=2)
                f.write("\n")
            log("JSON written to %s" % args.json)
    if status == 0 and bench.failures:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
