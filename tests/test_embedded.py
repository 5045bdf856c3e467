"""
The client as a library, serving a twisted.web resource inside the process
(no local port): a real proxy on loopback, a L{TunnelClientService} whose
C{local} is a resource tree holding a WSGI application
(L{WSGIResource}) and an Autobahn L{WebSocketResource}, and visitors over
HTTP and websockets.  Once with streams (our own proxy and client) and once
as v1 (message per request), so both paths run through the in-memory
connections.
"""

import hashlib
import json
import os
import sys

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.wsgi import WSGIResource

from brickchain_proxy.client import ClientStopped, Registration, TunnelClientService
from brickchain_proxy.features import MESSAGE_FEATURES, STREAMS
from tests.support import (
    pseudo_random_bytes,
    sha256,
    start_client,
    start_proxy,
    visitor,
    wait_until,
)
from tests.compat_support import spawn
from tests.support_ws import connect_visitor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "embed_wsgi.py")


def wsgi_app(environ, start_response):
    """
    A plain WSGI application: C{/echo} answers the request body back with
    its size and hash in headers; anything else describes the request as
    JSON.
    """
    body = environ["wsgi.input"].read()
    if environ["PATH_INFO"] == "/echo":
        start_response("200 OK", [
            ("Content-Type", "application/octet-stream"),
            ("X-Body-Length", str(len(body))),
            ("X-Body-SHA256", hashlib.sha256(body).hexdigest()),
        ])
        return [body]
    description = {
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "host": environ.get("HTTP_HOST"),
        "remote": environ["REMOTE_ADDR"],
        "forwarded_for": environ.get("HTTP_X_FORWARDED_FOR"),
    }
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(description).encode("utf-8")]


class EchoProtocol(WebSocketServerProtocol):
    """
    A websocket that sends every message back.
    """

    def onMessage(self, payload, isBinary):
        self.sendMessage(payload, isBinary)


def local_tree(testcase):
    """
    The in-process service: C{/app/...} is the WSGI application,
    C{/ws} the echo websocket.  Its thread pool stops at the end of the test.
    """
    pool = ThreadPool(minthreads=1, maxthreads=4, name="test-wsgi")
    pool.start()
    testcase.addCleanup(pool.stop)
    factory = WebSocketServerFactory(reactor=reactor)
    factory.protocol = EchoProtocol
    factory.setProtocolOptions(maxMessagePayloadSize=4 * 1024 * 1024,
                               maxFramePayloadSize=4 * 1024 * 1024)
    root = Resource()
    root.putChild(b"app", WSGIResource(reactor, pool, wsgi_app))
    root.putChild(b"ws", WebSocketResource(factory))
    return root


class _EmbeddedFixture:
    """
    A proxy on loopback and a library client serving L{local_tree}.
    """

    timeout = 60
    #: the features the client offers (None: all it speaks)
    features = None

    async def start(self):
        proxy, port, _ = await start_proxy(self)
        kwargs = {} if self.features is None else {"features": self.features}
        self.client = start_client(self, "http://127.0.0.1:{}".format(port),
                                   local_tree(self), **kwargs)
        self.registration = await self.client.when_registered()
        self.port = port
        self.proxy = proxy
        self.http = visitor(self)
        self.addCleanup(self.assert_nothing_left)
        return self.registration

    def assert_nothing_left(self):
        """
        Nothing pending on the proxy; no local websocket on the client.
        """
        hub = self.proxy.hub

        def empty():
            client = self.client.protocol
            return (not hub.streams and not len(hub.pending)
                    and (client is None or not client.local_websockets.streams))

        return wait_until(empty, what="hub and client streams empty")

    def url(self, path):
        return "http://127.0.0.1:{}/proxy/request/{}{}".format(
            self.port, self.registration.client_id, path)

    async def test_registration_names_the_public_url(self):
        """when_registered() fires with a Registration: hostname, client_id, url."""
        registration = await self.start()
        self.assertIsInstance(registration, Registration)
        self.assertEqual(registration.hostname,
                         "{}.localhost".format(registration.client_id))
        self.assertEqual(registration.url, "http://{}:{}/".format(
            registration.hostname, self.port))
        self.assertEqual(registration.path_url, self.url("/"))
        self.assertEqual(registration.key_id, registration.client_id)
        self.assertIs(await self.client.when_registered(), registration)

    async def test_wsgi_application_answers_a_visitor(self):
        """A GET reaches the WSGI application in this process and comes back."""
        await self.start()
        response = await self.http.get(self.url("/app/hello?x=1"))
        self.assertEqual(response.code, 200)
        description = json.loads(await response.text())
        self.assertEqual(description["method"], "GET")
        self.assertEqual(description["path"], "/hello")
        self.assertEqual(description["query"], "x=1")
        # The Host header is the in-process URL's, as for a local URL.
        self.assertEqual(description["host"], "in-process")
        self.assertEqual(description["remote"], "127.0.0.1")
        self.assertEqual(description["forwarded_for"], "127.0.0.1")

    async def test_host_routing_reaches_the_application(self):
        """The tunnel's hostname routes to the in-process application too."""
        registration = await self.start()
        response = await self.http.get(
            "http://127.0.0.1:{}/app/h".format(self.port),
            headers={"Host": "{}:{}".format(registration.hostname, self.port)})
        self.assertEqual(json.loads(await response.text())["path"], "/h")

    async def test_websocket_echo(self):
        """A visitor websocket reaches the in-process WebSocketResource and back."""
        await self.start()
        ws = await connect_visitor(
            self, "ws://127.0.0.1:{}/proxy/request/{}/ws".format(
                self.port, self.registration.client_id))
        self.assertEqual(await ws.echo(b"hello"), (b"hello", False))
        payload = pseudo_random_bytes(200 * 1024)
        echoed, is_binary = await ws.echo(payload, is_binary=True)
        self.assertTrue(is_binary)
        self.assertTrue(echoed == payload, "binary message differs")
        ws.sendClose(1000)
        code, _ = await ws.closed
        self.assertEqual(code, 1000)

    async def test_stop_fails_waiters(self):
        """when_registered() waiting on a stopped client fails with ClientStopped."""
        await self.start()
        await self.client.stopService()
        self.failureResultOf(self.client.when_registered(), ClientStopped)


