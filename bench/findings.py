"""
What a run of bench/bench.py has found so far: the results (what the table
and the JSON show) and the correctness checks that failed; and the
progress log on standard error.
"""

import datetime
import os
import platform
import sys
import time

from load import WS_MESSAGE


def log(text):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), text), file=sys.stderr, flush=True)


class Findings:
    """
    @ivar results: the JSON document; each measurement adds its part
        (C{http} and C{ws} rows as they are measured, so a run cut short
        still reports what it has).
    @ivar failures: one line per failed correctness check of ours.
    @ivar localtunnel_failures: the same for localtunnel (--localtunnel):
        reported, but not our failures.
    """

    def __init__(self, args):
        self.failures = []
        self.localtunnel_failures = []
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

    def fail(self, text, target=None):
        """A failed check; C{target} "localtunnel" files it apart from ours."""
        if target == "localtunnel":
            log("CHECK FAILED (localtunnel's, not ours): " + text)
            self.localtunnel_failures.append(text)
            return
        log("CHECK FAILED: " + text)
        self.failures.append(text)
