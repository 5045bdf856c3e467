"""
A small local service to try the tunnel with (used by scripts/quickstart):

  - C{GET /}: a greeting page;
  - C{/echo}: JSON describing the request it received (any method);
  - C{/ws}: a websocket that echoes every message.

Run it with C{python -m brickchain_proxy.sample --port 8080}.
"""

import argparse
import hashlib
import json
import sys

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.web import server
from twisted.web.resource import Resource

PAGE = b"""<!doctype html>
<title>brickchain-proxy sample</title>
<h1>Hello through the tunnel</h1>
<p>This page is served by the sample local service behind brickclient.</p>
"""


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return PAGE


class Echo(Resource):
    """
    Describe the request as JSON.
    """

    isLeaf = True

    def render(self, request):
        body = request.content.read()
        description = {
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1"),
            "headers": {
                k.decode("latin-1"): [v.decode("latin-1") for v in vs]
                for k, vs in request.requestHeaders.getAllRawHeaders()
            },
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(description, indent=2).encode("utf-8") + b"\n"


class EchoProtocol(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        self.sendMessage(payload, isBinary)


def make_site(reactor=None):
    """
    The sample service's site.
    """
    root = Resource()
    root.putChild(b"", Hello())
    root.putChild(b"echo", Echo())
    factory = WebSocketServerFactory(reactor=reactor)
    factory.protocol = EchoProtocol
    factory.setProtocolOptions(maxMessagePayloadSize=16 * 1024 * 1024)
    root.putChild(b"ws", WebSocketResource(factory))
    return server.Site(root, reactor=reactor)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    reactor.listenTCP(args.port, make_site(reactor), interface=args.interface)
    Logger().info("sample service on http://{iface}:{port}/",
                  iface=args.interface, port=args.port)
    reactor.run()


if __name__ == "__main__":
    main()
