"""
The path prefix of C{--local} is a boundary: no visitor path reaches the
local service outside it, whether the request is buffered (v1,
L{LocalForwarder}), streamed, or a websocket; a path some local server
could read as leaving the prefix gets 400 "path escapes the local prefix"
(a websocket: a refused handshake saying so), and every other path arrives
byte for byte.

The local services are real ones on loopback that record the request
targets they see; the visitors' requests are raw bytes, so that nothing on
the way tidies their paths up.
"""

import re
from urllib.parse import quote, unquote

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from brickchain_proxy.client.forward import LocalForwarder
from brickchain_proxy.client.local_ws import LocalWebSockets
from brickchain_proxy.client.urls import (
    ESCAPES_PREFIX,
    PathEscapesPrefix,
    escapes_prefix,
    local_url,
)
from brickchain_proxy.features import MESSAGE_FEATURES, RAW_PATH
from brickchain_proxy.messages import HttpRequest, WSRequest, WSResponse
from tests.support import (
    RecordingResource,
    events_like,
    start_local_service,
    start_tunnel,
    wait_until,
)
from tests.support_hypothesis import BASE_SETTINGS
from tests.support_ws import LocalWebSocketService, raw_upgrade

PREFIX = "/app"

#: Paths as a visitor sends them (raw, percent-encoding intact) that a
#: local server could read as leaving the prefix.
HOSTILE = [
    "/..",
    "/../",
    "/../secret",
    "/app/../secret",
    "/app/../../secret",
    "/a/b/../../../secret",
    "/a/./../..",
    "/a/..",
    "/.",
    "/./secret",
    "/%2e%2e/secret",
    "/%2E%2E/secret",
    "/%2E%2e/",
    "/%2e%2E/secret",
    "/.%2e/",
    "/%2e./secret",
    "/%2e",
    "/..%2fsecret",
    "/..%2Fsecret",
    "/a%2f..%2f..%2fsecret",
    "/a/%2e%2e%2f%2e%2e%2fsecret",
    "/..%5csecret",
    "/..%5Csecret",
    "/a%5c..%5c..%5csecret",
    "/\\..\\",
    "/\\..\\secret",
    "/a\\..\\..\\secret",
    "/..\\secret",
    "//evil",
    "//evil/x",
    "/%2fevil",
    "/%2Fevil",
    "/%5cevil",
    "/\\evil",
    "/..;/secret",
    "/a/..;/..;/secret",
    "/a/..;x=1/../secret",
]

#: Paths that stay inside the prefix, and must arrive exactly as sent.
LEGITIMATE = [
    "/",
    "/a%20b",
    "/app/a%20b",
    "/x/..y",
    "/x/y..",
    "/x/.../",
    "/x/.hidden",
    "/.well-known/acme-challenge/t0k3n",
    "/a%2Fb",
    "/a%2fb",
    "/a%5Cb",
    "/x/%2e%2ex",
    "/a%252e%252e/b",
    "/caf%C3%A9/%e2%9c%93",
    "/a;b=c/d",
    "/a/b/",
    "/a%3Fb",
    "/a//b",
    "/~user/",
    "/a+b/c,d/e=f",
]

#: Queries that look hostile but belong to the query, not the path.
QUERIES = ["", "x=/../../secret", "next=%2e%2e%2fsecret&y=\\..\\"]


def _decoded(path):
    """
    What a v1 proxy puts in C{url}: the path percent-decoded.
    """
    return unquote(path, errors="replace")


# -- how the most lenient local server could read a path -------------------------


def remove_dot_segments(path):
    """
    RFC 3986 section 5.2.4, as written there.
    """
    output = []
    while path:
        if path.startswith("../"):
            path = path[3:]
        elif path.startswith("./"):
            path = path[2:]
        elif path.startswith("/./"):
            path = path[2:]
        elif path == "/.":
            path = "/"
        elif path.startswith("/../"):
            path = path[3:]
            if output:
                output.pop()
        elif path == "/..":
            path = "/"
            if output:
                output.pop()
        elif path in (".", ".."):
            path = ""
        else:
            end = path.find("/", 1 if path.startswith("/") else 0)
            end = len(path) if end == -1 else end
            output.append(path[:end])
            path = path[end:]
    return "".join(output)


