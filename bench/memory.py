"""
The memory measurements of bench/bench.py: the RSS of the running proxy
and client, the proxy's memory per idle tunnel (a fresh proxy and
bench/many_tunnels.py), and a sustained soak through the tunnel during
which the proxy's RSS must stay flat.
"""

import json
import os
import subprocess
import time

from findings import log
from load import parse_wrk, wrk_argv
from processes import HERE, PYTHON, SetupError, free_port, start_proxy, wait_listening
from procfs import proc_status


def running_pair(bed):
    """Peak (VmHWM) and current (VmRSS) memory of the proxy and the client, in KiB."""
    return {
        "proxy_peak_rss_kib": proc_status(bed.proxy.pid, "VmHWM"),
        "proxy_rss_kib": proc_status(bed.proxy.pid, "VmRSS"),
        "client_peak_rss_kib": proc_status(bed.client.pid, "VmHWM"),
        "client_rss_kib": proc_status(bed.client.pid, "VmRSS"),
    }


def soak(bed, findings, seconds):
    """GET 1 KB c=16 keep-alive through the tunnel, sampling RSS meanwhile."""
    if seconds <= 0:
        return
    procs = bed.procs
    if seconds >= 20:
        warmup, interval = 10.0, 5.0
    else:
        warmup, interval = seconds / 3.0, max(0.5, seconds / 6.0)
    log("soak: GET 1 KB c=16 keep-alive through the tunnel for %d s" % seconds)
    wrk = procs.start("wrk-soak", wrk_argv(bed.tunnel_base + "/1k.bin", 16, seconds),
                      stdout=subprocess.PIPE)
    meter = bed.meters()
    t0 = time.monotonic()
    samples = []
    next_at = warmup
    while next_at <= seconds - 0.2:
        time.sleep(max(0.0, t0 + next_at - time.monotonic()))
        samples.append({"t": round(time.monotonic() - t0, 1),
                        "proxy_rss_kib": proc_status(bed.proxy.pid, "VmRSS"),
                        "client_rss_kib": proc_status(bed.client.pid, "VmRSS")})
        next_at += interval
    text = wrk.communicate(timeout=seconds + 60)[0].decode()
    procs.stop(wrk)
    cpu = meter.read()
    parsed = parse_wrk(text)
    row = {key: parsed[key] for key in ("requests", "rps", "errors", "non2xx")}
    row["cpu"] = cpu
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
    findings.results["soak"] = dict(
        row, seconds=seconds, warmup_s=warmup, interval_s=interval,
        samples=samples, growth_kib=growth,
        slope_kib_per_s=round(slope, 2) if slope is not None else None, flat=flat)
    if row["errors"] or row["non2xx"] or not row["requests"]:
        findings.fail("soak: %d errors, %d non-2xx, %d requests" % (
            row["errors"], row["non2xx"], row["requests"]))
    log("soak: %.1f req/s, proxy RSS %s KiB -> %s" % (
        row["rps"], " ".join(str(r) for r in rss),
        "flat" if flat else "GROWING" if flat is False else "n/a"))


def idle_tunnels(procs, findings, count):
    """
    A fresh proxy's RSS before, with C{count} idle tunnels, and after
    closing them; three rounds.
    """
    if count <= 0:
        return
    port = free_port()
    proxy = start_proxy(procs, "proxy-idle", port)
    wait_listening(port, proxy, "the idle-tunnel proxy")
    base = "http://127.0.0.1:%d" % port
    argv = [PYTHON, os.path.join(HERE, "many_tunnels.py"), "--base", base]

    def hold(n, name):
        holder = procs.start(name, argv + ["--count", str(n)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = holder.stdout.readline().decode()
        try:
            return holder, json.loads(line)
        except ValueError:
            holder.stdin.close()
            procs.stop(holder)
            raise SetupError("many_tunnels.py failed: %r" % (line,))

    def release(holder):
        holder.stdin.close()
        holder.stdout.read()
        holder.wait(30)
        procs.stop(holder)

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
            findings.fail("idle tunnels, round %d: %d of %d registrations failed (%s)" % (
                i + 1, info["failed"], count, "; ".join(info.get("failure_samples", []))))
    alive = proxy.poll() is None
    procs.stop(proxy)
    first = rounds[0]
    growth = first["rss_with_tunnels_kib"] - before
    per = growth / float(first["registered"]) if first["registered"] else None
    last_growth = rounds[2]["rss_after_close_kib"] - rounds[1]["rss_after_close_kib"]
    findings.results["idle_tunnels"] = {
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
        findings.fail("idle tunnels: the proxy died")
    log("idle tunnels: %d registered in %.1f s, proxy RSS %d -> %d KiB (%.1f KiB/tunnel); "
        "after closing rounds 1-3: %s KiB" % (
            first["registered"], first["seconds"], before, first["rss_with_tunnels_kib"],
            per or 0, ", ".join(str(r["rss_after_close_kib"]) for r in rounds)))
