"""
The load generators, each run to completion and read into one row
(requests, req/s, p50/p99 ms, errors, non-2xx): wrk (keep-alive), ab (no
keep-alive) and bench/wsbench.py (websocket echo round trips, in its own
process).  L{wrk_argv} and L{parse_wrk} also serve the runs that keep wrk
in the background (the soak, the profile).  C{host}, where given, is the
Host header to send (localtunnel routes by it).
"""

import json
import os
import re
import subprocess

from processes import HERE, PYTHON

#: Bytes per websocket echo message.
WS_MESSAGE = 100

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk_argv(url, conns, duration, script=None, timeout_s=10, host=None):
    argv = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % duration, "--latency",
            "--timeout", "%ds" % timeout_s]
    if script:
        argv += ["-s", script]
    if host:
        argv += ["-H", "Host: " + host]
    argv.append(url)
    return argv


def parse_wrk(text):
    """The row in wrk's output (missing figures stay 0 or None)."""
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
    return result


def run_wrk(url, conns, duration, script=None, timeout_s=10, host=None):
    out = subprocess.run(wrk_argv(url, conns, duration, script, timeout_s, host),
                         capture_output=True, text=True,
                         timeout=duration + timeout_s + 30)
    text = out.stdout + out.stderr
    result = parse_wrk(text)
    if out.returncode != 0 or not result["requests"]:
        result["errors"] = max(result["errors"], 1)
        result["failure"] = "wrk exited %d: %s" % (out.returncode, text.strip()[-300:])
    return result


def ab_argv(url, conns, duration, csv=None, post_file=None, host=None, close=False):
    """
    C{close}: also send C{Connection: close}, which ab's HTTP/1.0 without
    -k already means (bench/localtunnel.py says why it is needed there).
    """
    # -t first: it sets -n to 50000, which the -n after it raises again.
    argv = ["ab", "-q", "-r", "-s", "30", "-c", str(conns), "-t", str(duration),
            "-n", str(duration * 100000)]
    if csv:
        argv += ["-e", csv]
    if post_file:
        argv += ["-p", post_file, "-T", "application/octet-stream"]
    if host:
        argv += ["-H", "Host: " + host]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    return argv


def run_ab(url, conns, duration, tmp, post_file=None, host=None, close=False):
    csv = os.path.join(tmp, "ab-percentiles.csv")
    argv = ab_argv(url, conns, duration, csv, post_file, host, close)
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


def wsbench_argv(url, conns, duration, warmup=0.0, host=None):
    argv = [PYTHON, os.path.join(HERE, "wsbench.py"), "--url", url,
            "--connections", str(conns), "--duration", str(duration),
            "--size", str(WS_MESSAGE), "--warmup", str(warmup)]
    if host:
        argv += ["--host", host]
    return argv


def run_wsbench(url, conns, duration, warmup, host=None):
    argv = wsbench_argv(url, conns, duration, warmup, host)
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
        "per_connection": [data["per_connection_min"], data["per_connection_max"]],
        "failure": "; ".join(data["error_samples"]) or None,
    }
