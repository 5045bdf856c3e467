"""
bench/run --profile: py-spy records the proxy and the client under each row
of the reference table (bench/README.md) through the tunnel, one row after
the other; the speedscope files are summarised the way C{py-spy top} shows
them (by own time, and by total time without the reactor's plumbing).
"""

import json
import os
import shutil
import subprocess
import time

from findings import log
from load import ab_argv, wrk_argv, wsbench_argv
from processes import ROOT, VENV_BIN
from procfs import NOISE_PERCENT


def profiled_rows(bed, seconds):
    """
    C{(slug, row, argv)} for each row of the reference table: the load
    generator's command line, through the tunnel, for C{seconds} plus
    the start-up margin the recorder needs.
    """
    base = bed.tunnel_base
    run = seconds + 3
    post_lua = bed.content.post_lua
    return [
        ("get1k-c1", "GET 1 KB c=1", wrk_argv(base + "/1k.bin", 1, run)),
        ("get1k-c16", "GET 1 KB c=16", wrk_argv(base + "/1k.bin", 16, run)),
        ("get1k-c64", "GET 1 KB c=64", wrk_argv(base + "/1k.bin", 64, run)),
        ("get100k-c16", "GET 100 KB c=16", wrk_argv(base + "/100k.bin", 16, run)),
        ("post100k-c16", "POST 100 KB c=16", wrk_argv(base + "/upload", 16, run, post_lua)),
        ("get1k-c16-close", "GET 1 KB c=16 no keep-alive",
         ab_argv(base + "/1k.bin", 16, run)),
        ("ws-1", "WS echo 100 B, 1 connection", wsbench_argv(bed.ws_urls["tunnel"], 1, run)),
        ("ws-16", "WS echo 100 B, 16 connections",
         wsbench_argv(bed.ws_urls["tunnel"], 16, run)),
    ]


def profile(bed, findings, args):
    """
    Record each row; with --retry-noisy N, a row again (up to N times) while
    other processes used more than NOISE_PERCENT of a core.  The rows go to
    C{findings.results["profile"]}.
    """
    pyspy = os.path.join(VENV_BIN, "py-spy")
    if not os.path.exists(pyspy):
        pyspy = shutil.which("py-spy")
    if not pyspy:
        findings.fail("--profile: py-spy is not installed")
        return
    directory = os.path.abspath(args.profile)
    os.makedirs(directory, exist_ok=True)
    seconds = args.profile_seconds
    rows = []
    for slug, row, argv in profiled_rows(bed, seconds):
        for attempt in range(args.retry_noisy + 1):
            result = record(bed, pyspy, os.path.join(directory, slug), row, argv, seconds)
            noise = result.get("others_percent") or 0
            if noise <= NOISE_PERCENT or attempt == args.retry_noisy:
                break
            log("other processes used %.0f%% of a core during the profile: again" % noise)
        rows.append(result)
    findings.results["profile"] = {"seconds": seconds, "rows": rows}


def record(bed, pyspy, prefix, row, argv, seconds):
    procs = bed.procs
    log("profiling proxy and client for %d s under %s through the tunnel" % (seconds, row))
    load = procs.start("load-profile", argv, stdout=subprocess.DEVNULL)
    time.sleep(1.0)
    meter = bed.meters()
    spies = {}
    for name, proc in (("proxy", bed.proxy), ("client", bed.client)):
        out = "%s.%s.speedscope.json" % (prefix, name)
        spies[name] = (out, procs.start("py-spy-" + name, [
            pyspy, "record", "-p", str(proc.pid), "-d", str(seconds), "-r", "100",
            "--format", "speedscope", "-o", out]))
    for name, (out, spy) in spies.items():
        spy.wait(seconds + 60)
    cpu_all = meter.read()
    load.wait(seconds + 60)
    procs.stop(load)
    result = {"row": row, "seconds": seconds, "cpu_percent": cpu_all["percent"],
              "others_percent": cpu_all["others_percent"], "files": {}}
    for name, (out, spy) in spies.items():
        result["files"][name] = out
        result[name] = summarize_speedscope(out, seconds)
    return result


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
