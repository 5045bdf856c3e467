"""
What a newcomer trips over: a proxy without C{--domain} says so once and
never logs C{<clientID>.None}; every error the proxy answers itself is plain
text; the client's retry log says why the last attempt failed, and a token
signed for another URL tells the client which URL it signed and what to
change.  Real proxy and client on loopback.
"""

from twisted.internet import defer, protocol, reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.support import (
    RecordingResource,
    start_client,
    start_local_service,
    start_proxy,
    unused_local_url,
    visitor,
    wait_until,
)


def _texts(events):
    return [formatEvent(event) for event in events]


class ProxyWithoutDomainTests(TestCase):
    """
    A proxy started without C{--domain} works by path routing, warns once
    at start, and never writes C{None} where a hostname would be.
    """

    @defer.inlineCallbacks
    def test_warns_once_and_never_logs_a_none_hostname(self):
        """One warning at start; a registration and a request log no <clientID>.None."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        local = RecordingResource()
        local_url = start_local_service(self, local)
        proxy, port, _ = yield start_proxy(self, domain=None)
        client = start_client(self, "http://127.0.0.1:{}".format(port), local_url)
        registration = yield client.when_registered()
        http = visitor(self)
        response = yield http.get("http://127.0.0.1:{}/proxy/request/{}/hello".format(
            port, registration.key_id))
        yield response.content()
        self.assertEqual(response.code, 200)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn
                    and "no --domain" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertIn("/proxy/request/<clientID>/", formatEvent(warnings[0]))
        self.assertEqual([t for t in _texts(events) if ".None" in t], [])
        self.assertEqual(client.public_url, "http://127.0.0.1:{}/proxy/request/{}/".format(
            port, registration.key_id))


class _RawRequest(protocol.Protocol):
    def __init__(self, data, finished):
        self._data = data
        self._finished = finished
        self._received = []

    def connectionMade(self):
        self.transport.write(self._data)

    def dataReceived(self, data):
        self._received.append(data)

    def connectionLost(self, reason):
        self._finished.callback(b"".join(self._received))


def raw_exchange(port, data):
    """
    Send C{data} to 127.0.0.1:C{port} and collect everything until the
    server closes.
    """
    finished = defer.Deferred()
    factory = protocol.ClientFactory()
    factory.protocol = lambda: _RawRequest(data, finished)
    reactor.connectTCP("127.0.0.1", port, factory)
    return finished


class PlainTextErrorTests(TestCase):
    """
    Every error the proxy answers itself has a plain-text body that says
    what happened -- never an HTML page, never an empty 400.
    """

    @defer.inlineCallbacks
    def setUp(self):
        _, self.port, _ = yield start_proxy(self)
        self.http = visitor(self)

    @defer.inlineCallbacks
    def assertPlain(self, method, path, code, says, headers=None):
        response = yield self.http.request(
            method, "http://127.0.0.1:{}{}".format(self.port, path),
            headers=headers)
        body = yield response.content()
        self.assertEqual(response.code, code, body)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/plain; charset=utf-8"])
        self.assertIn(says, body)
        self.assertFalse(body.lstrip().startswith(b"<"), body)
        return response

    def test_unknown_path_is_a_plain_404(self):
        """A path the proxy has no page for: 404 in words."""
        return self.assertPlain("GET", "/no/such/page", 404, b"not found on this proxy")

    def test_proxy_directory_is_a_plain_404(self):
        """/proxy and /proxy/request themselves: 404 in words."""
        d = self.assertPlain("GET", "/proxy", 404, b"not found")
        d.addCallback(lambda _: self.assertPlain("GET", "/proxy/request", 404, b"not found"))
        d.addCallback(lambda _: self.assertPlain("GET", "/proxy/request/", 404,
                                                 b"/proxy/request/<clientID>/"))
        return d

    @defer.inlineCallbacks
    def test_wrong_method_on_the_info_page_is_a_plain_405(self):
        """POST / is 405 with Allow, in words."""
        response = yield self.assertPlain("POST", "/", 405, b"only answers GET and HEAD")
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])

    def test_malformed_tunnel_hostname_is_a_plain_400(self):
        """A Host that is not a DNS label under the domain: 400 in words."""
        return self.assertPlain("GET", "/", 400, b"does not name a valid tunnel hostname",
                                headers={b"Host": [b"bad_label.localhost"]})

    def test_unknown_tunnel_is_a_plain_502(self):
        """A well-formed but unknown tunnel: 502 in words."""
        return self.assertPlain("GET", "/proxy/request/{}/".format("a" * 52), 502,
                                b"is not connected")

    @defer.inlineCallbacks
    def test_malformed_request_line_is_a_plain_400(self):
        """A request Twisted cannot parse gets a 400 with a body saying why, then the close."""
        answer = yield raw_exchange(self.port, b"NOT A REQUEST\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 400 "), answer)
        self.assertIn(b"Content-Type: text/plain; charset=utf-8", head)
        self.assertIn(b"bad request: malformed", body)


class ClientRetryLogTests(TestCase):
    """
    The client's retry log names why the last attempt failed.
    """

    def setUp(self):
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def retry_warnings(self):
        return [formatEvent(e) for e in self.events
                if "retrying in" in e.get("log_format", "")]

    @defer.inlineCallbacks
    def test_refused_connection_is_named(self):
        """Nothing listening at the proxy's port: the retry log says connection refused."""
        start_client(self, unused_local_url(), "http://127.0.0.1:1")
        warnings = yield wait_until(self.retry_warnings)
        self.assertIn("connection refused", warnings[0])

    @defer.inlineCallbacks
    def test_http_status_of_a_non_websocket_server_is_named(self):
        """A plain HTTP server at the proxy's URL: the retry log gives its HTTP status."""
        local_url = start_local_service(self, RecordingResource())
        start_client(self, local_url, "http://127.0.0.1:1")
        warnings = yield wait_until(self.retry_warnings)
        self.assertIn("closed before registration", warnings[0])
        self.assertIn("200", warnings[0])

    @defer.inlineCallbacks
    def test_token_for_another_url_names_the_signed_url_and_the_fix(self):
        """A --proxy URL the proxy does not know as --base: refusal with both URLs and a hint."""
        _, port, _ = yield start_proxy(self)
        signed_for = "http://localhost:{}".format(port)
        start_client(self, signed_for, "http://127.0.0.1:1")
        warnings = yield wait_until(self.retry_warnings)
        self.assertIn("registration refused: Token not for this endpoint: the token "
                      "names {}; this proxy is http://127.0.0.1:{}".format(signed_for, port),
                      warnings[0])
        hints = [formatEvent(e) for e in self.events
                 if "--base" in e.get("log_format", "")
                 and e["log_level"] == LogLevel.error]
        self.assertIn(signed_for, hints[0])
        self.assertIn("--proxy", hints[0])


