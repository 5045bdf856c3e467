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
import tempfile

from twisted.trial import unittest

from tests.support_bench import run_script

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
        returncode, table, detail = run_script(
            self, [RUN, "--quick", "--no-install", "--json", json_path], TIMEOUT,
            "bench/run --quick")
        self.assertEqual(returncode, 0, detail)

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
                      "soak through the tunnel", "target: GET 1 KB ka c=16 ratio",
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
