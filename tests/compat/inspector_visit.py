"""
Use the client's inspector page in a real browser -- Debian's chromium,
driven by playwright (no browser is downloaded) -- for
L{tests.test_inspector_browser}::

    python tests/compat/inspector_visit.py INSPECTOR_URL TUNNEL_URL SCREENSHOT
        [--timeout SECONDS] [--chromium PATH]

With the page open, it sends through the tunnel (C{TUNNEL_URL} is the
tunnel's path-routed base URL) a C{POST /echo-body} whose body is an HTML
C{<script>}, waits -- with playwright's own waiting -- for the exchange to
appear on the page without a reload, opens its details, clicks its Replay
button and waits for the replay's entry, then takes a screenshot.

Standard output gets one JSON object:

  - C{steps}: the steps that were completed, in order;
  - C{entry}, C{replay}: the original's and the replay's C{data-} fields
    (id, path, status, state, replay of);
  - C{shown_body}: the text of the original's response body on the page;
  - C{script_ran}: whether the recorded script ran (it sets
    C{window.pwned});
  - C{scripts_in_list}: C{<script>} elements inside the list (0 expected);
  - C{reloaded}: whether the page was reloaded or navigated away;
  - C{console}, C{page_errors}, C{failed_requests}: for diagnosis;
  - C{error}: why the visit stopped, if it did.

The exit status is 0 when every step was done, 2 otherwise.
"""

import argparse
import asyncio
import json
import signal
import sys

from playwright.async_api import async_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: The request body: HTML that would run if the page parsed it.
SCRIPT_BODY = "<script>window.pwned = true</script><img src=x onerror=\"window.pwned = true\">"

STEPS = ["opened", "live", "request sent", "shown live", "details shown",
         "replayed", "screenshot"]


def entry_fields(handle):
    return handle.evaluate(
        "node => ({id: Number(node.dataset.id), path: node.dataset.path, "
        "status: node.dataset.status, state: node.dataset.state, "
        "replayOf: node.dataset.replayOf || null})")


async def visit(options, report):
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=options.chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            page.set_default_timeout(options.timeout * 1000)
            page.on("console", lambda m: report["console"].append(
                {"type": m.type, "text": m.text}))
            page.on("pageerror", lambda e: report["page_errors"].append(str(e)))
            page.on("requestfailed", lambda r: report["failed_requests"].append(
                {"url": r.url, "failure": r.failure}))
            navigations = []
            page.on("framenavigated", lambda frame: navigations.append(frame.url)
                    if frame == page.main_frame else None)
            try:
                await page.goto(options.inspector_url)
                await page.evaluate("window.marker = 'still the same page'")
                report["steps"].append("opened")
                await page.wait_for_selector('body[data-live="yes"]')
                report["steps"].append("live")

                answer = await context.request.post(
                    options.tunnel_url + "echo-body", data=SCRIPT_BODY,
                    headers={"Content-Type": "text/html"})
                report["tunnel_status"] = answer.status
                report["steps"].append("request sent")

                entry = page.locator(
                    'li.exchange[data-path="/echo-body"][data-state="complete"]'
                    ':not([data-replay-of])')
                await entry.wait_for()
                report["entry"] = await entry_fields(entry)
                report["steps"].append("shown live")

                await entry.locator("summary").click()
                body = entry.locator(".side").nth(1).locator("pre.body")
                await body.wait_for()
                report["shown_body"] = await body.text_content()
                report["steps"].append("details shown")

                await entry.locator("button.replay").click()
                replay = page.locator(
                    'li.exchange[data-replay-of="{}"][data-state="complete"]'.format(
                        report["entry"]["id"]))
                await replay.wait_for()
                report["replay"] = await entry_fields(replay)
                await replay.locator("summary").click()
                report["steps"].append("replayed")

                await page.screenshot(path=options.screenshot, full_page=True)
                report["steps"].append("screenshot")
            except Exception as e:
                report["error"] = "{}: {}".format(type(e).__name__, e)
                try:
                    await page.screenshot(path=options.screenshot, full_page=True)
                except Exception:
                    pass
            report["script_ran"] = await page.evaluate("window.pwned === true")
            report["scripts_in_list"] = await page.evaluate(
                "document.querySelectorAll('#exchanges script, #exchanges img').length")
            report["reloaded"] = (
                await page.evaluate("window.marker") != "still the same page"
                or len(navigations) != 1)
            await context.close()
        finally:
            await browser.close()


async def run(options):
    report = {"steps": [], "console": [], "page_errors": [], "failed_requests": []}
    task = asyncio.current_task()
    # Terminated: unwind, so playwright closes the browser on the way out.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await visit(options, report)
    except asyncio.CancelledError:
        report["error"] = "terminated"
    except Exception as e:
        report.setdefault("error", "{}: {}".format(type(e).__name__, e))
    sys.stdout.write(json.dumps(report, indent=1, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0 if report["steps"] == STEPS else 2


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inspector_url")
    parser.add_argument("tunnel_url")
    parser.add_argument("screenshot")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds for each wait (default 30)")
    parser.add_argument("--chromium", default=CHROMIUM,
                        help="the browser executable (default %(default)s)")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
