"""
Tests for the two ends of a tunnel's websocket: the proxy's
L{TunnelServerProtocol} (registration, refusals, the registration deadline,
pings, disconnect) and the client's L{TunnelClientProtocol} (refusal
handling, the watchdog).

Each test wires a real Autobahn server protocol to a real Autobahn client
protocol through L{twisted.test.iosim} in memory
(L{tests.support_tunnel.MemoryConnections}): real websocket frames, no
sockets, and every timer of ours on one L{Clock}.  Autobahn's own handshake
timers run on the global reactor (through txaio), not on the factory's
clock, so they are switched off here; trial's check of the global reactor
then proves nothing was left behind there either.
"""

import base64
import json

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketServerFactory
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase

from brickchain_proxy.bus import MemoryBus, MemoryDirectory
from brickchain_proxy.client.inspector import NO_RECORDER
from brickchain_proxy.client.rewrite import LocalRewrite
from brickchain_proxy.client.tunnel import (
    RegistrationFailed,
    TunnelClientFactory,
)
from brickchain_proxy.correlation import TunnelGone
from brickchain_proxy.identity import ClientKey, session_client_id
from brickchain_proxy.mandate_tokens import TokenVerifier
from brickchain_proxy.messages import (
    Disconnect,
    HttpRequest,
    HttpResponse,
    MessageError,
    Ping,
    RegistrationRequest,
    RegistrationResponse,
    decode,
    encode,
)
from brickchain_proxy.proxy.hub import TunnelHub
from brickchain_proxy.proxy.tunnel import PING
from brickchain_proxy.proxy.tunnel_factory import TunnelServerFactory
from brickchain_proxy.tls import SYSTEM_TRUST
from tests.support_tunnel import (
    BASE,
    CLOSE_NORMAL,
    DOMAIN,
    NOW,
    WS_URL,
    FakeProxy,
    MemoryConnections,
    RawTunnelClient,
    without_global_timers,
)

PING_INTERVAL = 10.0
REGISTRATION_TIMEOUT = 10.0
PING_TIMEOUT = 20.0

CLOSE_POLICY = 1008
CLOSE_ABNORMAL = 1006

