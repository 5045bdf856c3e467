"""
The local service a real browser visits through the tunnel: a small
aiohttp application, run as a subprocess by L{tests.test_browser}::

    python tests/compat/browser_app.py [--watch-stdin]

It listens on 127.0.0.1 on a free port and prints that port as the first
line of its standard output.  It stops on SIGTERM or SIGINT and, with
C{--watch-stdin}, when its standard input is closed (so it cannot outlive
the test process that started it).

Routes:

  - C{/}: an HTML page whose script checks, against its own origin, a
    binary C{fetch} POST (C{echo}), a websocket (C{ws}) and an
    C{EventSource} (C{events}), writes what it saw into C{window.results}
    and sets C{window.done = true}.  C{?parts=fetch,websocket,events}
    picks the checks (all three by default).  The page builds every URL
    relative to its own directory, so it works host-routed (at C{/}) and
    path-routed (at C{/proxy/request/<clientID>/}).
  - C{/echo}: the request body back, byte for byte, with its SHA-256 in
    C{X-Body-SHA256}.
  - C{/ws}: a websocket echoing text and binary messages; after the
    second message it closes with L{CLOSE_CODE} and L{CLOSE_REASON}.
  - C{/events}: a finite C{text/event-stream} with one event per
    L{EVENTS} entry, then the end of the response.
  - C{/seen}: JSON: every request the application received (except those
    to C{/seen}) with its raw headers, and the messages each websocket
    received.
"""

import argparse
import asyncio
import hashlib
import json
import os
import signal
import sys

from aiohttp import WSMsgType, web

CLOSE_CODE = 4001
CLOSE_REASON = "bye from aiohttp \u2713"
EVENTS = ["first event", "second event", "third event"]

REQUESTS = web.AppKey("requests", list)
WEBSOCKETS = web.AppKey("websockets", list)

PAGE = """<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>brickchain-proxy browser check</title>
<link rel="icon" href="data:,">
<style>body { font: 14px monospace; } .ok { color: green; } .bad { color: red; }</style>
</head>
<body>
<h1>brickchain-proxy browser check</h1>
<ul id="summary"></ul>
<script>
"use strict";
window.done = false;
window.results = {userAgent: navigator.userAgent, location: location.href};

const CLOSE_CODE = %(close_code)d;
const CLOSE_REASON = %(close_reason)s;
const EVENTS = %(events)s;
const TEXT = "hello from the browser, h\\u00e9llo \\u2603 \\ud83c\\udf89";
// The page's own directory: "/" host-routed, "/proxy/request/<id>/" path-routed.
const base = new URL(".", location.href);

function randomBytes(n) {
  const bytes = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) {
    crypto.getRandomValues(bytes.subarray(i, Math.min(n, i + 65536)));
  }
  return bytes;
}

function b64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
  }
  return btoa(text);
}

function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

async function checkFetch() {
  const sent = randomBytes(100003);
  const response = await fetch(new URL("echo", base), {
    method: "POST",
    body: sent,
    headers: {"Content-Type": "application/octet-stream"},
  });
  const received = new Uint8Array(await response.arrayBuffer());
  return {
    ok: response.status === 200 && sameBytes(sent, received),
    url: response.url,
    status: response.status,
    contentType: response.headers.get("content-type"),
    sha256Header: response.headers.get("x-body-sha256"),
    sent: b64(sent),
    received: b64(received),
  };
}

function checkWebSocket() {
  return new Promise((resolve) => {
    const url = new URL("ws", base);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const binary = randomBytes(4099);
    const out = {url: url.href, opened: false, errors: 0, messages: [],
                 sentText: TEXT, sentBinary: b64(binary)};
    const ws = new WebSocket(url.href);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      out.opened = true;
      ws.send(TEXT);
      ws.send(binary);
    };
    ws.onmessage = (event) => {
      if (typeof event.data === "string") {
        out.messages.push({type: "text", data: event.data});
      } else {
        out.messages.push({type: "binary", data: b64(new Uint8Array(event.data))});
      }
    };
    ws.onerror = () => { out.errors += 1; };
    ws.onclose = (event) => {
      out.close = {code: event.code, reason: event.reason, wasClean: event.wasClean};
      const [text, bin] = out.messages;
      out.ok = (out.messages.length === 2
                && text.type === "text" && text.data === TEXT
                && bin.type === "binary" && bin.data === out.sentBinary
                && event.code === CLOSE_CODE && event.reason === CLOSE_REASON);
      resolve(out);
    };
  });
}

function checkEvents() {
  return new Promise((resolve) => {
    const url = new URL("events", base);
    const out = {url: url.href, opened: false, errors: 0, events: []};
    const source = new EventSource(url.href);
    const finish = () => {
      source.close();
      out.ok = JSON.stringify(out.events.map((e) => e.data)) === JSON.stringify(EVENTS);
      resolve(out);
    };
    source.onopen = () => { out.opened = true; };
    source.onmessage = (event) => {
      out.events.push({type: event.type, data: event.data, lastEventId: event.lastEventId});
      if (out.events.length === EVENTS.length) finish();
    };
    // The stream ended (or failed) before every event arrived: close the
    // source instead of letting it reconnect.
    source.onerror = () => {
      out.errors += 1;
      out.readyState = source.readyState;
      finish();
    };
  });
}

const CHECKS = {fetch: checkFetch, websocket: checkWebSocket, events: checkEvents};

function show(name, result) {
  const item = document.createElement("li");
  item.className = result.ok ? "ok" : "bad";
  const detail = result.error || (result.close ? "close " + result.close.code + " " + result.close.reason
                                  : result.events ? result.events.length + " events"
                                  : result.status ? "status " + result.status : "");
  item.textContent = name + ": " + (result.ok ? "ok" : "FAILED") + " " + detail;
  document.getElementById("summary").appendChild(item);
}

async function main() {
  const wanted = new URLSearchParams(location.search).get("parts");
  const names = wanted ? wanted.split(",") : Object.keys(CHECKS);
  window.results.parts = names;
  let ok = true;
  for (const name of names) {
    let result;
    try {
      result = await CHECKS[name]();
    } catch (e) {
      result = {ok: false, error: String(e)};
    }
    window.results[name] = result;
    ok = ok && result.ok;
    show(name, result);
  }
  window.results.ok = ok;
}

main().catch((e) => { window.results.error = String(e); window.results.ok = false; })
      .finally(() => { window.done = true; });
</script>
</body>
</html>
""" % {
    "close_code": CLOSE_CODE,
    "close_reason": json.dumps(CLOSE_REASON),
    "events": json.dumps(EVENTS),
}


