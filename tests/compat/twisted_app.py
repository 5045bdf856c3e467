"""
A twisted.web site with an Autobahn websocket resource, with the
compatibility routes (see L{tests.compat}).  Listens on 127.0.0.1, on a free
port unless one is given, and prints that port as its first line.

Usage: C{python twisted_app.py [PORT]}
"""

import hashlib
import json
import random
import sys

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.web import server
from twisted.web.resource import Resource

#: The only subprotocol the websocket routes accept.
SUBPROTOCOL = "chat.v2"

#: Statuses answered without a body.
NO_BODY = (204, 304)


def header_list(headers):
    return [[name.decode("latin-1"), value.decode("latin-1")]
            for name, values in headers.getAllRawHeaders() for value in values]


class Routes(Resource):
    """
    The HTTP routes.
    """

    isLeaf = True

    def render(self, request):
        parts = request.path.decode("latin-1").split("/")
        route = parts[1] if len(parts) > 1 else ""
        if route == "bytes" and len(parts) == 3:
            n = int(parts[2])
            seed = int(request.args.get(b"seed", [n])[0])
            request.setHeader(b"Content-Type", b"application/octet-stream")
            return random.Random(seed).randbytes(n)
        if route == "echo-body" and request.method == b"POST":
            body = request.content.read()
            request.setHeader(b"Content-Type", b"application/octet-stream")
            request.setHeader(b"X-Body-Sha256",
                              hashlib.sha256(body).hexdigest().encode("ascii"))
            return body
        if route == "status" and len(parts) == 3:
            code = int(parts[2])
            request.setResponseCode(code)
            if code in NO_BODY:
                return b""
            request.setHeader(b"Content-Type", b"text/plain")
            return "status {}\n".format(code).encode("ascii")
        if route == "cookies":
            request.responseHeaders.setRawHeaders(
                b"Set-Cookie", [b"a=1; Path=/", b"b=2; HttpOnly"])
            request.setHeader(b"Content-Type", b"text/plain")
            return b"cookies\n"
        if route == "headers":
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps(
                {"headers": header_list(request.requestHeaders)}).encode("utf-8")
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"text/plain")
        return b"no such route\n"


class WebSocketRoutes(WebSocketResource):
    """
    The websocket routes; keeps each handshake's headers as twisted.web
    parsed them (Autobahn only sees repeated headers joined into one).
    """

    def render(self, request):
        # buildProtocol and connectionMade run synchronously in here.
        self._factory.handshake_headers = header_list(request.requestHeaders)
        return WebSocketResource.render(self, request)


class WebSocketRoute(WebSocketServerProtocol):

    def connectionMade(self):
        WebSocketServerProtocol.connectionMade(self)
        self.handshake_headers = self.factory.handshake_headers

    def onConnect(self, request):
        self.route = request.path[len("/ws/"):]
        self.chosen = SUBPROTOCOL if SUBPROTOCOL in request.protocols else None
        return self.chosen

    def onOpen(self):
        if self.route == "headers":
            self.sendMessage(json.dumps(
                {"headers": self.handshake_headers, "protocol": self.chosen}
            ).encode("utf-8"))

    def onMessage(self, payload, isBinary):
        if self.route.startswith("close/"):
            code = int(self.route.split("/")[1])
            self.sendClose(code, "bye {}".format(code))
        else:
            self.sendMessage(payload, isBinary)


def main(port):
    factory = WebSocketServerFactory(reactor=reactor)
    factory.protocol = WebSocketRoute
    factory.setProtocolOptions(openHandshakeTimeout=0)
    root = Resource()
    root.putChild(b"ws", WebSocketRoutes(factory))
    routes = Routes()
    for name in [b"bytes", b"echo-body", b"status", b"cookies", b"headers"]:
        root.putChild(name, routes)
    site = server.Site(root)
    site.log = lambda request: None
    listening = reactor.listenTCP(port, site, interface="127.0.0.1")
    print(listening.getHost().port, flush=True)
    reactor.run()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
