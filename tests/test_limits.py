"""
End-to-end tests of the proxy's limits: each one is hit on purpose through a
real proxy on a loopback port, and the test checks what the visitor or the
tunnel client sees (status or close code) and what the proxy logs.

Also the access log, and that no secret (mandate token, Authorization
value) ever reaches a log event.
"""

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from brickchain_proxy.identity import ClientKey
from tests.support import (
    RecordingResource,
    events_like,
    start_client,
    start_local_service,
    start_proxy,
    start_tunnel,
    visitor,
    wait_until,
)
from tests.support_ws import (
    LocalWebSocketService,
    connect_raw_tunnel,
    connect_visitor,
    raw_upgrade,
)

# -- a raw HTTP connection ----------------------------------------------------------


class RawHTTP(Protocol):
    """
    A TCP connection that sends bytes as given and records what comes back.

    @ivar received: every byte received so far.
    @ivar gone: whether the connection is closed.
    """

    gone = False

    def __init__(self, data):
        self._data = data
        self.received = b""

    def connectionMade(self):
        self.transport.write(self._data)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.gone = True

    @property
    def status(self):
        """
        The status code of the first response, or L{None} before it came.
        """
        line = self.received.partition(b"\r\n")[0].split()
        return int(line[1]) if len(line) > 1 else None


async def raw_http(testcase, port, data):
    """
    Connect to 127.0.0.1:C{port} and send C{data}; the connection is
    aborted at the end of the test if it is still open.

    @return: the connected L{RawHTTP}.
    """
    protocol = RawHTTP(data)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    testcase.addCleanup(_abort, protocol)
    return protocol


@defer.inlineCallbacks
def _abort(protocol):
    if not protocol.gone:
        protocol.transport.abortConnection()
    yield wait_until(lambda: protocol.gone, what="raw connection closed")