@web.middleware
async def record(request, handler):
    """
    Remember every request (its raw headers, in order, repeats included).
    """
    if request.path != "/seen":
        request.app[REQUESTS].append({
            "method": request.method,
            "path": request.raw_path,
            "headers": [[name.decode("latin-1"), value.decode("latin-1")]
                        for name, value in request.raw_headers],
        })
    return await handler(request)


async def index(request):
    return web.Response(text=PAGE, content_type="text/html",
                        headers={"Cache-Control": "no-store"})


async def echo(request):
    body = await request.read()
    return web.Response(
        body=body,
        content_type="application/octet-stream",
        headers={"X-Body-SHA256": hashlib.sha256(body).hexdigest()},
    )


async def websocket(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    received = []
    request.app[WEBSOCKETS].append(received)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            received.append({"type": "text", "data": message.data})
            await ws.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            received.append({"type": "binary",
                             "sha256": hashlib.sha256(message.data).hexdigest()})
            await ws.send_bytes(message.data)
        if len(received) == 2:
            await ws.close(code=CLOSE_CODE, message=CLOSE_REASON.encode("utf-8"))
    return ws


async def events(request):
    response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    # A long retry: if the stream is cut short, the page sees the error
    # (and closes the source) instead of an immediate reconnection.
    await response.write(b"retry: 600000\n\n")
    for number, data in enumerate(EVENTS, 1):
        await response.write("id: {}\ndata: {}\n\n".format(number, data).encode("utf-8"))
    await response.write_eof()
    return response


async def seen(request):
    return web.json_response({
        "requests": request.app[REQUESTS],
        "websockets": request.app[WEBSOCKETS],
    })


def make_app():
    app = web.Application(middlewares=[record])
    app[REQUESTS] = []
    app[WEBSOCKETS] = []
    app.router.add_get("/", index)
    app.router.add_post("/echo", echo)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/events", events)
    app.router.add_get("/seen", seen)
    return app


async def serve(watch_stdin):
    runner = web.AppRunner(make_app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sys.stdout.write("{}\n".format(port))
    sys.stdout.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if watch_stdin:
        fd = sys.stdin.fileno()

        def readable():
            if not os.read(fd, 4096):
                loop.remove_reader(fd)
                stop.set()

        loop.add_reader(fd, readable)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watch-stdin", action="store_true",
                        help="also stop when standard input is closed")
    options = parser.parse_args(argv)
    asyncio.run(serve(options.watch_stdin))


if __name__ == "__main__":
    main()
