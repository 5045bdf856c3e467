"""
The compatibility tier: real third-party local services behind the tunnel
(aiohttp.web, Starlette under uvicorn, nginx, and twisted.web with
Autobahn), reached by real third-party visitors (curl, the C{websockets}
library, aiohttp's client).  Every service runs as a subprocess with the
same routes (L{tests.compat}); one test mixin runs the same scenarios
against each.

Our own doubles forgive what real servers reject (aiohttp answers a
handshake with two User-Agent headers with 400), so this tier exists to
catch what they forgive.
"""

import json

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.compat_support import (
    AWAIT_CLOSE,
    CURL,
    NGINX,
    RECEIVE,
    aiohttp_request,
    curl,
    send_binary,
    send_text,
    start_aiohttp,
    start_asgi,
    start_nginx,
    start_twisted,
    visit_websocket,
)
from tests.support import pseudo_random_bytes, sha256, start_tunnel, wait_until

#: Bytes that are not valid UTF-8 anywhere in a message.
NOT_UTF8 = b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc\x80"

#: Headers a browser sends that our tunnel client might add too.
BROWSER_HEADERS = [
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) compat-tier/1.0"),
    ("Accept-Language", "en-GB,en;q=0.9"),
    ("Cache-Control", "no-cache"),
    ("Pragma", "no-cache"),
]


def repeated_names(pairs):
    """
    The header names (lower case, sorted) that occur more than once in
    C{pairs}.
    """
    names = [name.lower() for name, _ in pairs]
    return sorted({name for name in names if names.count(name) > 1})


def values(pairs, name):
    """
    Every value of header C{name} in C{pairs}.
    """
    return [v for n, v in pairs if n.lower() == name.lower()]


