"""
A real browser as the visitor: Debian's chromium, driven by playwright
(L{tests/compat/browser_visit.py}), loads a page from an aiohttp
application (L{tests/compat/browser_app.py}, a subprocess) through a real
proxy and tunnel client, and the page's own script exercises the tunnel
from inside the browser: a binary C{fetch} POST, a websocket (text, binary,
a close code from the server) and an C{EventSource}.

Every class and test here has "browser" in its name, so they can be
deselected by name (C{pytest -k "not browser"}).  Locally,
C{BRICKCHAIN_SKIP_BROWSER=1} skips them, and they skip when chromium or
playwright is missing (C{scripts/test} installs both).  Under CI (C{CI} set
in the environment) neither is allowed: the tests fail instead, so they are
never skipped silently there.
"""

import base64
import importlib.util
import json
import os
import sys

from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest, TestCase

from tests.compat.browser_app import CLOSE_CODE, CLOSE_REASON, EVENTS
from tests.redis_server import ProcessWatcher, end_process, track_child
from tests.support import sha256, start_tunnel, visitor

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "compat", "browser_app.py")
VISIT = os.path.join(HERE, "compat", "browser_visit.py")
CHROMIUM = "/usr/bin/chromium"
SKIP_VARIABLE = "BRICKCHAIN_SKIP_BROWSER"


def in_ci():
    """
    Whether we run under CI: C{CI} is set (CI services set C{CI=true}) and
    is not an explicit "no".
    """
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_browser(testcase):
    """
    Skip C{testcase} when the browser tests cannot or should not run here;
    under CI, fail it instead.
    """
    ci = in_ci()
    if os.environ.get(SKIP_VARIABLE) == "1":
        if ci:
            testcase.fail(
                "{}=1 is set, but so is CI: the browser tests must run in CI; "
                "unset {}".format(SKIP_VARIABLE, SKIP_VARIABLE))
        raise SkipTest("{}=1".format(SKIP_VARIABLE))
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append("chromium ({})".format(CHROMIUM))
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright Python package")
    if missing:
        what = "the browser tests need {}".format(" and ".join(missing))
        if ci:
            testcase.fail(what + " (CI is set, so this fails instead of skipping)")
        raise SkipTest(what + "; scripts/test installs it")


class ChildProcess(ProcessWatcher):
    """
    A child process whose standard output and error we keep, and whose
    first output line we can wait for.
    """

    def __init__(self, name):
        ProcessWatcher.__init__(self)
        self.name = name
        self.out = bytearray()
        self.err = bytearray()
        self._line_waiters = []

    def outReceived(self, data):
        self.out += data
        if b"\n" in self.out:
            line = self.out.split(b"\n", 1)[0].decode("utf-8", "replace")
            waiters, self._line_waiters = self._line_waiters, []
            for d in waiters:
                d.callback(line)

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        ProcessWatcher.processEnded(self, reason)
        waiters, self._line_waiters = self._line_waiters, []
        for d in waiters:
            d.errback(AssertionError("{} ended ({}) before printing a line; "
                                     "stderr:\n{}".format(self.name, self.status,
                                                          self.stderr_tail())))

    def first_line(self):
        """
        @return: a L{Deferred} firing with the first line of output (L{str}),
            or failing if the process ends without one.
        """
        if b"\n" in self.out:
            return defer.succeed(self.out.split(b"\n", 1)[0].decode("utf-8", "replace"))
        if self.ended.called:
            return defer.fail(AssertionError("{} ended without output".format(self.name)))
        d = defer.Deferred(lambda d: self._line_waiters.remove(d))
        self._line_waiters.append(d)
        return d

    @property
    def exit_code(self):
        """
        The exit code once ended (C{None} if killed by a signal).
        """
        return getattr(self.status, "exitCode", None)

    def stderr_tail(self, size=3000):
        return self.err[-size:].decode("utf-8", "replace")