class StreamedTests(_EmbeddedFixture, TestCase):
    """
    Between our proxy and client: bodies on streams.
    """

    async def test_body_over_a_megabyte_both_ways(self):
        """A 1.5 MB request body reaches the WSGI app and comes back whole."""
        await self.start()
        self.assertIn(STREAMS, self.registration.features)
        body = pseudo_random_bytes(1536 * 1024)
        response = await self.http.post(self.url("/app/echo"), data=body)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("x-body-length"),
                         [str(len(body))])
        self.assertEqual(response.headers.getRawHeaders("x-body-sha256"),
                         [sha256(body)])
        answer = await response.content()
        self.assertEqual((len(answer), sha256(answer)), (len(body), sha256(body)))


class V1Tests(_EmbeddedFixture, TestCase):
    """
    As a v1 client: one message per request and per websocket frame.
    """

    features = MESSAGE_FEATURES

    async def test_small_body_as_a_message(self):
        """A POST body travels in the http-request message and back."""
        await self.start()
        self.assertNotIn(STREAMS, self.registration.features)
        body = pseudo_random_bytes(100 * 1024)
        response = await self.http.post(self.url("/app/echo"), data=body)
        self.assertEqual(response.code, 200)
        self.assertEqual(sha256(await response.content()), sha256(body))


class LibraryTests(TestCase):
    """
    The constructor, without a proxy.
    """

    def test_when_registered_before_start_waits(self):
        """when_registered() before startService waits; stopService fails it."""
        client = TunnelClientService(reactor, "http://127.0.0.1:1", Resource(),
                                     self.mktemp())
        d = client.when_registered()
        self.assertNoResult(d)
        self.assertIsNotNone(client.local_endpoint)
        self.assertEqual(client.forwarder.url_for(
            type("M", (), {"url": "/a", "query": ""})(), frozenset()),
            "http://in-process/a")
        stopped = client.stopService()
        self.failureResultOf(d, ClientStopped)
        return stopped

    def test_url_local_needs_no_endpoint(self):
        """A URL as local keeps connecting to that URL."""
        client = TunnelClientService(reactor, "http://127.0.0.1:1",
                                     "http://127.0.0.1:8080", self.mktemp())
        self.assertIsNone(client.local_endpoint)
        self.assertIsNone(client.forwarder.endpoint)
        return client.stopService()


class ExampleTests(TestCase):
    """
    examples/embed_wsgi.py, run as a program against a proxy on loopback.
    """

    timeout = 60

    async def test_example_prints_its_url_and_answers(self):
        """The example prints the public URL; a visitor gets the WSGI app's answer."""
        _, port, _ = await start_proxy(self)
        key = os.path.abspath(self.mktemp() + "-key.pem")
        # This checkout first (the example imports brickchain_proxy).
        pythonpath = os.pathsep.join(
            [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        program = spawn(self, "embed_wsgi", [
            sys.executable, EXAMPLE, "http://127.0.0.1:{}".format(port), key],
            supervised=True, env={"PYTHONPATH": pythonpath})
        line = await program.first_line()
        self.assertTrue(line.startswith("public URL: http://"), program.describe())
        await wait_until(lambda: b"path URL:" in program.out, what="the path URL")
        path_url = bytes(program.out).split(b"path URL: ")[1].split()[0].decode()
        response = await visitor(self).post(path_url + "hello", data=b"abc")
        self.assertEqual(await response.text(),
                         "Hello from inside the program: POST /hello (3 bytes)\n")
