"""
Standalone programs for the compatibility tier: third-party software on
both sides of the tunnel, each run as a subprocess.

For L{tests.test_compat_services}, local services, each printing the port it
listens on as its first line of output (C{supervise.py} runs them, and ends
them if the test process goes away), all with the same routes:

  - C{aiohttp_app.py}: an aiohttp.web application;
  - C{asgi_app.py}: a Starlette application under uvicorn;
  - C{twisted_app.py}: twisted.web with an Autobahn websocket resource;
  - C{nginx.conf.in}: nginx serving static files and proxying the rest
    (websockets included) to C{aiohttp_app.py}.

Visitors besides curl (which L{tests.compat_support.curl} runs directly),
each run once per visit and printing one JSON document:

  - C{visit_ws.py}: a websocket made with the C{websockets} library;
  - C{visit_aiohttp.py}: an HTTP request or a websocket made with aiohttp's
    client.

For L{tests.test_browser}: C{browser_app.py}, a page and its routes, and
C{browser_visit.py}, headless Chromium visiting it.

The routes every local service answers:

  - C{GET /bytes/<n>?seed=<s>}: C{random.Random(s).randbytes(n)};
  - C{POST /echo-body}: the request body, with C{X-Body-Sha256} naming the
    SHA-256 of what arrived;
  - C{/status/<n>}: status C{n}, body C{"status <n>\\n"} (none for 204
    and 304);
  - C{/cookies}: two C{Set-Cookie} headers, C{a=1; Path=/} and
    C{b=2; HttpOnly};
  - C{/headers}: C{{"headers": [[name, value], ...]}}, every request header
    as it arrived, repeats included;
  - websockets C{/ws/echo} (every message back, text as text, binary as
    binary), C{/ws/close/<code>} (on the first message, close with C{code}
    and reason C{"bye <code>"}) and C{/ws/headers} (first a text message
    C{{"headers": [...], "protocol": <chosen>}} describing the handshake,
    then echo); each picks the subprotocol C{chat.v2} when it is offered,
    whatever else is.
"""
