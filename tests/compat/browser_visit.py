"""
Visit a page with a real browser -- Debian's chromium, driven by
playwright (no browser is downloaded) -- wait until the page sets
C{window.done}, and report what it found::

    python tests/compat/browser_visit.py URL SCREENSHOT [--timeout SECONDS]
        [--chromium PATH] [--map-localhost]

Standard output gets one JSON object:

  - C{done}: whether the page set C{window.done} in time;
  - C{results}: the page's C{window.results} (whatever it held, even when
    the page never finished);
  - C{console}, C{page_errors}, C{failed_requests}, C{responses},
    C{websockets}: what the browser logged, the HTTP responses it got
    (with their headers) and its websockets' fate, for diagnosis;
  - C{error}: why the visit failed, if it did.

The screenshot is saved to SCREENSHOT whenever the page loaded.  The exit
status is 0 when the page finished and reported C{ok}, 1 when it finished
but a check failed, 2 when the visit itself failed (the browser did not
start, the page did not load or never finished).
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
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _watch(page, report):
    page.on("console", lambda message: report["console"].append(
        {"type": message.type, "text": message.text}))
    page.on("pageerror", lambda error: report["page_errors"].append(str(error)))
    page.on("requestfailed", lambda request: report["failed_requests"].append(
        {"url": request.url, "method": request.method, "failure": request.failure}))

    def response(response):
        report["responses"].append({
            "url": response.url,
            "status": response.status,
            "headers": response.headers,
        })

    page.on("response", response)

    def websocket(ws):
        entry = {"url": ws.url, "errors": [], "closed": False}
        report["websockets"].append(entry)
        ws.on("socketerror", lambda error: entry["errors"].append(str(error)))
        ws.on("close", lambda _: entry.update(closed=True))

    page.on("websocket", websocket)


async def visit(options, report):
    args = list(CHROMIUM_ARGS)
    if options.map_localhost:
        args.append("--host-resolver-rules=MAP *.localhost 127.0.0.1")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=options.chromium, args=args, headless=True)
        try:
            context = await browser.new_context()
            page = await context.new_page()
            _watch(page, report)
            timeout = options.timeout * 1000
            try:
                await page.goto(options.url, timeout=timeout)
                await page.wait_for_function("window.done === true", timeout=timeout)
                report["done"] = True
            except Exception as e:
                report["error"] = "{}: {}".format(type(e).__name__, e)
            # Whatever happened, keep what the page knows and what it shows.
            report["results"] = await page.evaluate("window.results || null")
            report["user_agent"] = await page.evaluate("navigator.userAgent")
            await page.screenshot(path=options.screenshot, full_page=True)
            await context.close()
        finally:
            await browser.close()


async def run(options):
    report = {"url": options.url, "done": False, "results": None, "console": [],
              "page_errors": [], "failed_requests": [], "responses": [],
              "websockets": []}
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    # Terminated: unwind, so playwright closes the browser on the way out.
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await visit(options, report)
    except asyncio.CancelledError:
        report["error"] = "terminated"
    except Exception as e:
        report.setdefault("error", "{}: {}".format(type(e).__name__, e))
    sys.stdout.write(json.dumps(report, indent=1, sort_keys=True) + "\n")
    sys.stdout.flush()
    if not report["done"]:
        return 2
    return 0 if (report["results"] or {}).get("ok") else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("screenshot")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to load the page, and again to wait "
                             "for window.done (default 30)")
    parser.add_argument("--chromium", default=CHROMIUM,
                        help="the browser executable (default %(default)s)")
    parser.add_argument("--map-localhost", action="store_true",
                        help="resolve *.localhost to 127.0.0.1 in the browser")
    options = parser.parse_args(argv)
    return asyncio.run(run(options))


if __name__ == "__main__":
    sys.exit(main())