def leniently_resolved(path):
    """
    C{path} as the laxest server might resolve it: percent-decoded (once),
    backslashes taken for slashes, a segment's C{;parameters} dropped,
    repeated slashes merged, dot segments removed.
    """
    path = unquote(path, errors="replace").replace("\\", "/")
    path = "/".join(segment.partition(";")[0] for segment in path.split("/"))
    path = re.sub("/+", "/", path)
    return remove_dot_segments(path)


def inside_prefix(path):
    """
    Whether the local path C{path} is the prefix or below it.
    """
    return path == PREFIX or path.startswith(PREFIX + "/")


class LocalUrlTests(SynchronousTestCase):
    """
    L{local_url} refuses every path that could leave the prefix, with and
    without C{raw-path}, and leaves every other one as it came.
    """

    base = "http://127.0.0.1:8080" + PREFIX

    def url(self, path, features, query=""):
        return local_url(self.base, HttpRequest(url=path, query=query, method="GET"),
                         features)

    def test_hostile_paths_are_refused_raw(self):
        """Every hostile raw path (with any query) raises PathEscapesPrefix."""
        for path in HOSTILE:
            for query in QUERIES:
                with self.assertRaises(PathEscapesPrefix, msg=path):
                    self.url(path, {RAW_PATH}, query)

    def test_hostile_paths_are_refused_decoded(self):
        """The same paths as a v1 proxy decodes them are refused too."""
        for path in HOSTILE:
            with self.assertRaises(PathEscapesPrefix, msg=path):
                self.url(_decoded(path), frozenset())

    def test_legitimate_raw_paths_are_unchanged(self):
        """With raw-path, a legitimate path and its query follow the prefix byte for byte."""
        for path in LEGITIMATE:
            for query in QUERIES:
                expected = self.base + path + ("?" + query if query else "")
                self.assertEqual(self.url(path, {RAW_PATH}, query), expected)

    def test_legitimate_decoded_paths_are_reencoded_not_refused(self):
        """A v1 (decoded) legitimate path is re-encoded as before, not refused."""
        for path in LEGITIMATE:
            decoded = _decoded(path)
            self.assertEqual(
                self.url(decoded, frozenset()),
                self.base + quote(decoded, safe="/:@!$&'()*+,;=~"))

    def test_the_refusal_says_why(self):
        """The exception's message is the visitor's answer, and it keeps the path."""
        with self.assertRaises(PathEscapesPrefix) as caught:
            self.url("/../secret", {RAW_PATH})
        self.assertTrue(str(caught.exception).startswith(ESCAPES_PREFIX))
        self.assertEqual(caught.exception.path, "/../secret")
        self.assertIsInstance(caught.exception, ValueError)

    def test_without_a_prefix_dot_segments_are_refused_too(self):
        """The rule does not depend on the prefix: a bare origin refuses the same paths."""
        for path in HOSTILE:
            with self.assertRaises(PathEscapesPrefix, msg=path):
                local_url("http://127.0.0.1:8080", HttpRequest(url=path, method="GET"), {RAW_PATH})

    def test_escapes_prefix_reads_leniently(self):
        """escapes_prefix is true for the hostile table, false for the legitimate one."""
        self.assertEqual([p for p in HOSTILE if not escapes_prefix(p)], [])
        self.assertEqual([p for p in LEGITIMATE if escapes_prefix(p)], [])


# Pieces hostile paths are made of.
_PIECES = st.sampled_from([
    "/", "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "\\", ";", ";x",
    "a", "app", "%", "%25", "%252e", "%20", "~", "x.y", "#", "2e", "2f", "5c", "E", "\u00e9", "%c0%ae",
])


class LocalUrlPropertyTests(SynchronousTestCase):
    """
    For any path at all: either it is refused, or the local service gets a
    path below the prefix, however leniently it resolves it.
    """

    @settings(BASE_SETTINGS, max_examples=500)
    @given(pieces=st.lists(_PIECES, max_size=12),
           raw=st.booleans(),
           query=st.sampled_from(QUERIES))
    def test_no_path_leaves_the_prefix(self, pieces, raw, query):
        """Refused, or below the prefix as sent and as leniently resolved."""
        path = "".join(pieces)
        features = {RAW_PATH} if raw else frozenset()
        base = "http://127.0.0.1:8080" + PREFIX
        try:
            url = local_url(base, HttpRequest(url=path, query=query, method="GET"), features)
        except PathEscapesPrefix:
            return
        local = url[len("http://127.0.0.1:8080"):].partition("?")[0]
        self.assertTrue(inside_prefix(local), (path, local))
        self.assertTrue(inside_prefix(leniently_resolved(local)), (path, local))
        if raw:
            expected = path if path.startswith("/") else "/" + path
            self.assertEqual(local, PREFIX + expected)