# The ping, byte for byte, as docs/protocol.rst defines it.
PING_BYTES = b'{"@type":"https://proxy.brickchain.com/v1/ping.json"}\n'


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class ProxyProtocolTestCase(TestCase):
    """
    A proxy's L{TunnelServerFactory} on a L{Clock}, and clients for it.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.directory = MemoryDirectory()
        self.hub = TunnelHub(self.clock, MemoryBus(self.clock), self.directory,
                             request_timeout=30.0, instance_id="proxy-1")
        self.factory = without_global_timers(TunnelServerFactory(
            self.hub, TokenVerifier(BASE), DOMAIN, self.clock,
            ping_interval=PING_INTERVAL,
            registration_timeout=REGISTRATION_TIMEOUT,
        ))
        self.key = ClientKey.generate()
        self.events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher)
        self.net = MemoryConnections(self.clock)
        self.addCleanup(self.assertNothingLeft)
        self.addCleanup(self.net.close_all)

    def assertNothingLeft(self):
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.hub.local, {})
        self.assertEqual(len(self.hub.pending), 0)
        self.assertEqual(self.factory.connections, set())

    def connect(self):
        """
        @return: C{(server_protocol, client)} with the websocket open.
        """
        client_factory = without_global_timers(
            WebSocketClientFactory(WS_URL, reactor=self.clock), client=True)
        client_factory.protocol = RawTunnelClient
        server, client = self.net.connect(self.factory, client_factory)
        self.assertTrue(self.net.is_open(client))
        return server, client

    def token(self, key=None, uri=BASE, ttl=60, now=None):
        key = key or self.key
        return key.sign_mandate_token(
            uri, ttl=ttl, now=self.clock.seconds() if now is None else now)

    def register(self, client, token=None, session=None, features=None):
        """
        Send a registration-request and deliver the answer.

        @return: the request sent.
        """
        request = RegistrationRequest(
            mandate_token=token if token is not None else self.token(),
            session=session, features=features,
        )
        client.send(request)
        self.net.flush()
        return request

    def events_about(self, text, level=None):
        return [
            e for e in self.events
            if text in e.get("log_format", "")
            and (level is None or e["log_level"] == level)
        ]


class RefusedRegistrationTests(ProxyProtocolTestCase):
    """
    A registration the proxy refuses: a plain-text reason, then close 1008,
    and a log line; no tunnel.
    """

    def assertRefused(self, client, reason):
        """
        The proxy answered with exactly one plain-text message starting with
        C{reason}, closed with 1008, logged it and attached no tunnel.
        """
        self.assertEqual(len(client.messages), 1, client.messages)
        text = client.messages[0]
        self.assertRaises(MessageError, decode, text)
        self.assertTrue(text.decode("utf-8").startswith(reason), text)
        self.assertEqual(client.closed[0], CLOSE_POLICY)
        self.assertEqual(self.hub.local, {})
        return text.decode("utf-8")

    def assertRefusalLogged(self, reason):
        events = self.events_about("registration refused", LogLevel.warn)
        self.assertEqual(len(events), 1)
        self.assertTrue(events[0]["reason"].startswith(reason))

    def test_expired_token(self):
        """
        A token whose time-to-live has passed is refused as
        C{Token has expired}.
        """
        _, client = self.connect()

        self.register(client, self.token(ttl=60, now=NOW - 70))

        self.assertRefused(client, "Token has expired")
        self.assertRefusalLogged("Token has expired")

    def test_token_for_another_endpoint(self):
        """
        A token made for another proxy is refused as
        C{Token not for this endpoint}.
        """
        _, client = self.connect()

        self.register(client, self.token(uri="http://elsewhere.test"))

        self.assertRefused(client, "Token not for this endpoint")
        self.assertRefusalLogged("Token not for this endpoint")

    def test_token_without_jwk(self):
        """
        A token whose header embeds no key is refused as C{no jwk in token}.
        """
        _, client = self.connect()
        header = b64url(b'{"alg":"ES256"}')
        payload = self.token().split(".")[1]
        token = "{}.{}.{}".format(header, payload, b64url(b"\x00" * 64))

        self.register(client, token)

        self.assertRefused(client, "no jwk in token")
        self.assertRefusalLogged("no jwk in token")

    def test_token_with_a_bad_signature(self):
        """
        A token whose signature does not match its embedded key is refused
        as C{failed to verify token: ...}.
        """
        _, client = self.connect()
        mine = self.token().split(".")
        theirs = self.token(key=ClientKey.generate()).split(".")
        forged = ".".join([theirs[0], mine[1], mine[2]])

        self.register(client, forged)

        self.assertRefused(client, "failed to verify token: ")
        self.assertRefusalLogged("failed to verify token")

    def test_malformed_token(self):
        """
        Something that is not a compact JWS is refused as
        C{malformed token}.
        """
        _, client = self.connect()

        self.register(client, "not-a-token")

        self.assertRefused(client, "malformed token")
        self.assertRefusalLogged("malformed token")

    def test_non_json_message_before_registration(self):
        """
        A message that is not a protocol message before any registration is
        refused the same way, and logged.
        """
        _, client = self.connect()

        client.send(b"hello, is this the proxy?")
        self.net.flush()

        self.assertRefused(client, "malformed message: ")
        events = self.events_about("malformed message ignored", LogLevel.warn)
        self.assertEqual(len(events), 1)
        self.assertIn("invalid JSON", events[0]["error"])

    def test_second_bad_message_is_not_answered_again(self):
        """
        Bad messages arriving after the refusal (the connection is closing)
        get no second answer.
        """
        _, client = self.connect()

        client.send(b"one")
        client.send(b"two")
        self.net.flush()

        self.assertRefused(client, "malformed message: ")

    def test_no_registration_in_time(self):
        """
        A connection that does not register within the registration timeout
        is told so and closed with 1008 -- not a moment earlier.
        """
        _, client = self.connect()

        self.net.advance(REGISTRATION_TIMEOUT - 0.5)
        self.assertTrue(self.net.is_open(client))
        self.assertEqual(client.messages, [])

        self.net.advance(0.5)

        self.assertRefused(client, "no registration received in time")
        self.assertEqual(
            len(self.events_about("no registration within", LogLevel.warn)), 1)

    def test_no_registration_in_time_with_an_earlier_ping(self):
        """
        The deadline holds when pings are due before it; the pings go out
        while the connection waits.
        """
        self.factory.ping_interval = 4.0
        _, client = self.connect()

        for seconds in [4, 4, 2]:
            self.net.advance(seconds)

        self.assertEqual(client.messages[:2], [PING_BYTES, PING_BYTES])
        self.assertEqual(client.messages[2],
                         b"no registration received in time")
        self.assertEqual(client.closed[0], CLOSE_POLICY)

    def test_registration_cancels_the_deadline(self):
        """
        Once registered, the connection outlives the registration timeout.
        """
        _, client = self.connect()
        self.register(client)

        self.net.advance(REGISTRATION_TIMEOUT * 3)

        self.assertTrue(self.net.is_open(client))
        self.assertIsNone(client.closed)


class RegistrationTests(ProxyProtocolTestCase):
    """
    A registration the proxy accepts.
    """

    def test_response_names_the_tunnel(self):
        """
        The registration-response answers the request's C{@id} with the
        clientID as C{keyID} and C{<clientID>.<domain>} as hostname.
        """
        _, client = self.connect()

        request = self.register(client)

        [response] = client.decoded()
        self.assertIsInstance(response, RegistrationResponse)
        self.assertEqual(response.id, request.id)
        self.assertEqual(response.key_id, self.key.client_id)
        self.assertEqual(response.hostname,
                         "{}.{}".format(self.key.client_id, DOMAIN))

    def test_tunnel_is_attached_to_the_hub(self):
        """
        The registered clientID is routed to this connection, and the
        directory names this instance; the registration is logged.
        """
        server, client = self.connect()

        self.register(client)

        self.assertIs(self.hub.local[self.key.client_id], server)
        self.assertEqual(
            self.successResultOf(self.directory.lookup(self.key.client_id)),
            "proxy-1")
        [event] = self.events_about("registered from", LogLevel.info)
        self.assertEqual(event["client_id"], self.key.client_id)
        self.assertEqual(event["features"], "v1")

    def test_v1_client_gets_no_features_field(self):
        """
        A client that offered no features (a v1 client) gets a response
        without any C{features} field, and the tunnel speaks pure v1.
        """
        server, client = self.connect()

        self.register(client)

        self.assertNotIn("features", json.loads(client.messages[0]))
        self.assertEqual(server.features, frozenset())

    def test_offered_features_are_answered_with_the_shared_subset(self):
        """
        A client offering features gets back those the proxy speaks too,
        and the tunnel uses exactly those.
        """
        server, client = self.connect()

        self.register(client, features=["no-such-feature", "binary-ws",
                                         "multi-header"])

        [response] = client.decoded()
        self.assertEqual(response.features, ["binary-ws", "multi-header"])
        self.assertEqual(server.features,
                         frozenset(["binary-ws", "multi-header"]))
        self.assertEqual(self.hub.encoding_features(self.key.client_id),
                         frozenset(["binary-ws", "multi-header"]))

    def test_features_the_proxy_does_not_enable_are_not_used(self):
        """
        A feature the proxy was configured without is left out.
        """
        self.factory.features = frozenset(["multi-header"])
        _, client = self.connect()

        self.register(client, features=["binary-ws", "multi-header"])

        self.assertEqual(client.decoded()[0].features, ["multi-header"])

    def test_session_registration_gets_the_session_client_id(self):
        """
        A registration naming a session is given the session's clientID and
        hostname.
        """
        server, client = self.connect()

        self.register(client, session="session-1")

        expected = session_client_id(self.key.client_id, "session-1")
        [response] = client.decoded()
        self.assertEqual(response.key_id, expected)
        self.assertEqual(response.hostname, "{}.{}".format(expected, DOMAIN))
        self.assertIs(self.hub.local[expected], server)
        self.assertNotIn(self.key.client_id, self.hub.local)

    def test_several_registrations_on_one_connection(self):
        """
        One connection may register several tunnels (v1 allows it).
        """
        server, client = self.connect()

        self.register(client)
        self.register(client, session="s")

        self.assertEqual(len(client.decoded()), 2)
        self.assertEqual(
            set(self.hub.local),
            {self.key.client_id, session_client_id(self.key.client_id, "s")})
        self.assertEqual(set(self.hub.local.values()), {server})

    def test_proxy_without_a_domain_sends_no_hostname(self):
        """
        Without a domain, the response has no hostname (as v1).
        """
        self.factory.domain = None
        _, client = self.connect()

        self.register(client)

        self.assertNotIn("hostname", json.loads(client.messages[0]))

    def test_newer_connection_replaces_the_older(self):
        """
        The same key registering on a second connection takes the tunnel;
        the first connection is closed with 1008.
        """
        _, first = self.connect()
        self.register(first)
        second_server, second = self.connect()

        self.register(second)

        self.assertEqual(first.closed[0], CLOSE_POLICY)
        self.assertTrue(self.net.is_open(second))
        self.assertIs(self.hub.local[self.key.client_id], second_server)

    def test_connection_closing_drops_its_tunnels(self):
        """
        When the websocket closes, its tunnels leave the hub.
        """
        _, client = self.connect()
        self.register(client)

        client.sendClose(CLOSE_NORMAL)
        self.net.flush()

        self.assertEqual(self.hub.local, {})
        self.assertIsNone(
            self.successResultOf(self.directory.lookup(self.key.client_id)))


class DisconnectTests(ProxyProtocolTestCase):
    """
    The client's disconnect message.
    """

    def test_disconnect_drops_the_tunnel_at_once(self):
        """
        On a disconnect message the tunnel leaves the hub and its waiting
        requests fail, before the close handshake has completed.
        """
        _, client = self.connect()
        self.register(client)
        message = HttpRequest(url="/", method="GET")
        waiting = self.hub.request(self.key.client_id, message.id,
                                   encode(message))

        client.send(Disconnect())
        self.net.pumps[0].pump()  # the proxy has read it; nothing more

        self.assertEqual(self.hub.local, {})
        self.failureResultOf(waiting, TunnelGone)
        self.assertIsNone(client.closed)

        self.net.flush()
        self.assertEqual(client.closed[0], CLOSE_NORMAL)


    def test_request_to_a_closing_connection_fails_when_it_closes(self):
        """
        A request for a tunnel whose connection is already closing is not
        sent; it fails with L{TunnelGone} when the connection is gone.
        """
        server, client = self.connect()
        self.register(client)
        del client.messages[:]
        server.go_away()

        message = HttpRequest(url="/", method="GET")
        waiting = self.hub.request(self.key.client_id, message.id,
                                   encode(message))
        self.assertNoResult(waiting)
        self.net.flush()

        self.failureResultOf(waiting, TunnelGone)
        self.assertEqual(client.messages, [])
        self.assertEqual(client.closed[0], 1001)


class PingTests(ProxyProtocolTestCase):
    """
    The proxy's keep-alive: a ping after C{ping_interval} seconds in which
    nothing else went to the client.
    """

    def test_ping_bytes_match_the_protocol(self):
        """
        The ping is exactly the v1 document and a newline.
        """
        self.assertEqual(PING, PING_BYTES)
        self.assertEqual(encode(Ping()), PING_BYTES)

    def test_ping_after_an_idle_interval(self):
        """
        After C{ping_interval} seconds of silence exactly the ping bytes are
        sent -- not before -- and again after each further idle interval.
        """
        _, client = self.connect()
        self.register(client)
        del client.messages[:]

        self.net.advance(PING_INTERVAL - 0.5)
        self.assertEqual(client.messages, [])

        self.net.advance(0.5)
        self.assertEqual(client.messages, [PING_BYTES])

        self.net.advance(PING_INTERVAL)
        self.assertEqual(client.messages, [PING_BYTES, PING_BYTES])

    def test_no_ping_while_traffic_flows(self):
        """
        While requests keep going to the client, no ping is sent; the first
        comes one interval after the traffic stops.
        """
        _, client = self.connect()
        self.register(client)
        del client.messages[:]

        for _ in range(12):
            self.net.advance(PING_INTERVAL / 2)
            message = HttpRequest(url="/", method="GET")
            reply = self.hub.request(self.key.client_id, message.id,
                                     encode(message))
            self.net.flush()
            client.send(HttpResponse(id=message.id, status=200))
            self.net.flush()
            self.successResultOf(reply)

        self.assertNotIn(PING_BYTES, client.messages)
        self.assertEqual(len(client.messages), 12)

        self.net.advance(PING_INTERVAL - 0.5)
        self.assertNotIn(PING_BYTES, client.messages)
        self.net.advance(0.5)
        self.assertEqual(client.messages[-1], PING_BYTES)

    def test_unregistered_connection_is_pinged_too(self):
        """
        Pings start when the websocket opens, before any registration.
        """
        self.factory.registration_timeout = PING_INTERVAL * 2
        _, client = self.connect()

        self.net.advance(PING_INTERVAL)

        self.assertEqual(client.messages, [PING_BYTES])


class FakeForwarder:
    """
    Stands in for the client's L{LocalForwarder}; never asked to forward
    here.
    """

    timeout = 25.0
    max_body = 512000
    rewrite = LocalRewrite()
    endpoint = None  # the local service is reached by its URL
    recorder = NO_RECORDER
    tls = SYSTEM_TRUST  # how an https local service would be verified


class ClientProtocolTestCase(TestCase):
    """
    The client's L{TunnelClientFactory} on a L{Clock}, talking to a
    L{FakeProxy}.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.closes = []
        self.key = ClientKey.generate()
        self.factory = without_global_timers(TunnelClientFactory(
            WS_URL, BASE, self.key, forwarder=FakeForwarder(),
            clock=self.clock, local_url="http://127.0.0.1:8080",
            ping_timeout=PING_TIMEOUT,
            on_closed=lambda *args: self.closes.append(args),
        ), client=True)
        self.proxy_factory = without_global_timers(
            WebSocketServerFactory(WS_URL, reactor=self.clock))
        self.proxy_factory.protocol = FakeProxy
        self.events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher)
        self.net = MemoryConnections(self.clock)
        self.addCleanup(self.assertNothingLeft)
        self.addCleanup(self.net.close_all)

    def assertNothingLeft(self):
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def connect(self):
        """
        @return: C{(proxy, client, request)}: the fake proxy, the client
            protocol, and the registration-request the client sent.
        """
        proxy, client = self.net.connect(self.proxy_factory, self.factory)
        # A test that does not look at the registration's outcome still
        # must not leave its failure unhandled when the connection closes.
        registered = client.registered

        def ignore_refusal():
            registered.addErrback(lambda f: f.trap(RegistrationFailed))

        self.addCleanup(ignore_refusal)
        [request] = [decode(m) for m in proxy.messages]
        self.assertIsInstance(request, RegistrationRequest)
        return proxy, client, request

    def accept(self, proxy, request):
        response = RegistrationResponse(
            id=request.id, key_id=self.key.client_id,
            hostname="{}.{}".format(self.key.client_id, DOMAIN),
        )
        proxy.sendMessage(encode(response), isBinary=False)
        self.net.flush()
        return response