class _LocalServiceTests:
    """
    The scenarios every local service must pass through the tunnel.

    Subclasses define C{start_local_service()}, returning a Deferred or
    coroutine that gives a L{tests.compat_support.LocalService}.
    """

    timeout = 60

    def setUp(self):
        return defer.ensureDeferred(self._start())

    async def _start(self):
        self.service = await self.start_local_service()
        self.tunnel = await start_tunnel(self, self.service.url)
        self.addCleanup(self._assert_no_stream_left)

    def _assert_no_stream_left(self):
        hub = self.tunnel.proxy.hub

        def empty():
            client = self.tunnel.client.protocol
            return (not hub.streams and not len(hub.pending)
                    and (client is None or not client.local_websockets.streams))

        return wait_until(empty, what="hub and client streams empty")

    def ws_url(self, path):
        """
        The path-routed websocket URL of C{path}.
        """
        return "ws://127.0.0.1:{}/proxy/request/{}{}".format(
            self.tunnel.port, self.tunnel.client_id, path)

    def host_ws_url(self, path):
        """
        The websocket URL of C{path} to connect to with C{host=tunnel.host}.
        """
        return "ws://127.0.0.1:{}{}".format(self.tunnel.port, path)

    def assertOpened(self, visit):
        """
        The visitor's handshake completed.
        """
        self.assertEqual(visit.status, 101, "handshake refused: {}".format(visit.body))

    def handshake_report(self, visit):
        """
        The service's description of a C{/ws/headers} handshake (its first
        message): C{(headers, chosen subprotocol)}.
        """
        self.assertOpened(visit)
        (text, is_binary), = visit.messages
        self.assertFalse(is_binary)
        report = json.loads(text)
        return [tuple(pair) for pair in report["headers"]], report["protocol"]

    # -- HTTP ------------------------------------------------------------------

    async def test_get_delivers_a_binary_body_byte_exact(self):
        """A GET of 48 KB of random bytes, routed by Host, arrives byte for byte (curl)."""
        expected = pseudo_random_bytes(48 * 1024 + 7, seed=7)
        answer = await curl(self, self.tunnel.host_url("/bytes/49159?seed=7"),
                            host=self.tunnel.host)
        self.assertEqual(answer.status, 200)
        self.assertEqual((len(answer.body), sha256(answer.body)),
                         (len(expected), sha256(expected)))

    async def test_post_body_reaches_the_service_and_comes_back_byte_exact(self):
        """A 60 KB random POST body, path-routed, reaches the service intact and is echoed intact (curl)."""
        payload = pseudo_random_bytes(60 * 1024 + 3, seed=11) + NOT_UTF8
        answer = await curl(self, self.tunnel.path_url("/echo-body"),
                            method="POST", data=payload)
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header("X-Body-Sha256"), [sha256(payload)])
        self.assertEqual(sha256(answer.body), sha256(payload))

    async def test_post_from_aiohttp_client_round_trips_byte_exact(self):
        """A 40 KB random POST body from aiohttp's client, routed by Host, round-trips intact."""
        payload = NOT_UTF8 + pseudo_random_bytes(40 * 1024 + 1, seed=12)
        answer = await aiohttp_request(
            self, self.tunnel.host_url("/echo-body"), method="POST",
            host=self.tunnel.host, data=payload)
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header("X-Body-Sha256"), [sha256(payload)])
        self.assertEqual(sha256(answer.body), sha256(payload))

    async def test_status_codes_of_the_service_reach_the_visitor(self):
        """The service's 201, 404 and 418 reach the visitor with their bodies (curl)."""
        seen = []
        for code in [201, 404, 418]:
            answer = await curl(self, self.tunnel.path_url("/status/{}".format(code)))
            seen.append((answer.status, answer.body))
        self.assertEqual(seen, [(code, "status {}\n".format(code).encode())
                                for code in [201, 404, 418]])

    async def test_no_content_and_not_modified_get_no_content_length_added(self):
        """A 204 reaches the visitor without Content-Length, a 304 with none or the service's own (RFC 9110 8.6) (curl)."""
        for code in [204, 304]:
            path = "/status/{}".format(code)
            direct = await curl(self, self.service.url + path)
            tunnelled = await curl(self, self.tunnel.path_url(path))
            self.assertEqual((direct.status, tunnelled.status), (code, code))
            lengths = tunnelled.header("Content-Length")
            if code == 204:
                self.assertEqual(lengths, [], "a 204 carries no Content-Length")
            else:
                self.assertIn(lengths, ([], direct.header("Content-Length")),
                              "a 304 has no Content-Length the service did not send")

    async def test_two_set_cookie_headers_arrive_as_two_headers(self):
        """Two Set-Cookie headers of the service arrive as two headers, in order (curl)."""
        answer = await curl(self, self.tunnel.host_url("/cookies"),
                            host=self.tunnel.host)
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header("Set-Cookie"), ["a=1; Path=/", "b=2; HttpOnly"])

    async def test_request_carries_the_visitors_user_agent_once(self):
        """The service sees exactly one User-Agent on a request: the visitor's (aiohttp client)."""
        agent = "compat-visitor/1.0 (aiohttp http)"
        answer = await aiohttp_request(
            self, self.tunnel.path_url("/headers"), headers=[("User-Agent", agent)])
        self.assertEqual(answer.status, 200, answer.body)
        seen = [tuple(pair) for pair in json.loads(answer.body)["headers"]]
        self.assertEqual(values(seen, "User-Agent"), [agent])

    async def test_request_repeats_no_header(self):
        """A browser-like request reaches the service with no header name twice (curl)."""
        answer = await curl(
            self, self.tunnel.host_url("/headers"), host=self.tunnel.host,
            headers=BROWSER_HEADERS + [("Origin", "http://" + self.tunnel.host)])
        self.assertEqual(answer.status, 200, answer.body)
        seen = [tuple(pair) for pair in json.loads(answer.body)["headers"]]
        self.assertEqual(repeated_names(seen), [], seen)

    # -- websockets --------------------------------------------------------------

    async def test_text_messages_are_echoed(self):
        """Text messages, ASCII or not, come back from the service's echo unchanged (websockets)."""
        texts = ["hello", "h\u00e9llo w\u00f6rld \u2603 \U0001f389"]
        visit = await visit_websocket(
            self, "websockets", self.ws_url("/ws/echo"),
            steps=[step for text in texts for step in (send_text(text), RECEIVE)])
        self.assertOpened(visit)
        self.assertEqual(visit.messages, [(text, False) for text in texts])

    async def test_binary_messages_are_echoed_byte_exact(self):
        """Binary messages, random and invalid UTF-8, come back byte for byte (aiohttp client, Host routing)."""
        payloads = [pseudo_random_bytes(40 * 1024 + 5, seed=21), NOT_UTF8]
        visit = await visit_websocket(
            self, "aiohttp", self.host_ws_url("/ws/echo"), host=self.tunnel.host,
            steps=[step for p in payloads for step in (send_binary(p), RECEIVE)])
        self.assertOpened(visit)
        received = [(sha256(payload) if is_binary else payload, is_binary)
                    for payload, is_binary in visit.messages]
        self.assertEqual(received, [(sha256(p), True) for p in payloads])

    async def test_close_code_and_reason_of_the_service_reach_the_visitor(self):
        """The service closing with 4001 and a reason closes the visitor with both (websockets)."""
        visit = await visit_websocket(
            self, "websockets", self.ws_url("/ws/close/4001"),
            steps=[send_text("please close"), AWAIT_CLOSE])
        self.assertOpened(visit)
        self.assertEqual(visit.close, (4001, "bye 4001"))

    async def test_subprotocol_chosen_by_the_service_reaches_the_visitor(self):
        """Offered chat.v1 and chat.v2, the service picks chat.v2 and the visitor's handshake says so (aiohttp client)."""
        visit = await visit_websocket(
            self, "aiohttp", self.ws_url("/ws/headers"),
            subprotocols=["chat.v1", "chat.v2"], steps=[RECEIVE])
        headers, chosen = self.handshake_report(visit)
        self.assertEqual(chosen, "chat.v2")
        self.assertEqual(visit.subprotocol, "chat.v2")

    async def test_websocket_handshake_carries_the_visitors_user_agent_once(self):
        """The service sees exactly one User-Agent on a websocket handshake: the visitor's (websockets)."""
        agent = "compat-visitor/1.0 (websockets)"
        visit = await visit_websocket(
            self, "websockets", self.ws_url("/ws/headers"), user_agent=agent,
            steps=[RECEIVE])
        headers, _ = self.handshake_report(visit)
        self.assertEqual(values(headers, "User-Agent"), [agent])

    async def test_websocket_handshake_repeats_no_header(self):
        """A browser-like websocket handshake reaches the service with no header name twice (aiohttp client)."""
        visit = await visit_websocket(
            self, "aiohttp", self.host_ws_url("/ws/headers"), host=self.tunnel.host,
            headers=BROWSER_HEADERS, origin="http://" + self.tunnel.host,
            steps=[RECEIVE])
        headers, _ = self.handshake_report(visit)
        self.assertEqual(repeated_names(headers), [], headers)