# -- the buffered (v1) and websocket paths, against real local services ----------


class ForwarderBoundaryTests(TestCase):
    """
    L{LocalForwarder} with C{--local <service>/app/}: hostile paths are a
    400 and reach nothing; legitimate ones reach the service unchanged.
    """

    def setUp(self):
        self.local = RecordingResource()
        self.forwarder = LocalForwarder(
            reactor, start_local_service(self, self.local) + PREFIX + "/",
            clock=Clock())
        self.addCleanup(self.forwarder.close)
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    @defer.inlineCallbacks
    def test_hostile_paths_get_400_and_reach_nothing(self):
        """Each hostile path, raw or decoded, with any query: 400, nothing sent, a log line."""
        sent = 0
        for path in HOSTILE:
            for features, url in [({RAW_PATH}, path), (frozenset(), _decoded(path))]:
                for query in QUERIES:
                    response = yield self.forwarder.forward(
                        HttpRequest(url=url, query=query, method="GET"), features)
                    self.assertEqual(response.status, 400, (url, response.body))
                    self.assertEqual(response.body, ESCAPES_PREFIX.encode() + b"\n")
                    self.assertEqual(response.content_type, "text/plain; charset=utf-8")
                    sent += 1
        self.assertEqual(self.local.requests, [])
        self.assertEqual(len(events_like(self.log, "path escapes the local prefix")),
                         sent)

    @defer.inlineCallbacks
    def test_legitimate_raw_paths_arrive_unchanged(self):
        """Each legitimate raw path and query reaches the service as /app + path, byte for byte."""
        expected = []
        for path in LEGITIMATE:
            for query in QUERIES:
                response = yield self.forwarder.forward(
                    HttpRequest(url=path, query=query, method="GET"), {RAW_PATH})
                self.assertEqual(response.status, 200, (path, response.body))
                expected.append((PREFIX + path + ("?" + query if query else ""))
                                .encode("utf-8"))
        self.assertEqual([r.uri for r in self.local.requests], expected)

    @defer.inlineCallbacks
    def test_legitimate_decoded_paths_stay_inside(self):
        """Each legitimate path through a v1 proxy (decoded) reaches the service below /app/."""
        for path in LEGITIMATE:
            response = yield self.forwarder.forward(
                HttpRequest(url=_decoded(path), method="GET"), frozenset())
            self.assertEqual(response.status, 200, (path, response.body))
        for request in self.local.requests:
            self.assertTrue(inside_prefix(
                leniently_resolved(request.path.decode("latin-1"))), request.path)


class LocalWebSocketBoundaryTests(TestCase):
    """
    L{LocalWebSockets} (ws-request, v1 and raw-path) with C{--local
    <service>/app/}: a hostile path is answered ok=false with the reason and
    opens nothing; a legitimate one opens the local websocket at /app + path.
    """

    def setUp(self):
        self.service = LocalWebSocketService()
        base = self.service.start(self) + PREFIX + "/"
        self.sent = []
        self.websockets = LocalWebSockets(reactor, base, self.sent.append,
                                          {RAW_PATH})
        self.addCleanup(self.websockets.close_all)

    def test_hostile_paths_are_refused_before_connecting(self):
        """ok=false, "path escapes the local prefix", and no connection to the service."""
        for number, path in enumerate(HOSTILE):
            self.websockets.open(WSRequest(id="s%d" % number, url=path, query="a=1"))
        self.assertEqual(
            [(type(m), m.id, m.ok, m.error) for m in self.sent],
            [(WSResponse, "s%d" % n, False, ESCAPES_PREFIX)
             for n in range(len(HOSTILE))])
        self.assertEqual(self.websockets.streams, {})
        self.assertEqual(self.service.connections, [])

    async def test_legitimate_path_opens_below_the_prefix(self):
        """A legitimate raw path and query open the local websocket at exactly /app + path."""
        self.websockets.open(WSRequest(id="ok", url="/a%2Fb/x/..y", query="q=../.."))
        await wait_until(lambda: self.sent, what="ws-response")
        self.assertEqual([(m.id, m.ok) for m in self.sent], [("ok", True)])
        self.assertEqual([c.uri for c in self.service.connections],
                         ["/app/a%2Fb/x/..y?q=../.."])


