"""
The soak with faults, short: C{bench/soak_faults.py --quick} runs Redis,
proxies A and B and a tunnel client on each as real processes, sends
checked GETs, POSTs (some over 1 MiB) and websocket echoes through both
instances to both tunnels, and SIGKILLs and restarts Redis, proxy A and
client b on the way.  It must exit 0 and print 0 wrong and 0 hung answers,
no error while steady, and every recovery within the budget.  Takes about
60 s; skipped where redis-server is not installed.
"""

import json
import os
import re
import shutil
import sys
import tempfile

from twisted.trial import unittest

from tests.support_bench import run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOAK = os.path.join(ROOT, "bench", "soak_faults.py")
TIMEOUT = 150


class SoakWithFaultsTests(unittest.TestCase):
    if shutil.which("redis-server") is None:
        skip = "bench/soak_faults.py needs redis-server"

    def test_quick_soak_has_no_wrong_or_hung_answer(self):
        """Through every fault of the quick soak, no answer is wrong or hung and every path recovers within the budget."""
        out_dir = tempfile.mkdtemp(prefix="soak-faults-test.")
        self.addCleanup(shutil.rmtree, out_dir, True)
        json_path = os.path.join(out_dir, "soak.json")
        returncode, report, detail = run_script(
            self, [sys.executable, SOAK, "--quick", "--json", json_path], TIMEOUT,
            "bench/soak_faults.py --quick")
        self.assertEqual(returncode, 0, detail)

        totals = re.search(r"^answers total (\d+): ok (\d+), wrong (\d+), hung (\d+), "
                           r"errors (\d+)$", report, re.M)
        self.assertIsNotNone(totals, detail)
        answers, ok, wrong, hung, errors = map(int, totals.groups())
        self.assertEqual((wrong, hung), (0, 0), detail)
        self.assertGreater(ok, 1000, detail)
        self.assertEqual(answers, ok + errors, detail)
        for fault in ("redis", "proxy A", "client b"):
            self.assertRegex(report, r"(?m)^%s\s+\d+\.\d\s+\S+\s+\d+\.\d\d\s" % (fault,))
        self.assertIn("SOAK: OK", report)

        with open(json_path) as f:
            result = json.load(f)
        self.assertTrue(result["ok"], result["failures"])
        self.assertEqual([f["fault"] for f in result["faults"]],
                         ["redis", "proxy A", "client b"])
        self.assertTrue(all(f["within_budget"] for f in result["faults"]), result["faults"])
        self.assertEqual(len(result["paths"]), 12)
        self.assertTrue(all(c.get("ok", 0) > 0 for c in result["paths"].values()),
                        result["paths"])
