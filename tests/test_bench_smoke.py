"""
Smoke test of the benchmark: C{bench/run --quick --no-install} must set up
nginx, the echo backend, the proxy and the client, pass every correctness
check, print the full table, and clean up.  Takes about 35 s; skipped where
nginx, wrk, ab or curl are not installed (bench/run without --no-install
installs them).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "bench", "run")
TIMEOUT = 150


def _missing_tools():
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin"
    return [tool for tool in ("nginx", "wrk", "ab", "curl")
            if shutil.which(tool, path=path) is None]


class BenchSmokeTests(unittest.TestCase):
    missing = _missing_tools()
    if missing:
        skip = "bench/run needs %s (bench/run without --no-install installs them)" % (
            ", ".join(missing),)

    def test_quick_run(self):
        out_dir = tempfile.mkdtemp(prefix="bench-smoke.")
        self.addCleanup(shutil.rmtree, out_dir, True)
        json_path = os.path.join(out_dir, "results.json")
        proc = subprocess.Popen(
            [RUN, "--quick", "--no-install", "--json", json_path],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL)
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            # SIGTERM lets bench/run's trap stop everything it started.
            proc.send_signal(signal.SIGTERM)
            try:
                stdout, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            self.fail("bench/run --quick took more than %d s:\n%s" % (
                TIMEOUT, stderr.decode("utf-8", "replace")[-3000:]))
        table = stdout.decode("utf-8", "replace")
        detail = "%s\n--- stderr:\n%s" % (table, stderr.decode("utf-8", "replace")[-3000:])
        self.assertEqual(proc.returncode, 0, detail)

        expected_rows = [
            ("GET 1 KB ka", 1), ("GET 1 KB ka", 16), ("GET 1 KB ka", 64),
            ("GET 100 KB ka", 16), ("POST 100 KB ka", 16),
            ("GET 1 KB close", 1), ("GET 1 KB close", 16), ("GET 1 KB close", 64),
            ("GET 100 KB close", 16), ("POST 100 KB close", 16),
            ("WS echo 100 B", 1), ("WS echo 100 B", 16),
        ]
        for name, conns in expected_rows:
            pattern = r"^%s\s+%d \|\s+\d+ .*\|\s+\d+ " % (re.escape(name), conns)
            self.assertTrue(re.search(pattern, table, re.M),
                            "no row %r c=%d with numbers:\n%s" % (name, conns, detail))
        for label in ("memory of the running pair", "idle tunnels (fresh proxy)",
                      "soak through the tunnel", "target: GET 1 KB c=16 ka req/s",
                      "CORRECTNESS: OK"):
            self.assertIn(label, table)

        with open(json_path) as f:
            results = json.load(f)
        self.assertTrue(results["correct"], results["failures"])
        self.assertEqual(len(results["http"]), 20)
        self.assertEqual(len(results["ws"]), 4)
        self.assertTrue(all(c["equal"] for c in results["body_checks"]))
        self.assertGreater(results["idle_tunnels"]["registered"], 0)
        self.assertTrue(results["soak"]["samples"])