# -- end to end: raw visitor requests through a real proxy and client ------------


class _RawHTTP(Protocol):
    """
    Sends one request as given and collects the whole answer.
    """

    def __init__(self, request, finished):
        self._request = request
        self._finished = finished
        self._data = []

    def connectionMade(self):
        self.transport.write(self._request)

    def dataReceived(self, data):
        self._data.append(data)

    def connectionLost(self, reason):
        self._finished.callback(b"".join(self._data))


async def raw_get(port, target, host):
    """
    C{GET <target>} exactly as given, to 127.0.0.1:C{port}.

    @return: C{(status, body)}.
    """
    request = b"GET " + target + b" HTTP/1.1\r\nHost: " + host + \
        b"\r\nConnection: close\r\n\r\n"
    finished = defer.Deferred()
    factory = Factory.forProtocol(lambda: _RawHTTP(request, finished))
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    answer = await finished
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class EndToEndBoundaryTests(TestCase):
    """
    Raw visitor requests through a real proxy and a real client whose
    C{--local} is a recording service's C{/app/}: over streams (our client's
    default), and over v1 messages (a client offering no extension).
    """

    timeout = 60

    def setUp(self):
        self.local = RecordingResource()
        self.local_url = start_local_service(self, self.local) + PREFIX + "/"

    async def check_http(self, features):
        tunnel = await start_tunnel(self, self.local_url,
                                    client_kwargs={"features": features})
        host = tunnel.host.encode("ascii")
        for path in HOSTILE:
            status, body = await raw_get(tunnel.port, path.encode("latin-1"), host)
            self.assertEqual((status, body), (400, ESCAPES_PREFIX.encode() + b"\n"),
                             path)
        self.assertEqual(self.local.requests, [])
        for path in LEGITIMATE:
            target = (path + "?" + QUERIES[1]).encode("latin-1")
            status, _ = await raw_get(tunnel.port, target, host)
            self.assertEqual(status, 200, path)
        return [r.uri for r in self.local.requests]

    async def test_streamed_requests_stay_inside_the_prefix(self):
        """Over streams: hostile paths get 400 and reach nothing; the others arrive unchanged."""
        seen = await self.check_http(None)
        self.assertEqual(seen, [(PREFIX + path + "?" + QUERIES[1]).encode("latin-1")
                                for path in LEGITIMATE])

    async def test_v1_requests_stay_inside_the_prefix(self):
        """Over v1 http-requests (decoded paths): hostile paths get 400; the others stay below /app/."""
        seen = await self.check_http([])
        self.assertEqual(len(seen), len(LEGITIMATE))
        for uri in seen:
            path = uri.partition(b"?")[0].decode("latin-1")
            self.assertTrue(inside_prefix(leniently_resolved(path)), uri)

    async def test_raw_path_messages_stay_inside_the_prefix(self):
        """Over v1 messages with raw-path: hostile paths get 400; the others arrive unchanged."""
        seen = await self.check_http(sorted(MESSAGE_FEATURES))
        self.assertEqual(seen, [(PREFIX + path + "?" + QUERIES[1]).encode("latin-1")
                                for path in LEGITIMATE])

    async def test_websocket_upgrades_stay_inside_the_prefix(self):
        """A hostile websocket path is refused naming the reason; a legitimate one opens at /app + path."""
        service = LocalWebSocketService()
        tunnel = await start_tunnel(self, service.start(self) + PREFIX + "/")
        for path in ["/../secret", "/%2e%2e/secret", "/..%5csecret", "//evil"]:
            response = await raw_upgrade(tunnel.port, path, host=tunnel.host)
            self.assertEqual(response.status, 502, path)
            self.assertIn(ESCAPES_PREFIX, response.text)
        self.assertEqual(service.connections, [])
        response = await raw_upgrade(tunnel.port, "/x/..y?q=/../", host=tunnel.host)
        self.assertEqual(response.status, 101)
        await wait_until(lambda: service.connections, what="local websocket")
        self.assertEqual([c.uri for c in service.connections], ["/app/x/..y?q=/../"])