class AiohttpServiceTests(_LocalServiceTests, TestCase):
    """
    An aiohttp.web application as the local service.
    """

    def start_local_service(self):
        return start_aiohttp(self)


class StarletteUvicornServiceTests(_LocalServiceTests, TestCase):
    """
    A Starlette application under uvicorn as the local service.
    """

    def start_local_service(self):
        return start_asgi(self)


class TwistedServiceTests(_LocalServiceTests, TestCase):
    """
    A twisted.web site with an Autobahn websocket resource as the local
    service.
    """

    def start_local_service(self):
        return start_twisted(self)


#: The static file nginx serves.
STATIC_PATH = "/static/blob.bin"
STATIC_CONTENT = pseudo_random_bytes(56 * 1024 + 9, seed=31) + NOT_UTF8


class NginxServiceTests(_LocalServiceTests, TestCase):
    """
    nginx as the local service: it serves static files itself and proxies
    everything else, websockets included, to an aiohttp application.
    """

    if NGINX is None:
        skip = "nginx is not installed"

    def start_local_service(self):
        return defer.ensureDeferred(start_nginx(self, {STATIC_PATH: STATIC_CONTENT}))

    async def test_static_file_is_served_byte_exact(self):
        """A static file nginx serves arrives byte for byte (curl, Host routing)."""
        answer = await curl(self, self.tunnel.host_url(STATIC_PATH),
                            host=self.tunnel.host)
        self.assertEqual(answer.status, 200)
        self.assertEqual(sha256(answer.body), sha256(STATIC_CONTENT))

    async def test_static_file_range_is_served_byte_exact(self):
        """A Range request for part of a static file gets 206 and exactly those bytes (aiohttp client)."""
        answer = await aiohttp_request(self, self.tunnel.path_url(STATIC_PATH),
                                       headers=[("Range", "bytes=1000-20999")])
        self.assertEqual(answer.status, 206)
        self.assertEqual(answer.header("Content-Range"),
                         ["bytes 1000-20999/{}".format(len(STATIC_CONTENT))])
        self.assertEqual(sha256(answer.body), sha256(STATIC_CONTENT[1000:21000]))

    async def test_missing_static_file_is_404(self):
        """A static path with no file behind it gets nginx's 404 (curl)."""
        answer = await curl(self, self.tunnel.path_url("/static/missing.bin"))
        self.assertEqual(answer.status, 404)
        self.assertIn(b"nginx", answer.body)


if CURL is None:
    for _case in [AiohttpServiceTests, StarletteUvicornServiceTests,
                  TwistedServiceTests, NginxServiceTests]:
        _case.skip = "curl is not installed"
