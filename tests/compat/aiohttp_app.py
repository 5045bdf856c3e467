"""
An aiohttp.web application with the compatibility routes (see
L{tests.compat}).  Listens on 127.0.0.1, on a free port unless one is given,
and prints that port as its first line.

Usage: C{python aiohttp_app.py [PORT]}
"""

import asyncio
import hashlib
import json
import random
import socket
import sys

from aiohttp import WSMsgType, web

#: The only subprotocol the websocket routes accept.
SUBPROTOCOLS = ("chat.v2",)

#: Statuses answered without a body.
NO_BODY = (204, 304)


def header_list(request):
    return [[name.decode("latin-1"), value.decode("latin-1")]
            for name, value in request.raw_headers]


async def random_bytes(request):
    n = int(request.match_info["n"])
    seed = int(request.query.get("seed", n))
    return web.Response(body=random.Random(seed).randbytes(n),
                        content_type="application/octet-stream")


async def echo_body(request):
    body = await request.read()
    return web.Response(
        body=body, content_type="application/octet-stream",
        headers={"X-Body-Sha256": hashlib.sha256(body).hexdigest()})


async def status(request):
    code = int(request.match_info["code"])
    if code in NO_BODY:
        return web.Response(status=code)
    return web.Response(status=code, text="status {}\n".format(code))


async def cookies(request):
    response = web.Response(text="cookies\n")
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; HttpOnly")
    return response


async def headers(request):
    return web.json_response({"headers": header_list(request)})


async def websocket(request):
    route = request.match_info["route"]
    ws = web.WebSocketResponse(protocols=SUBPROTOCOLS, max_msg_size=0)
    await ws.prepare(request)
    if route == "headers":
        await ws.send_str(json.dumps(
            {"headers": header_list(request), "protocol": ws.ws_protocol}))
    async for message in ws:
        if route.startswith("close/"):
            code = int(route.split("/")[1])
            await ws.close(code=code, message="bye {}".format(code).encode())
        elif message.type == WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


def make_app():
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/bytes/{n}", random_bytes)
    app.router.add_post("/echo-body", echo_body)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/cookies", cookies)
    app.router.add_route("*", "/headers", headers)
    app.router.add_get("/ws/{route:.+}", websocket)
    return app


async def serve(port):
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    site = web.SockSite(runner, sock)
    await site.start()
    print(sock.getsockname()[1], flush=True)
    await asyncio.Event().wait()  # until SIGTERM ends the process


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
