"""
What bench/bench.py prints: the table (direct vs tunnel, with the ratios,
the added latency, the CPU per request and the background noise), the
memory and soak lines, the targets met or missed, the correctness verdict,
and the profile summary of --profile.
"""

from procfs import NOISE_PERCENT

TARGETS = {
    "get1k_c16_rps": 3000.0,        # req/s, GET 1 KB c=16 through one tunnel
    "added_p50_c1_ms": 1.0,         # added median latency at c=1
    "big_c16_rps": 800.0,           # GET/POST 100 KB c=16
    "ws_1_rps": 1500.0,             # ws round trips/s, one connection
    "ws_16_rps": 3000.0,            # ws round trips/s, 16 connections
    "idle_tunnel_kib": 50.0,        # proxy memory per idle tunnel
}


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
            return ["%.0f" % r["rps"], fmt_number(r["p50_ms"]), fmt_number(r["p99_ms"]),
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
