"""
The table's rows: each load run once directly against nginx and once
through the tunnel, side by side.  HTTP GET 1 KB at c=1, 16, 64, GET and
POST 100 KB at c=16, with keep-alive (wrk) and without (ab); websocket echo
round trips on 1 and 16 connections (bench/wsbench.py).  With
--localtunnel, the rows of issue 12's table are also measured through
localtunnel, right after the tunnel (bench/localtunnel.py).
"""

import localtunnel
from correctness import check_row
from findings import log
from load import run_ab, run_wrk, run_wsbench
from procfs import NOISE_PERCENT
from report import fmt_number


def targets(bed, labels):
    """Direct and tunnel; and localtunnel, where it runs and the row is one of its."""
    out = ["direct", "tunnel"]
    if "localtunnel" in bed.bases and localtunnel.measured(labels):
        out.append("localtunnel")
    return out


def measure_pair(bed, findings, retry_noisy, kind, labels, run):
    """
    Run C{run(target)} for direct, then tunnel (then localtunnel, see
    L{targets}), and add the rows to C{findings.results[kind]}.  With
    --retry-noisy N, a pair during which other processes on the machine
    used more than NOISE_PERCENT of a core is measured again, up to N
    times, and the quietest attempt is kept (every attempt is checked for
    errors).
    """
    best = None
    measured = targets(bed, labels)
    for attempt in range(1, retry_noisy + 2):
        rows = {}
        for target in measured:
            restarted = target == "localtunnel" and localtunnel.ready(
                bed, fresh=kind == "ws")
            meter = bed.meters()
            row = run(target)
            row.update(labels, target=target, cpu=meter.read(row["requests"]))
            if restarted:
                row["restarted"] = True
            log("%-11s %-13s c=%-3d %-11s %9.1f %s  p50 %s ms  p99 %s ms  err %d/%d  "
                "others %.0f%%" % (
                    row["test"], row["mode"], row["concurrency"], target, row["rps"],
                    "rt/s " if kind == "ws" else "req/s", fmt_number(row["p50_ms"]),
                    fmt_number(row["p99_ms"]), row["errors"], row["non2xx"],
                    row["cpu"]["others_percent"]))
            check_row(row, findings)
            bed.check_alive()
            rows[target] = row
        noise = max(r["cpu"]["others_percent"] for r in rows.values())
        if best is None or noise < best[0]:
            best = (noise, rows)
        if noise <= NOISE_PERCENT or attempt > retry_noisy:
            break
        log("other processes used %.0f%% of a core meanwhile: measuring again" % noise)
    for target in measured:
        best[1][target]["attempts"] = attempt
        findings.results[kind].append(best[1][target])


def http_matrix(bed, findings, args):
    d = args.duration
    post_file, post_lua = bed.content.post_file, bed.content.post_lua
    cases = [
        ("GET 1 KB", "/1k.bin", None, 1),
        ("GET 1 KB", "/1k.bin", None, 16),
        ("GET 1 KB", "/1k.bin", None, 64),
        ("GET 100 KB", "/100k.bin", None, 16),
        ("POST 100 KB", "/upload", post_file, 16),
    ]
    for mode in ("keep-alive", "no keep-alive"):
        for test, path, post, conns in cases:
            def run(target, mode=mode, path=path, post=post, conns=conns):
                url, host = bed.bases[target] + path, bed.hosts.get(target)
                if mode == "keep-alive":
                    return run_wrk(url, conns, d, script=post_lua if post else None, host=host)
                return run_ab(url, conns, d, bed.tmp, post_file=post, host=host,
                              close=target == "localtunnel")
            measure_pair(bed, findings, args.retry_noisy, "http",
                         dict(test=test, mode=mode, concurrency=conns), run)


def ws_runs(bed, findings, args):
    d = args.duration
    warmup = 0.3 if args.quick else 1.0
    for conns in (1, 16):
        measure_pair(
            bed, findings, args.retry_noisy,
            "ws", dict(test="WS echo 100 B", mode="round trips", concurrency=conns),
            lambda target, conns=conns: run_wsbench(bed.ws_urls[target], conns, d, warmup,
                                                    host=bed.hosts.get(target)))
