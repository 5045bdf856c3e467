"""
The inspector page in a real browser: Debian's chromium, driven by
playwright (L{tests/compat/inspector_visit.py}, a subprocess), has the page
open while a request goes through a real proxy and tunnel to a real local
service, sees it appear live, replays it, and shows a recorded C{<script>}
as text.

As in L{tests.test_browser} (whose conventions this follows): the class and
test have "browser" in their names; C{BRICKCHAIN_SKIP_BROWSER=1} skips them
locally, a missing chromium or playwright skips them too, and under CI
(C{CI} set) neither is allowed: the test fails instead.
"""

import json
import os
import shutil

from twisted.internet import endpoints, reactor
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from brickchain_proxy.client.inspector import ExchangeLog, Replayer
from brickchain_proxy.client.inspector_web import InspectorService
from tests.compat.inspector_visit import SCRIPT_BODY, STEPS
from tests.support import (
    RecordingResource,
    close_connections,
    start_local_service,
    start_tunnel,
    track_connections,
)
from tests.test_browser import require_browser, spawn_python

HERE = os.path.dirname(os.path.abspath(__file__))
VISIT = os.path.join(HERE, "compat", "inspector_visit.py")
#: Where a copy of the screenshot is left for people to look at.
SCREENSHOT_COPY = "/tmp/inspector-screenshot.png"


class InspectorBrowserTests(TestCase):
    """
    The inspector page, used in headless Chromium.
    """

    _log = Logger()

    def setUp(self):
        require_browser(self)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    async def start(self):
        """
        A local service, a tunnel to it reporting to an inspector, and the
        inspector on a free port; return C{(inspector_url, tunnel)}.
        """
        self.local = RecordingResource()
        local_url = start_local_service(self, self.local)
        log = ExchangeLog(reactor)
        tunnel = await start_tunnel(self, local_url, {"recorder": log})
        service = InspectorService(
            endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1"),
            "tcp:0:interface=127.0.0.1", log, Replayer(tunnel.client.forwarder, log))
        transports = track_connections(service.site)
        service.startService()
        self.addCleanup(close_connections, transports)
        self.addCleanup(service.stopService)
        port = await service.when_listening()
        return "http://127.0.0.1:{}/".format(port.getHost().port), tunnel

    async def test_browser_sees_requests_live_replays_them_and_never_runs_their_script(self):
        """The page shows a tunnelled request live, replays it for real, and shows its <script> body as text."""
        inspector_url, tunnel = await self.start()
        screenshot = os.path.join(self.directory, "inspector.png")
        browser = spawn_python(
            self, "browser",
            [VISIT, inspector_url, tunnel.path_url("/"), screenshot], self.directory)
        await browser.ended
        try:
            report = json.loads(browser.out.decode("utf-8"))
        except ValueError:
            self.fail("the browser script printed no report (exit code {}); stderr:\n{}"
                      .format(browser.exit_code, browser.stderr_tail()))
        with open(os.path.join(self.directory, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
        if os.path.exists(screenshot):
            shutil.copyfile(screenshot, SCREENSHOT_COPY)
        self._log.info("inspector screenshot: {path} (copied to {copy})",
                       path=screenshot, copy=SCREENSHOT_COPY)
        print("\ninspector screenshot: {} (copy: {})".format(screenshot, SCREENSHOT_COPY))
        explain = "browser report:\n{}\nstderr:\n{}".format(
            json.dumps(report, indent=1), browser.stderr_tail())

        self.assertEqual(report["steps"], STEPS, explain)
        self.assertEqual(browser.exit_code, 0, explain)
        self.assertEqual(report["tunnel_status"], 200, explain)
        self.assertFalse(report["reloaded"], explain)
        self.assertEqual(report["entry"]["status"], "200")
        # The recorded HTML is on the page as text, and nothing of it ran.
        self.assertEqual(report["shown_body"], SCRIPT_BODY)
        self.assertFalse(report["script_ran"], explain)
        self.assertEqual(report["scripts_in_list"], 0, explain)
        self.assertEqual(report["page_errors"], [], explain)
        # The replay reached the local service: it saw the request twice.
        self.assertEqual(report["replay"]["status"], "200")
        self.assertEqual(report["replay"]["replayOf"], str(report["entry"]["id"]))
        self.assertEqual([r.body.decode("utf-8") for r in self.local.requests_to(b"/echo-body")],
                         [SCRIPT_BODY, SCRIPT_BODY])
        self.assertTrue(os.path.getsize(screenshot) > 0)