class ClientRegistrationTests(ClientProtocolTestCase):
    """
    How the client reads the answer to its registration.
    """

    def test_registration_request_carries_a_valid_token(self):
        """
        On open the client registers with a token the proxy would accept,
        offering its features.
        """
        _, _, request = self.connect()

        # The client signs with the reactor's clock, like everything else.
        token = TokenVerifier(BASE).verify(request.mandate_token,
                                           now=self.clock.seconds())
        self.assertEqual(token.client_id, self.key.client_id)
        self.assertEqual(request.features, sorted(self.factory.features))

    def test_response_fires_registered(self):
        """
        The registration-response fires C{registered} with it.
        """
        proxy, client, request = self.connect()
        registered = client.registered

        self.accept(proxy, request)

        response = self.successResultOf(registered)
        self.assertEqual(response.key_id, self.key.client_id)
        self.assertIs(client.registration, response)

    def test_plain_text_during_registration_is_a_refusal(self):
        """
        A plain-text message while registering is the proxy's refusal:
        C{registered} fails with L{RegistrationFailed} carrying the reason.
        """
        proxy, client, _ = self.connect()
        registered = client.registered

        proxy.sendMessage(b"Token has expired", isBinary=False)
        proxy.sendCloseFrame(CLOSE_POLICY, b"Token has expired", isReply=False)
        self.net.flush()

        failure = self.failureResultOf(registered, RegistrationFailed)
        self.assertEqual(failure.getErrorMessage(), "Token has expired")
        self.assertEqual(len(self.closes), 1)
        _, was_registered, code, _ = self.closes[0]
        self.assertEqual((was_registered, code), (False, CLOSE_POLICY))
        self.assertEqual(
            len(self.events_about("refused the registration")), 1)

    def test_close_before_an_answer_fails_registration(self):
        """
        The connection closing before any answer fails C{registered}.
        """
        proxy, client, _ = self.connect()
        registered = client.registered

        proxy.sendCloseFrame(CLOSE_POLICY, b"no", isReply=False)
        self.net.flush()

        self.failureResultOf(registered, RegistrationFailed)

    def events_about(self, text):
        return [e for e in self.events if text in e.get("log_format", "")]


