"""
A visitor made with aiohttp's client: one HTTP request, or one websocket
that plays the steps of a JSON file; prints one JSON document describing
the answer.

Usage::

    python visit_aiohttp.py http URL [--method M] [--host HOST]
        [--header 'Name: value']... [--data FILE]
    python visit_aiohttp.py ws URL [--host HOST] [--subprotocol NAME]...
        [--header 'Name: value']... [--origin ORIGIN] [--steps FILE]

C{URL} names where to connect; C{--host} sends another Host header.  A
User-Agent goes in as a C{--header}.  The websocket steps and output are
those of C{visit_ws.py}; the HTTP output is C{{"status": <n>,
"headers": [[name, value], ...], "body": base64}}.
"""

import argparse
import asyncio
import base64
import json
import sys

import aiohttp
from aiohttp import WSMsgType


def parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["http", "ws"])
    parser.add_argument("url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--host")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--data")
    parser.add_argument("--subprotocol", action="append", default=[])
    parser.add_argument("--origin")
    parser.add_argument("--steps")
    return parser.parse_args(argv)


def request_headers(args):
    headers = [tuple(h.split(": ", 1)) for h in args.header]
    if args.host:
        headers.append(("Host", args.host))
    return headers


async def http_visit(session, args):
    data = None
    if args.data:
        with open(args.data, "rb") as f:
            data = f.read()
    async with session.request(
            args.method, args.url, headers=request_headers(args), data=data,
            allow_redirects=False) as response:
        body = await response.read()
        return {
            "status": response.status,
            "headers": [[n.decode("latin-1"), v.decode("latin-1")]
                        for n, v in response.raw_headers],
            "body": base64.b64encode(body).decode("ascii"),
        }


async def ws_visit(session, args):
    steps = []
    if args.steps:
        with open(args.steps) as f:
            steps = json.load(f)
    try:
        ws = await session.ws_connect(
            args.url, protocols=args.subprotocol, headers=request_headers(args),
            origin=args.origin, max_msg_size=0)
    except aiohttp.WSServerHandshakeError as e:
        return {"status": e.status, "body": e.message}
    result = {"status": 101, "subprotocol": ws.protocol, "messages": [],
              "close": None}
    async with ws:
        for step in steps:
            if step[0] == "text":
                await ws.send_str(step[1])
            elif step[0] == "binary":
                await ws.send_bytes(base64.b64decode(step[1]))
            elif step[0] in ("receive", "await_close"):
                message = await ws.receive()
                while step[0] == "await_close" and message.type in (
                        WSMsgType.TEXT, WSMsgType.BINARY):
                    message = await ws.receive()
                if message.type == WSMsgType.TEXT:
                    result["messages"].append(["text", message.data])
                elif message.type == WSMsgType.BINARY:
                    result["messages"].append(
                        ["binary", base64.b64encode(message.data).decode("ascii")])
                elif message.type == WSMsgType.CLOSE:
                    result["close"] = [message.data, message.extra]
                    break
                else:
                    result["close"] = [ws.close_code, None]
                    break
    return result


async def visit(args):
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        if args.kind == "http":
            return await http_visit(session, args)
        return await ws_visit(session, args)


def main():
    result = asyncio.run(visit(parse_args(sys.argv[1:])))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
