"""
A visitor websocket made with the C{websockets} library: connect, play the
steps of a JSON file, close, and print one JSON document describing what
happened.

Usage::

    python visit_ws.py URL [--host HOST] [--subprotocol NAME]...
        [--header 'Name: value']... [--user-agent UA] [--origin ORIGIN]
        [--steps FILE]

C{URL} names where to connect (C{ws://127.0.0.1:<port>/path}); C{--host}
puts another host in the request (and the Host header) while still
connecting there.  Steps (see L{tests.compat_support}): C{["text", str]},
C{["binary", base64]}, C{["receive"]}, C{["await_close"]}.

Output: C{{"status": 101, "subprotocol": ..., "messages": [...],
"close": [code, reason] or null}}, each message C{["text", str]} or
C{["binary", base64]}; or C{{"status": <n>, "body": ...}} when the
handshake was refused.
"""

import argparse
import asyncio
import base64
import json
import sys
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


def parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--host")
    parser.add_argument("--subprotocol", action="append", default=[])
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--user-agent")
    parser.add_argument("--origin")
    parser.add_argument("--steps")
    return parser.parse_args(argv)


def closed(ws):
    return [ws.close_code, ws.close_reason]


async def visit(args):
    steps = []
    if args.steps:
        with open(args.steps) as f:
            steps = json.load(f)
    parts = urlsplit(args.url)
    uri, where = args.url, {}
    if args.host:
        uri = urlunsplit(parts._replace(netloc=args.host))
        where = {"host": parts.hostname, "port": parts.port}
    headers = [tuple(h.split(": ", 1)) for h in args.header]
    if args.user_agent is not None:
        where["user_agent_header"] = args.user_agent  # else the library's own
    try:
        ws = await connect(
            uri, subprotocols=args.subprotocol or None, additional_headers=headers,
            origin=args.origin, proxy=None, max_size=None, open_timeout=None,
            **where)
    except InvalidStatus as e:
        return {"status": e.response.status_code,
                "body": e.response.body.decode("utf-8", "replace")}
    result = {"status": 101, "subprotocol": ws.subprotocol, "messages": [],
              "close": None}
    async with ws:
        for step in steps:
            if step[0] == "text":
                await ws.send(step[1])
            elif step[0] == "binary":
                await ws.send(base64.b64decode(step[1]))
            elif step[0] == "receive":
                try:
                    message = await ws.recv()
                except ConnectionClosed:
                    result["close"] = closed(ws)
                    break
                if isinstance(message, str):
                    result["messages"].append(["text", message])
                else:
                    result["messages"].append(
                        ["binary", base64.b64encode(message).decode("ascii")])
            elif step[0] == "await_close":
                await ws.wait_closed()
                result["close"] = closed(ws)
                break
    return result


def main():
    result = asyncio.run(visit(parse_args(sys.argv[1:])))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