class SetBaseTests(TestCase):
    def test_changing_the_main_base_keeps_the_other_bases(self):
        """set_base replaces the main --base; the extra --base URLs stay accepted."""
        from twisted.internet.testing import MemoryReactorClock

        from brickchain_proxy.proxy.service import ProxyService

        proxy = ProxyService(MemoryReactorClock(), ["tcp:0"], "p.test", "http://a.test",
                             extra_bases=("http://b.test",))
        proxy.set_base("http://c.test")
        verifier = proxy.tunnel_factory.verifier
        self.assertTrue(verifier.accepts_uri("http://c.test"))
        self.assertTrue(verifier.accepts_uri("http://b.test"))
        self.assertFalse(verifier.accepts_uri("http://a.test"))


class NotATunnelTests(TestCase):
    """
    Ids that cannot be clientIDs, and hosts under the domain that are not
    <clientID>.<domain>, are answered at once and never reach the rate
    limiter (so a flood of random names creates nothing).
    """

    @defer.inlineCallbacks
    def setUp(self):
        self.proxy, self.port, _ = yield start_proxy(self)
        self.http = visitor(self)

    @defer.inlineCallbacks
    def get(self, path, host=None):
        headers = {b"Host": [host]} if host else None
        response = yield self.http.get("http://127.0.0.1:{}{}".format(self.port, path),
                                       headers=headers)
        body = yield response.content()
        return response.code, body

    @defer.inlineCallbacks
    def test_malformed_ids_are_404_without_a_rate_limit_bucket(self):
        """Path ids that are not 52 base32 characters get 404 in words; the limiter is never asked."""
        for name in ["nosuchtunnel", "a" * 51, "a" * 53, "1" * 52, "A%2F" + "a" * 48]:
            code, body = yield self.get("/proxy/request/{}/x".format(name))
            self.assertEqual(code, 404, name)
            self.assertIn(b"52 characters of base32", body)
        self.assertEqual(len(self.proxy.local_limiter), 0)

    @defer.inlineCallbacks
    def test_hosts_under_the_domain_that_are_not_tunnels_are_400(self):
        """'...localhost', 'a.b.localhost' or a short label never reach the proxy's own pages: 400."""
        for host in [b"...localhost", b"a.b.localhost", b"www.localhost", b".localhost"]:
            code, body = yield self.get("/", host=host)
            self.assertEqual(code, 400, host)
            self.assertNotIn(b"brickchain-proxy", body)
        self.assertEqual(len(self.proxy.local_limiter), 0)

    @defer.inlineCallbacks
    def test_unknown_well_formed_ids_cost_no_rate_limit_bucket(self):
        """Well-formed ids nobody holds get 502 at once, by path and by host, and create no bucket."""
        for n, letter in enumerate("bcdefg"):
            unknown = letter * 52
            code, body = yield self.get(
                "/proxy/request/{}/x".format(unknown) if n % 2 else "/x",
                host=None if n % 2 else (unknown + ".localhost").encode())
            self.assertEqual((code, body), (502, b"tunnel %s is not connected\n" % unknown.encode()))
        self.assertEqual(len(self.proxy.local_limiter), 0)

    @defer.inlineCallbacks
    def test_the_domain_itself_serves_the_proxys_pages(self):
        """Host <domain> (no tunnel label) still gets the proxy's own page."""
        code, body = yield self.get("/", host=b"localhost")
        self.assertEqual(code, 200)
        self.assertIn(b"brickchain-proxy", body)