def request_head(headers=(), target="/", host="127.0.0.1"):
    """
    A C{GET} request head with C{Host}, C{Connection: close} and
    C{headers} (C{(name, value)} pairs).
    """
    lines = ["GET {} HTTP/1.1".format(target), "Host: " + host,
             "Connection: close"]
    lines += ["{}: {}".format(name, value) for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def answered(testcase, port, data):
    """
    Send C{data} on a new connection and wait until the proxy closes it.

    @return: the L{RawHTTP} with everything it received.
    """
    connection = await raw_http(testcase, port, data)
    await wait_until(lambda: connection.gone, what="proxy closed the connection")
    return connection


# -- fixtures -------------------------------------------------------------------


class _LimitFixture:
    """
    A recording local service, a visitor and a capture of every log event.
    """

    timeout = 30

    def setUp(self):
        self.local = RecordingResource()
        self.local_url = start_local_service(self, self.local)
        self.http = visitor(self)
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    async def fetch(self, d):
        """
        The response C{d} fires with, and its whole body.
        """
        response = await d
        return response, await response.content()


class PendingLimitTests(_LimitFixture, TestCase):
    """
    C{max_pending}: requests waiting for one tunnel's answers.
    """

    async def test_request_over_max_pending_gets_503_and_the_tunnel_recovers(self):
        """
        With two requests waiting, a third gets 503 at once without reaching
        the service; once they are answered the tunnel serves again.
        """
        tunnel = await start_tunnel(self, self.local_url, max_pending=2)
        first = self.fetch(self.http.get(tunnel.path_url("/slow")))
        second = self.fetch(self.http.get(tunnel.path_url("/slow")))
        await wait_until(lambda: len(self.local.requests_to(b"/slow")) == 2,
                         what="two requests waiting at the service")
        response, body = await self.fetch(self.http.get(tunnel.path_url("/slow")))
        self.assertEqual(response.code, 503)
        self.assertIn(b"too many requests waiting for this tunnel (limit 2)", body)
        (refused,) = events_like(self.log, "request refused")
        self.assertEqual((refused["client_id"], refused["limit"]),
                         (tunnel.client_id, 2))
        self.assertEqual(refused["log_level"], LogLevel.warn)
        self.assertEqual(len(self.local.requests_to(b"/slow")), 2)

        self.local.answer_slow()
        for waiting in (first, second):
            response, body = await waiting
            self.assertEqual((response.code, body), (200, b"finally\n"))
        await wait_until(lambda: not tunnel.proxy.public.in_flight,
                         what="nothing in flight")
        response, _ = await self.fetch(self.http.get(tunnel.path_url("/echo")))
        self.assertEqual(response.code, 200)


class WebSocketLimitTests(_LimitFixture, TestCase):
    """
    C{max_websockets}: visitor websockets open through one tunnel.
    """

    async def test_upgrade_over_max_websockets_gets_503(self):
        """
        With one websocket open and a limit of one, the next upgrade gets
        503; after the first closes, a new one opens.
        """
        local_ws = LocalWebSocketService()
        tunnel = await start_tunnel(self, local_ws.start(self), max_websockets=1)
        url = "ws://127.0.0.1:{}/proxy/request/{}/echo".format(
            tunnel.port, tunnel.client_id)
        first = await connect_visitor(self, url)
        self.assertEqual(await first.echo(b"one"), (b"one", False))

        response = await raw_upgrade(
            tunnel.port, "/proxy/request/{}/echo".format(tunnel.client_id))
        self.assertEqual(response.status, 503, response.text)
        self.assertIn("too many websockets open on this tunnel (limit 1)",
                      response.text)
        (refused,) = events_like(self.log, "visitor websocket refused")
        self.assertEqual((refused["client_id"], refused["limit"]),
                         (tunnel.client_id, 1))
        self.assertEqual(len(local_ws.on("echo")), 1)

        first.sendClose(1000)
        await first.closed
        await wait_until(lambda: not tunnel.proxy.hub.streams, what="stream gone")
        again = await connect_visitor(self, url)
        self.assertEqual(await again.echo(b"two"), (b"two", False))
        again.sendClose(1000)
        await again.closed
        await wait_until(lambda: not tunnel.proxy.hub.streams, what="stream gone")


class RequestHeadLimitTests(_LimitFixture, TestCase):
    """
    C{max_headers} and C{max_header_bytes}: the size of a visitor's request
    head.  Twisted answers a bare 400 and closes the connection; nothing is
    logged.
    """

    async def test_150_header_lines_get_400(self):
        """
        150 header lines are over the default limit of 100: 400, and the
        connection is closed.
        """
        _, port, _ = await start_proxy(self)
        headers = [("X-Header-{}".format(i), "v") for i in range(150)]
        connection = await answered(self, port, request_head(headers))
        self.assertEqual(connection.status, 400)

    async def test_100_header_lines_are_accepted(self):
        """
        Exactly 100 header lines (Host and Connection included) pass.
        """
        _, port, _ = await start_proxy(self)
        headers = [("X-Header-{}".format(i), "v") for i in range(98)]
        connection = await answered(self, port, request_head(headers))
        self.assertEqual(connection.status, 200)

    async def test_configured_max_headers_is_applied(self):
        """
        C{max_headers=10} refuses 11 header lines and accepts 10.
        """
        _, port, _ = await start_proxy(self, max_headers=10)
        refused = await answered(self, port, request_head(
            [("X-H{}".format(i), "v") for i in range(9)]))
        accepted = await answered(self, port, request_head(
            [("X-H{}".format(i), "v") for i in range(8)]))
        self.assertEqual((refused.status, accepted.status), (400, 200))

    async def test_20_kb_of_headers_gets_400(self):
        """
        20 KB of headers are over the default 16384-byte head limit: five
        4 KB headers get 400, while three pass.
        """
        _, port, _ = await start_proxy(self)
        refused = await answered(self, port, request_head(
            [("X-Part-{}".format(i), "a" * 4000) for i in range(5)]))
        accepted = await answered(self, port, request_head(
            [("X-Part-{}".format(i), "a" * 4000) for i in range(3)]))
        self.assertEqual((refused.status, accepted.status), (400, 200))

    async def test_single_20_kb_header_line_is_cut_off(self):
        """
        One header line longer than the head limit (and Twisted's 16 KB line
        limit) closes the connection without an answer.
        """
        _, port, _ = await start_proxy(self)
        connection = await answered(self, port, request_head(
            [("X-Big", "a" * 20000)]))
        self.assertEqual(connection.received, b"")

    async def test_raised_max_header_bytes_allows_a_20_kb_header_line(self):
        """
        C{max_header_bytes=32768} lets one 20 KB header line through.
        """
        _, port, _ = await start_proxy(self, max_header_bytes=32768)
        connection = await answered(self, port, request_head(
            [("X-Big", "a" * 20000)]))
        self.assertEqual(connection.status, 200)

    async def test_configured_max_header_bytes_is_applied(self):
        """
        C{max_header_bytes=2048} refuses a 3000-byte head.
        """
        _, port, _ = await start_proxy(self, max_header_bytes=2048)
        refused = await answered(self, port, request_head([("X-Big", "a" * 3000)]))
        accepted = await answered(self, port, request_head([("X-Big", "a" * 1500)]))
        self.assertEqual((refused.status, accepted.status), (400, 200))


class HostSyntaxTests(_LimitFixture, TestCase):
    """
    A Host under the domain must be one valid DNS label: otherwise 400,
    before any tunnel lookup.
    """

    async def status_for_host(self, port, host):
        response, _ = await self.fetch(self.http.get(
            "http://127.0.0.1:{}/echo".format(port), headers={"Host": [host]}))
        return response.code

    async def test_label_with_invalid_characters_gets_400(self):
        """
        C{bad_label!.localhost} is not a DNS label: 400.
        """
        _, port, _ = await start_proxy(self)
        self.assertEqual(await self.status_for_host(port, "bad_label!.localhost"),
                         400)

    async def test_label_over_63_characters_gets_400(self):
        """
        A 64-character label is too long for DNS: 400.
        """
        _, port, _ = await start_proxy(self)
        self.assertEqual(
            await self.status_for_host(port, "a" * 64 + ".localhost:{}".format(port)),
            400)

    async def test_label_starting_with_a_hyphen_gets_400(self):
        """
        A label may not start with C{-}: 400.
        """
        _, port, _ = await start_proxy(self)
        self.assertEqual(await self.status_for_host(port, "-abc.localhost"), 400)

    async def test_unknown_but_valid_label_gets_502(self):
        """
        A well-formed clientID naming no tunnel is a 502, not a 400.
        """
        _, port, _ = await start_proxy(self)
        self.assertEqual(
            await self.status_for_host(port, "a" * 52 + ".localhost:{}".format(port)),
            502)

    async def test_valid_label_that_cannot_be_a_client_id_gets_400(self):
        """
        A DNS label under the domain that is not 52 base32 characters is a 400.
        """
        _, port, _ = await start_proxy(self)
        self.assertEqual(
            await self.status_for_host(port, "a" * 63 + ".localhost:{}".format(port)),
            400)


class IdleTimeoutTests(_LimitFixture, TestCase):
    """
    C{idle_timeout}: idle visitor connections are closed.
    """

    async def test_idle_keep_alive_connection_is_closed(self):
        """
        A keep-alive connection left idle after its response is closed by
        the proxy.  (That it stays open for C{idle_timeout} seconds first
        is tested on a Clock, in L{tests.test_public}.)
        """
        _, port, _ = await start_proxy(self, idle_timeout=0.5)
        connection = await raw_http(
            self, port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await wait_until(lambda: connection.received.endswith(b"}"),
                         what="response received")
        self.assertEqual(connection.status, 200)
        await wait_until(lambda: connection.gone, what="idle connection closed")
        self.assertEqual(connection.received.count(b"HTTP/1.1 "), 1)
        self.assertNotIn(b"connection: close", connection.received.lower())

    async def test_silent_connection_is_closed(self):
        """
        A connection that never sends a request is closed too.
        """
        _, port, _ = await start_proxy(self, idle_timeout=0.5)
        connection = await raw_http(self, port, b"")
        await wait_until(lambda: connection.gone, what="silent connection closed")
        self.assertEqual(connection.received, b"")


class RegistrationDeadlineTests(_LimitFixture, TestCase):
    """
    C{registration_timeout}: a tunnel connection must register in time.
    """

    async def test_connection_that_never_registers_is_closed_with_1008(self):
        """
        A websocket on C{/proxy/subscribe} that sends nothing gets the
        reason as plain text, then 1008; the proxy logs it.
        """
        _, port, _ = await start_proxy(self, registration_timeout=0.5)
        raw = await connect_raw_tunnel(self, port)
        await wait_until(lambda: raw.gone, what="unregistered connection closed")
        self.assertEqual(raw.messages, [b"no registration received in time"])
        self.assertEqual(raw.close_code, 1008)
        (expired,) = events_like(self.log, "no registration within")
        self.assertEqual(expired["seconds"], 0.5)
        self.assertEqual(expired["log_level"], LogLevel.warn)


class TunnelMessageLimitTests(_LimitFixture, TestCase):
    """
    C{max_message}: the largest websocket message from a tunnel client.
    """

    async def test_message_over_max_message_closes_the_tunnel_with_1009(self):
        """
        A registered client sending 20000 bytes with a limit of 10000 is
        closed with 1009 and its tunnel is gone; 9000 bytes were fine.
        """
        _, port, _ = await start_proxy(self, max_message=10000)
        raw = await connect_raw_tunnel(self, port)
        key = ClientKey.generate()
        raw.register(key, "http://127.0.0.1:{}".format(port))
        await wait_until(lambda: raw.messages, what="registration answered")
        self.assertEqual(raw.decoded()[0].key_id, key.client_id)

        raw.send(b"x" * 9000)
        await wait_until(lambda: events_like(self.log, "malformed message ignored"),
                         what="9000 bytes read")
        self.assertFalse(raw.gone)

        raw.send(b"x" * 20000)
        await wait_until(lambda: raw.gone, what="tunnel connection closed")
        self.assertEqual(raw.close_code, 1009)
        (disconnected,) = events_like(self.log, "disconnected (code {code})")
        self.assertEqual(disconnected["client_ids"], key.client_id)
        response, body = await self.fetch(self.http.get(
            "http://127.0.0.1:{}/proxy/request/{}/".format(port, key.client_id)))
        self.assertEqual(response.code, 502)


class AccessLogTests(_LimitFixture, TestCase):
    """
    C{access_log}: one structured event per tunnelled request, and no
    secrets in any log event.
    """

    def access_events(self):
        return [e for e in self.log
                if e.get("log_namespace") == "brickproxy.access"]

    async def test_one_event_per_request_with_its_fields(self):
        """
        Each request, answered or not, gets one event carrying client_id,
        method, path, status, bytes and duration.
        """
        tunnel = await start_tunnel(self, self.local_url, access_log=True)
        response, body = await self.fetch(self.http.get(
            tunnel.host_url("/echo?x=1"), headers={"Host": [tunnel.host]}))
        self.assertEqual(response.code, 200)
        response, posted = await self.fetch(self.http.post(
            tunnel.path_url("/echo-body"), data=b"hello"))
        self.assertEqual(posted, b"hello")
        unknown = "b" * 52
        response, _ = await self.fetch(self.http.get(
            "{}/proxy/request/{}/x".format(tunnel.base_url, unknown)))
        self.assertEqual(response.code, 502)
        await wait_until(lambda: len(self.access_events()) >= 3,
                         what="three access events")

        first, second, third = self.access_events()
        self.assertEqual(
            [(e["client_id"], e["method"], e["path"], e["status"], e["bytes"])
             for e in (first, second, third)],
            [(tunnel.client_id, "GET", "/echo?x=1", 200, len(body)),
             (tunnel.client_id, "POST",
              "/proxy/request/{}/echo-body".format(tunnel.client_id), 200, 5),
             (unknown, "GET", "/proxy/request/{}/x".format(unknown), 502,
              third["bytes"])])
        self.assertGreater(third["bytes"], 0)
        for event in (first, second, third):
            self.assertIsInstance(event["duration"], float)
            self.assertGreaterEqual(event["duration"], 0)
            self.assertEqual(event["log_level"], LogLevel.info)
        self.assertTrue(formatEvent(first).startswith(
            "{} GET /echo?x=1 200 {} ".format(tunnel.client_id, len(body))))
        self.assertEqual(len(self.access_events()), 3)

    async def test_no_access_events_by_default(self):
        """
        Without C{access_log}, requests are not logged one by one.
        """
        tunnel = await start_tunnel(self, self.local_url)
        response, _ = await self.fetch(self.http.get(tunnel.path_url("/echo")))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.access_events(), [])

    async def test_no_token_or_authorization_value_in_any_log_event(self):
        """
        Through a registration and a request carrying Authorization, no log
        event (message or field) contains the mandate token or the
        credential.
        """
        proxy, port, _ = await start_proxy(self, access_log=True)
        client = start_client(self, "http://127.0.0.1:{}".format(port),
                              self.local_url)
        tokens = []
        sign = client.key.sign_mandate_token

        def recording_sign(*args, **kwargs):
            token = sign(*args, **kwargs)
            tokens.append(token)
            return token

        client.key.sign_mandate_token = recording_sign
        registration = await client.when_registered()
        credential = "Bearer visitor-secret-8c0ffee5"
        response, body = await self.fetch(self.http.get(
            "http://127.0.0.1:{}/proxy/request/{}/echo".format(
                port, registration.key_id),
            headers={"Authorization": [credential]}))
        self.assertEqual(response.code, 200)
        self.assertIn(credential.encode("ascii"), body)  # it did travel
        await wait_until(lambda: self.access_events(), what="access event")

        self.assertEqual(len(tokens), 1)
        secrets = [tokens[0], tokens[0].rsplit(".", 1)[1], credential,
                   credential.split()[1]]
        for event in self.log:
            text = formatEvent(event) + repr(sorted(
                (key, repr(value)) for key, value in event.items()))
            for secret in secrets:
                self.assertNotIn(secret, text, event)