class WatchdogTests(ClientProtocolTestCase):
    """
    The client gives up on a proxy it has not heard from for
    C{ping_timeout} seconds.
    """

    def test_silence_drops_the_connection(self):
        """
        After C{ping_timeout} seconds with nothing from the proxy, the client
        drops the connection; not before.
        """
        proxy, client, request = self.connect()
        self.accept(proxy, request)

        self.net.advance(PING_TIMEOUT - 0.1)
        self.assertTrue(self.net.is_open(client))
        self.assertEqual(self.closes, [])

        self.net.advance(PING_TIMEOUT / 4 + 0.1)

        self.assertEqual(len(self.closes), 1)
        _, was_registered, code, _ = self.closes[0]
        self.assertEqual((was_registered, code), (True, CLOSE_ABNORMAL))

    def test_pings_keep_the_connection(self):
        """
        While pings arrive, the client stays connected however long it
        runs.
        """
        proxy, client, request = self.connect()
        self.accept(proxy, request)

        for _ in range(10):
            self.net.advance(PING_INTERVAL)
            proxy.sendMessage(PING_BYTES, isBinary=False)
            self.net.flush()

        self.assertTrue(self.net.is_open(client))
        self.assertEqual(self.closes, [])

    def test_silence_before_registration_drops_too(self):
        """
        A proxy that never answers the registration is given up on as well,
        and C{registered} fails.
        """
        _, client, _ = self.connect()
        registered = client.registered

        self.net.advance(PING_TIMEOUT + PING_TIMEOUT / 4)

        self.failureResultOf(registered, RegistrationFailed)
        self.assertEqual(len(self.closes), 1)


