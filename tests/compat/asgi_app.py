"""
A Starlette application with the compatibility routes (see L{tests.compat}),
served by uvicorn.  Listens on 127.0.0.1, on a free port unless one is given,
and prints that port as its first line.

Usage: C{python asgi_app.py [PORT]}
"""

import asyncio
import hashlib
import json
import random
import socket
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

#: The only subprotocol the websocket routes accept.
SUBPROTOCOL = "chat.v2"

#: Statuses answered without a body.
NO_BODY = (204, 304)


def header_list(connection):
    return [[name.decode("latin-1"), value.decode("latin-1")]
            for name, value in connection.headers.raw]


async def random_bytes(request):
    n = int(request.path_params["n"])
    seed = int(request.query_params.get("seed", n))
    return Response(random.Random(seed).randbytes(n),
                    media_type="application/octet-stream")


async def echo_body(request):
    body = await request.body()
    return Response(body, media_type="application/octet-stream",
                    headers={"X-Body-Sha256": hashlib.sha256(body).hexdigest()})


async def status(request):
    code = int(request.path_params["code"])
    if code in NO_BODY:
        return Response(status_code=code)
    return Response("status {}\n".format(code), status_code=code,
                    media_type="text/plain")


async def cookies(request):
    response = Response("cookies\n", media_type="text/plain")
    response.raw_headers.append((b"set-cookie", b"a=1; Path=/"))
    response.raw_headers.append((b"set-cookie", b"b=2; HttpOnly"))
    return response


async def headers(request):
    return JSONResponse({"headers": header_list(request)})


async def websocket(ws):
    route = ws.path_params["route"]
    chosen = SUBPROTOCOL if SUBPROTOCOL in ws.scope["subprotocols"] else None
    await ws.accept(subprotocol=chosen)
    if route == "headers":
        await ws.send_text(json.dumps(
            {"headers": header_list(ws), "protocol": chosen}))
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        if route.startswith("close/"):
            code = int(route.split("/")[1])
            await ws.close(code=code, reason="bye {}".format(code))
            return
        if message.get("text") is not None:
            await ws.send_text(message["text"])
        else:
            await ws.send_bytes(message["bytes"])


app = Starlette(routes=[
    Route("/bytes/{n:int}", random_bytes),
    Route("/echo-body", echo_body, methods=["POST"]),
    Route("/status/{code:int}", status, methods=["GET", "POST", "HEAD"]),
    Route("/cookies", cookies),
    Route("/headers", headers, methods=["GET", "POST"]),
    WebSocketRoute("/ws/{route:path}", websocket),
])


def main(port):
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    config = uvicorn.Config(app, log_level="warning", lifespan="off",
                            ws_max_size=16 * 1024 * 1024)
    server = uvicorn.Server(config)
    # Listening already: connections wait in the backlog until uvicorn runs.
    print(sock.getsockname()[1], flush=True)
    asyncio.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