def spawn_python(testcase, name, argv, directory):
    """
    Run C{sys.executable -u argv...} in C{directory}; a cleanup ends it
    (SIGTERM, then SIGKILL) and waits until it is gone.

    @return: its L{ChildProcess}.
    """
    child = ChildProcess(name)
    args = [sys.executable, "-u"] + list(argv)
    process = reactor.spawnProcess(child, args[0], args, env=dict(os.environ),
                                   path=directory)
    track_child(process, child)
    testcase.addCleanup(end_process, process, child)
    return child


def explain(report):
    """
    What the browser said about a visit, for assertion messages.
    """
    wanted = ["error", "console", "page_errors", "failed_requests", "websockets"]
    summary = {key: report.get(key) for key in wanted if report.get(key)}
    summary["exit_code"] = report.get("exit_code")
    summary["stderr"] = report.get("stderr", "")[-1500:]
    return "browser report:\n" + json.dumps(summary, indent=1, ensure_ascii=False)


class BrowserVisitorTests(TestCase):
    """
    A real browser's visit through the tunnel works the way it works against
    the local service directly.
    """

    _log = Logger()

    # The browser script bounds each of its own waits (30 s); this only
    # covers a hung subprocess.
    timeout = 120

    def setUp(self):
        require_browser(self)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    async def start_app(self):
        """
        Start the aiohttp application; return its base URL.
        """
        app = spawn_python(self, "browser app", [APP, "--watch-stdin"], self.directory)
        line = await app.first_line()
        return "http://127.0.0.1:{}".format(int(line))

    async def visit(self, url):
        """
        Let the browser visit C{url} and wait until it is done.

        @return: the browser script's report (see C{browser_visit.py}), plus
            its C{exit_code} and C{stderr}.
        """
        screenshot = os.path.join(self.directory, "screenshot.png")
        browser = spawn_python(self, "browser", [VISIT, url, screenshot],
                               self.directory)
        await browser.ended
        self._log.info("browser visited {url}: exit code {code}, screenshot {path}",
                       url=url, code=browser.exit_code, path=screenshot)
        try:
            report = json.loads(browser.out.decode("utf-8"))
        except ValueError:
            self.fail("the browser script printed no report (exit code {}); "
                      "stderr:\n{}".format(browser.exit_code, browser.stderr_tail()))
        with open(os.path.join(self.directory, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
        report["exit_code"] = browser.exit_code
        report["stderr"] = browser.stderr_tail()
        if not report["done"] or not report["results"]:
            self.fail("the page never finished. " + explain(report))
        return report

    async def visit_through_tunnel(self, parts=None, routing="host"):
        """
        Start the application, a tunnel to it, and let the browser visit the
        page through the tunnel (routed by host or by path), running the
        checks named in C{parts} (all by default).

        @return: C{(report, app_url)}.
        """
        app_url = await self.start_app()
        tunnel = await start_tunnel(self, app_url)
        if routing == "host":
            url = "http://{}/".format(tunnel.host)
        else:
            url = tunnel.path_url("/")
        if parts:
            url += "?parts=" + ",".join(parts)
        return await self.visit(url), app_url

    def part(self, report, name):
        """
        The page's result for check C{name}; fail if the check raised.
        """
        result = report["results"].get(name)
        if result is None or "error" in result:
            self.fail("the page's {} check failed: {!r}. {}".format(
                name, result and result.get("error"), explain(report)))
        return result

    async def seen(self, app_url):
        """
        What the application received (its C{/seen}), asked directly.
        """
        response = await visitor(self).get(app_url + "/seen")
        body = await response.content()
        with open(os.path.join(self.directory, "seen.json"), "wb") as f:
            f.write(body)
        return json.loads(body)

    async def test_browser_fetch_post_body_comes_back_byte_exact(self):
        """A binary fetch() POST from the page comes back from the local service byte for byte."""
        report, _ = await self.visit_through_tunnel(["fetch"])
        fetch = self.part(report, "fetch")
        sent = base64.b64decode(fetch["sent"])
        received = base64.b64decode(fetch["received"])
        self.assertEqual(fetch["status"], 200, explain(report))
        self.assertEqual(len(sent), 100003)
        self.assertTrue(received == sent, "{} bytes sent, {} received, differing".format(
            len(sent), len(received)))
        self.assertEqual(fetch["sha256Header"], sha256(sent))
        self.assertEqual(fetch["contentType"], "application/octet-stream")

    async def test_browser_websocket_echoes_text_and_binary_exactly(self):
        """A text and a binary message from the page's WebSocket come back unchanged, in order."""
        report, _ = await self.visit_through_tunnel(["websocket"])
        ws = self.part(report, "websocket")
        self.assertTrue(ws["opened"], "the websocket never opened: close {!r}. {}".format(
            ws.get("close"), explain(report)))
        self.assertEqual(ws["messages"], [
            {"type": "text", "data": ws["sentText"]},
            {"type": "binary", "data": ws["sentBinary"]},
        ])
        self.assertEqual(len(base64.b64decode(ws["sentBinary"])), 4099)
        self.assertNotEqual(ws["sentText"], ws["sentText"].encode("ascii", "ignore").decode())

    async def test_browser_sees_the_local_services_close_code_and_reason(self):
        """The local service closing with 4001 and a UTF-8 reason closes the page's WebSocket with both."""
        report, _ = await self.visit_through_tunnel(["websocket"])
        ws = self.part(report, "websocket")
        self.assertEqual((ws["close"]["code"], ws["close"]["reason"]),
                         (CLOSE_CODE, CLOSE_REASON), explain(report))

    async def test_browser_websocket_closed_by_the_local_service_closes_cleanly(self):
        """After the local service's close, the browser reports a clean close (wasClean), as it does without the tunnel."""
        report, _ = await self.visit_through_tunnel(["websocket"])
        ws = self.part(report, "websocket")
        self.assertEqual(ws["close"]["code"], CLOSE_CODE, explain(report))
        self.assertTrue(
            ws["close"]["wasClean"],
            "the browser saw an unclean close (the TCP connection was reset "
            "after the closing handshake, not closed): {!r}".format(ws["close"]))

    async def test_browser_event_source_gets_every_event_in_order(self):
        """The page's EventSource receives the finite stream's events, in order, from one request."""
        report, app_url = await self.visit_through_tunnel(["events"])
        events = self.part(report, "events")
        self.assertEqual(events["events"], [
            {"type": "message", "data": data, "lastEventId": str(number)}
            for number, data in enumerate(EVENTS, 1)
        ], explain(report))
        self.assertEqual(events["errors"], 0)
        seen = await self.seen(app_url)
        self.assertEqual(
            [r["path"] for r in seen["requests"] if r["path"] == "/events"], ["/events"])

    async def test_browser_user_agent_is_the_one_the_local_service_sees_once(self):
        """Page, fetch, websocket handshake and event stream each reach the local service once, with the browser's User-Agent only."""
        report, app_url = await self.visit_through_tunnel()
        user_agent = report["user_agent"]
        self.assertIn("Chrome/", user_agent)
        self.assertEqual(report["results"]["userAgent"], user_agent)
        seen = await self.seen(app_url)
        for path in ["/", "/echo", "/ws", "/events"]:
            requests = [r for r in seen["requests"] if r["path"] == path]
            self.assertEqual(len(requests), 1, "{} requests to {} at the local service. {}".format(
                len(requests), path, explain(report)))
            [request] = requests
            self.assertEqual(
                [value for name, value in request["headers"] if name.lower() == "user-agent"],
                [user_agent], path)

    async def test_browser_page_works_path_routed_too(self):
        """The same page, loaded at /proxy/request/<clientID>/, passes every check."""
        report, _ = await self.visit_through_tunnel(routing="path")
        results = report["results"]
        self.assertIn("/proxy/request/", results["location"])
        for name in ["fetch", "websocket", "events"]:
            self.assertTrue(self.part(report, name)["ok"], "{}: {!r}. {}".format(
                name, {k: v for k, v in results[name].items()
                       if k not in ("sent", "received", "sentBinary")},
                explain(report)))