class V1PacingTests(ProxyProtocolTestCase):
    """
    Frames of a visitor websocket toward a v1 client leave one pacing
    interval apart (the Go client would reorder them); our own client gets
    them as they come.
    """

    def setUp(self):
        ProxyProtocolTestCase.setUp(self)
        self.factory.v1_ws_pacing = 0.005

    def frames(self, count):
        from brickchain_proxy.messages import WSMessage

        return [encode(WSMessage.from_payload("stream-1", b"%d" % n, False, False))
                for n in range(count)]

    def test_frames_to_a_v1_client_are_spaced_by_the_pacing(self):
        """A v1 client gets back-to-back frames of one stream one interval apart, in order."""
        server, client = self.connect()
        self.register(client)
        del client.messages[:]
        frames = self.frames(3)
        for raw in frames:
            server.send_frame("stream-1", raw)
        self.net.flush()
        self.assertEqual(client.messages, frames[:1])
        self.net.advance(0.005)
        self.assertEqual(client.messages, frames[:2])
        self.net.advance(0.005)
        self.assertEqual(client.messages, frames)

    def test_frames_to_a_client_with_features_are_not_paced(self):
        """A client that negotiated features gets every frame at once."""
        server, client = self.connect()
        self.register(client, features=["binary-ws"])
        del client.messages[:]
        frames = self.frames(3)
        for raw in frames:
            server.send_frame("stream-1", raw)
        self.net.flush()
        self.assertEqual(client.messages, frames)

    def test_pacing_off_sends_v1_frames_at_once(self):
        """With pacing 0 a v1 client gets every frame at once."""
        self.factory.v1_ws_pacing = 0
        server, client = self.connect()
        self.register(client)
        del client.messages[:]
        frames = self.frames(3)
        for raw in frames:
            server.send_frame("stream-1", raw)
        self.net.flush()
        self.assertEqual(client.messages, frames)

    def test_closing_drops_the_waiting_frames_and_their_timers(self):
        """A connection that closes with frames waiting leaves no timer behind."""
        server, client = self.connect()
        self.register(client)
        for raw in self.frames(3):
            server.send_frame("stream-1", raw)
        self.net.close_all()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RegistrationFailureLoggingTests(ProxyProtocolTestCase):
    def test_failed_registration_reply_is_logged_with_its_traceback(self):
        """A failure while recording a registration is logged as a failure, traceback kept."""
        from twisted.internet import defer

        self.hub.attach = lambda client_id, connection: defer.fail(RuntimeError("boom"))
        server, client = self.connect()
        self.register(client)
        [event] = [e for e in self.events
                   if "registration reply failed" in e.get("log_format", "")]
        self.assertIsInstance(event["log_failure"].value, RuntimeError)
        self.assertIn("boom", event["log_failure"].getTraceback())
        self.flushLoggedErrors(RuntimeError)
        server.client_ids.clear()  # the hub never recorded it
