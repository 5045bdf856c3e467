"""
A captured registration cannot take a tunnel over: the proxy refuses a
mandate token it has seen before (on any connection, in any encoding of
its signature), a token whose lifetime is longer than clients need, and a
connection that keeps trying to register.

The protocol tests wire a real L{TunnelServerProtocol} to a bare client in
memory, every timer on one L{Clock}; the end-to-end tests run a real proxy
and a real client over loopback, with a bare websocket client as the
attacker.
"""

import base64
import json

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from brickchain_proxy.bus import MemoryBus, MemoryDirectory
from brickchain_proxy.identity import ClientKey
from brickchain_proxy.mandate_tokens import TOO_LONG, TokenVerifier
from brickchain_proxy.messages import (
    MessageError,
    RegistrationRequest,
    RegistrationResponse,
    decode,
)
from brickchain_proxy.metrics import refusal_reason
from brickchain_proxy.proxy import tunnel
from brickchain_proxy.proxy.hub import TunnelHub
from brickchain_proxy.proxy.tap import Options
from brickchain_proxy.proxy.tunnel_factory import TunnelServerFactory
from brickchain_proxy.replay import MemoryReplayGuard, ReplayCheckUnavailable
from brickchain_proxy.timestamps import parse_timestamp
from tests import protocol_vectors
from tests.support import (
    RecordingResource,
    start_local_service,
    start_tunnel,
    visitor,
    wait_until,
)
from tests.support_tunnel import (
    BASE,
    DOMAIN,
    NOW,
    WS_URL,
    MemoryConnections,
    RawTunnelClient,
    without_global_timers,
)
from tests.support_ws import connect_raw_tunnel

CLOSE_POLICY = 1008
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def malleated(token):
    """
    C{token} with its signature's C{s} replaced by C{n - s}: a different
    string that still verifies.
    """
    header, payload, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "==")
    flipped = raw[:32] + (_P256_ORDER - int.from_bytes(raw[32:], "big")).to_bytes(32, "big")
    return ".".join([header, payload,
                     base64.urlsafe_b64encode(flipped).rstrip(b"=").decode("ascii")])


class _FailingGuard:
    """
    A replay guard that cannot decide (Redis down).
    """

    since = None

    def first_use(self, signature_id, expires_at):
        return defer.fail(ReplayCheckUnavailable("Redis is unreachable"))

    def prune(self):
        return 0


class _WaitingGuard:
    """
    A replay guard whose answers the test gives.
    """

    since = None

    def __init__(self):
        self.asked = []

    def first_use(self, signature_id, expires_at):
        d = defer.Deferred()
        self.asked.append(d)
        return d

    def prune(self):
        return 0


class _ProtocolFixture(TestCase):
    """
    A proxy's tunnel factory (memory hub, memory replay guard) and bare
    clients connected to it in memory.
    """

    base = BASE
    start = NOW

    def setUp(self):
        self.clock = Clock()
        # The proxy started a second before the test's tokens are made.
        self.clock.advance(self.start - 1)
        self.guard = MemoryReplayGuard(self.clock)
        self.clock.advance(1)
        self.directory = MemoryDirectory()
        self.hub = TunnelHub(self.clock, MemoryBus(self.clock), self.directory,
                             request_timeout=30.0, instance_id="proxy-1")
        self.factory = without_global_timers(TunnelServerFactory(
            self.hub, TokenVerifier(self.base), DOMAIN, self.clock,
            replay_guard=self.guard,
        ))
        self.key = ClientKey.generate()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.net = MemoryConnections(self.clock)
        self.addCleanup(self.assertNothingLeft)
        self.addCleanup(self.net.close_all)

    def assertNothingLeft(self):
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.hub.local, {})
        self.assertEqual(self.factory.connections, set())

    def connect(self):
        client_factory = without_global_timers(
            WebSocketClientFactory(WS_URL, reactor=self.clock), client=True)
        client_factory.protocol = RawTunnelClient
        server, client = self.net.connect(self.factory, client_factory)
        return server, client

    def token(self, ttl=60, key=None):
        return (key or self.key).sign_mandate_token(
            self.base, ttl=ttl, now=self.clock.seconds())

    def send(self, client, message):
        client.send(message)
        self.net.flush()

    def register(self, client, token=None, session=None):
        request = RegistrationRequest(
            mandate_token=self.token() if token is None else token, session=session)
        self.send(client, request)
        return request

    def assertRegistered(self, client, count=1):
        replies = client.decoded()
        self.assertEqual(len(replies), count, client.messages)
        for reply in replies:
            self.assertIsInstance(reply, RegistrationResponse)

    def assertRefused(self, client, reason):
        """
        The last message is a plain-text refusal starting with C{reason},
        and the connection was closed with 1008.

        @return: the refusal text.
        """
        text = client.messages[-1]
        self.assertRaises(MessageError, decode, text)
        self.assertTrue(text.decode("utf-8").startswith(reason), text)
        self.assertEqual(client.closed[0], CLOSE_POLICY)
        return text.decode("utf-8")

    def warnings(self, text):
        return [e for e in self.events if text in e.get("log_format", "")
                and e["log_level"] == LogLevel.warn]


class ReplayTests(_ProtocolFixture):
    """
    A token registers once; a replay is refused and the tunnel stays with
    the connection that registered it.
    """

    def test_replay_on_a_second_connection_is_refused_and_the_tunnel_stays(self):
        """The same registration-request on another connection: refused, the first keeps the tunnel."""
        first_server, first = self.connect()
        request = self.register(first)
        self.assertRegistered(first)
        _, second = self.connect()

        self.send(second, request)

        text = self.assertRefused(second, tunnel.REPLAYED)
        self.assertIn("sign a new token for every registration", text)
        self.assertTrue(self.net.is_open(first))
        self.assertIs(self.hub.local[self.key.client_id], first_server)
        events = self.warnings("a replayed token")
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["client_id"], self.key.client_id)

    def test_replay_of_the_raw_bytes_is_refused(self):
        """The captured message bytes, resent as they were: refused."""
        _, first = self.connect()
        token = self.token()
        self.register(first, token)
        captured = RegistrationRequest(mandate_token=token)
        _, second = self.connect()
        second.sendMessage(json.dumps({
            "@type": "https://proxy.brickchain.com/v1/registration-request.json",
            "@id": captured.id, "mandateToken": token}).encode(), isBinary=False)
        self.net.flush()
        self.assertRefused(second, tunnel.REPLAYED)
        self.assertTrue(self.net.is_open(first))

    def test_replay_with_a_malleated_signature_is_refused(self):
        """s turned into n - s verifies, but names the same signature: refused."""
        first_server, first = self.connect()
        token = self.token()
        self.register(first, token)
        _, second = self.connect()

        self.register(second, malleated(token))

        self.assertRefused(second, tunnel.REPLAYED)
        self.assertIs(self.hub.local[self.key.client_id], first_server)

    def test_replay_under_another_session_is_refused(self):
        """The token alone counts: replayed with a session (another clientID), still refused."""
        _, first = self.connect()
        token = self.token()
        self.register(first, token)
        _, second = self.connect()
        self.register(second, token, session="elsewhere")
        self.assertRefused(second, tunnel.REPLAYED)

    def test_replay_on_the_same_connection_is_refused(self):
        """Registering twice with one token on one connection: the second is refused."""
        _, client = self.connect()
        token = self.token()
        self.register(client, token)
        self.register(client, token)
        self.assertRefused(client, tunnel.REPLAYED)

    def test_a_fresh_token_still_takes_the_tunnel_over(self):
        """The same key with a new token on another connection wins, as before."""
        _, first = self.connect()
        self.register(first)
        second_server, second = self.connect()
        self.register(second)
        self.assertRegistered(second)
        self.assertEqual(first.closed[0], CLOSE_POLICY)
        self.assertIs(self.hub.local[self.key.client_id], second_server)

    def test_a_token_from_before_a_restart_is_refused(self):
        """A memory guard starts empty: a token made before it started is refused, saying so."""
        token = self.token()
        self.clock.advance(30)  # the proxy restarts: a new, empty guard
        self.factory.replay_guard = MemoryReplayGuard(self.clock)
        _, client = self.connect()
        self.register(client, token)
        self.assertRefused(client, tunnel.BEFORE_START)
        self.assertEqual(len(self.warnings("registration of {client_id} refused")), 1)
        _, fresh = self.connect()
        self.register(fresh)
        self.assertRegistered(fresh)

    def test_the_guard_forgets_a_token_once_it_has_expired(self):
        """After ttl plus skew the guard holds nothing, and the token is refused as expired."""
        _, first = self.connect()
        token = self.token(ttl=60)
        self.register(first, token)
        self.assertEqual(len(self.guard), 1)
        self.net.advance(65.5)
        self.assertEqual(self.guard.prune(), 1)
        _, second = self.connect()
        self.register(second, token)
        self.assertRefused(second, "Token has expired")

    def test_an_unauthorized_key_leaves_nothing_in_the_guard(self):
        """A refused key is refused before the guard is asked: nothing remembered."""
        from brickchain_proxy.mandate_tokens import RegistrationRefused

        def refuse(client_id, token):
            raise RegistrationRefused("client not authorized on this proxy")

        self.factory._authorizer = refuse
        _, client = self.connect()
        self.register(client)
        self.assertRefused(client, "client not authorized")
        self.assertEqual(len(self.guard), 0)


class GuardFailureTests(_ProtocolFixture):
    """
    A guard that cannot decide refuses the registration (fail closed);
    tunnels already registered keep working.
    """

    def test_unavailable_guard_refuses_with_a_clear_reason(self):
        """Redis down: 'cannot check the token for replay', close 1008, a warning; other tunnels stay."""
        holder_server, holder = self.connect()
        self.register(holder)
        self.factory.replay_guard = _FailingGuard()
        _, newcomer = self.connect()

        self.register(newcomer, self.token(key=ClientKey.generate()))

        text = self.assertRefused(newcomer, tunnel.REPLAY_CHECK_UNAVAILABLE)
        self.assertEqual(text, "cannot check the token for replay: Redis is "
                               "unreachable; try again later")
        self.assertEqual(len(self.warnings("registration of {client_id} refused")), 1)
        self.assertTrue(self.net.is_open(holder))
        self.assertEqual(set(self.hub.local), {self.key.client_id})

    def test_connection_closed_while_the_guard_answers_registers_nothing(self):
        """The guard's answer after the connection closed attaches no tunnel."""
        guard = self.factory.replay_guard = _WaitingGuard()
        _, client = self.connect()
        self.register(client)
        self.assertEqual(len(guard.asked), 1)
        client.sendClose(1000)
        self.net.flush()
        guard.asked[0].callback(True)
        self.net.flush()
        self.assertEqual(self.hub.local, {})
        self.assertEqual(client.messages, [])

    def test_registration_deadline_still_applies_while_the_guard_answers(self):
        """A guard that never answers: the registration deadline closes the connection."""
        self.factory.replay_guard = _WaitingGuard()
        _, client = self.connect()
        self.register(client)
        self.net.advance(self.factory.registration_timeout)
        self.assertRefused(client, "no registration received in time")


class LifetimeTests(_ProtocolFixture):
    """
    Tokens living longer than clients need are refused.
    """

    def test_an_hour_long_token_is_refused(self):
        """ttl 3600 against the default 120 s: refused naming both numbers."""
        _, client = self.connect()
        self.register(client, self.token(ttl=3600))
        text = self.assertRefused(client, TOO_LONG)
        self.assertIn("3600", text)
        self.assertIn("at most 120 s", text)
        self.assertEqual(len(self.guard), 0)

    def test_what_clients_sign_is_accepted(self):
        """Our client's 60 s token registers."""
        _, client = self.connect()
        self.register(client, self.token(ttl=60))
        self.assertRegistered(client)


class AttemptBoundTests(_ProtocolFixture):
    """
    A connection may send at most C{max_registrations} registration-requests.
    """

    def test_the_attempt_past_the_bound_closes_the_connection(self):
        """Five registrations pass; the sixth closes the connection unverified, with a log line."""
        self.factory.max_registrations = 5
        _, client = self.connect()
        for number in range(5):
            self.register(client, session="s%d" % number)
        self.assertRegistered(client, 5)

        self.register(client, "not even a token")

        text = self.assertRefused(client, tunnel.TOO_MANY_REGISTRATIONS)
        self.assertEqual(text, "too many registration attempts on this "
                               "connection (at most 5)")
        events = self.warnings("over the limit of {limit} per connection")
        self.assertEqual([(e["count"], e["limit"]) for e in events], [(6, 5)])
        self.assertEqual(self.hub.local, {})

    def test_the_bound_is_per_connection(self):
        """Another connection has its own count."""
        self.factory.max_registrations = 1
        _, first = self.connect()
        self.register(first)
        _, second = self.connect()
        self.register(second, self.token(key=ClientKey.generate()))
        self.assertRegistered(first)
        self.assertRegistered(second)


class VectorTests(_ProtocolFixture):
    """
    The Go client's captured registration is accepted at the time it was
    made, and refused when replayed.
    """

    base = "http://127.0.0.1:6519"

    def setUp(self):
        decoded = json.loads(protocol_vectors.read_vector(
            "registration-request.decoded.json"))
        self.start = parse_timestamp(decoded["payload"]["@timestamp"]) + 1
        _ProtocolFixture.setUp(self)
        self.raw = protocol_vectors.read_vector("raw/registration-request.txt", "rb")
        identity = json.loads(protocol_vectors.read_vector("identity.json"))
        self.client_id = identity["clientID"]

    def send_raw(self, client):
        client.sendMessage(self.raw, isBinary=False)
        self.net.flush()

    def test_go_registration_is_accepted_then_its_replay_refused(self):
        """The vector's bytes register the Go key; the same bytes again are refused."""
        first_server, first = self.connect()
        self.send_raw(first)
        self.assertRegistered(first)
        self.assertEqual(first.decoded()[0].key_id, self.client_id)

        _, second = self.connect()
        self.send_raw(second)

        self.assertRefused(second, tunnel.REPLAYED)
        self.assertIs(self.hub.local[self.client_id], first_server)


class RefusalLabelTests(SynchronousTestCase):
    """
    The new refusals have metrics labels of their own.
    """

    def test_each_new_refusal_has_its_label(self):
        """replayed, replay_check_unavailable, too_many_registrations, too_long."""
        self.assertEqual(
            [refusal_reason(text) for text in [
                tunnel.REPLAYED + ": sign a new token for every registration",
                tunnel.REPLAY_CHECK_UNAVAILABLE + ": Redis is unreachable",
                tunnel.TOO_MANY_REGISTRATIONS + " (at most 5)",
                TOO_LONG + ": ttl 3600 s",
                tunnel.BEFORE_START + ": sign a new token"]],
            ["replayed", "replay_check_unavailable", "too_many_registrations",
             "too_long", "before_start"])


class OptionTests(SynchronousTestCase):
    """
    C{--max-token-lifetime} and C{--max-registrations}.
    """

    def test_defaults(self):
        """120 s and 5 attempts."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["max-token-lifetime"], 120)
        self.assertEqual(options["max-registrations"], 5)

    def test_values_are_positive_integers(self):
        """Other values parse; 0 and words do not."""
        options = Options()
        options.parseOptions(["--max-token-lifetime", "90", "--max-registrations", "2"])
        self.assertEqual((options["max-token-lifetime"], options["max-registrations"]),
                         (90, 2))
        from twisted.python.usage import UsageError

        for bad in (["--max-token-lifetime", "0"], ["--max-registrations", "x"]):
            self.assertRaises(UsageError, Options().parseOptions, bad)

    def test_the_service_applies_them(self):
        """makeService hands both to the tunnel factory; set_base keeps the lifetime."""
        from brickchain_proxy.proxy.tap import makeService

        options = Options()
        options.parseOptions(["--max-token-lifetime", "90", "--max-registrations", "2",
                              "--listen", "tcp:0:interface=127.0.0.1"])
        service = makeService(options, reactor=Clock())
        factory = service.tunnel_factory
        self.assertEqual(factory.verifier.max_ttl, 90)
        self.assertEqual(factory.max_registrations, 2)
        self.assertIs(factory.replay_guard, service.replay_guard)
        self.assertIsInstance(service.replay_guard, MemoryReplayGuard)
        service.set_base("http://127.0.0.1:6519")
        self.assertEqual(factory.verifier.max_ttl, 90)


# -- end to end ------------------------------------------------------------------


class EndToEndReplayTests(TestCase):
    """
    A real proxy and client on loopback; an attacker replays what it
    captured from the client on a websocket of its own.
    """

    timeout = 30

    def setUp(self):
        self.local = RecordingResource()
        self.local_url = start_local_service(self, self.local)
        self.http = visitor(self)

    async def start(self, **proxy_kwargs):
        """
        A tunnel whose client's mandate tokens are recorded in C{self.tokens}.
        """
        self.tokens = []
        original = ClientKey.sign_mandate_token

        def recording(key, *args, **kwargs):
            token = original(key, *args, **kwargs)
            self.tokens.append(token)
            return token

        self.patch(ClientKey, "sign_mandate_token", recording)
        return await start_tunnel(self, self.local_url, **proxy_kwargs)

    async def get_ok(self, tunnel, path):
        response = await self.http.get(tunnel.path_url(path))
        body = await response.content()
        self.assertEqual(response.code, 200, body)

    async def test_captured_registration_replayed_is_refused_and_the_tunnel_serves(self):
        """The client's token on the attacker's connection: refused (1008); visitors still reach the client."""
        tunnel = await self.start()
        self.assertEqual(len(self.tokens), 1)
        attacker = await connect_raw_tunnel(self, tunnel.port)
        attacker.send(RegistrationRequest(mandate_token=self.tokens[0]))
        await wait_until(lambda: attacker.gone, what="attacker closed")
        self.assertEqual(attacker.close_code, CLOSE_POLICY)
        self.assertEqual(attacker.messages, [
            b"token already used: sign a new token for every registration"])
        await self.get_ok(tunnel, "/echo?after-replay")
        self.assertEqual([r.query for r in self.local.requests], [b"after-replay"])
        connection = tunnel.client.protocol
        self.assertEqual(connection.state, connection.STATE_OPEN)
        self.assertEqual(len(self.tokens), 1)  # the client never had to reconnect

    async def test_client_signs_a_new_token_on_every_reconnect(self):
        """Our client's reconnection registers with a new token, which the guard accepts."""
        tunnel = await self.start()
        connection = tunnel.client.protocol
        connection.dropConnection(abort=True)
        await wait_until(lambda: tunnel.client.protocol is None, what="connection lost")
        await tunnel.client.when_registered()
        self.assertIsNot(tunnel.client.protocol, connection)
        self.assertEqual(len(self.tokens), 2)
        self.assertNotEqual(self.tokens[0], self.tokens[1])
        await self.get_ok(tunnel, "/echo?reconnected")

    async def test_long_lived_token_is_refused(self):
        """A token valid for an hour is refused with the limit named."""
        tunnel = await self.start()
        attacker = await connect_raw_tunnel(self, tunnel.port)
        token = ClientKey.generate().sign_mandate_token(tunnel.base_url, ttl=3600)
        attacker.send(RegistrationRequest(mandate_token=token))
        await wait_until(lambda: attacker.gone, what="refused")
        self.assertEqual(attacker.close_code, CLOSE_POLICY)
        self.assertEqual(
            attacker.messages, [b"token lifetime too long: ttl 3600 s; this proxy "
                                b"accepts at most 120 s"])

    async def test_registration_attempts_are_bounded(self):
        """With --max-registrations 2, a third registration on one websocket closes it."""
        tunnel = await self.start(max_registrations=2)
        attacker = await connect_raw_tunnel(self, tunnel.port)
        key = ClientKey.generate()
        for session in ("a", "b", "c"):
            attacker.register(key, tunnel.base_url, session=session)
        await wait_until(lambda: attacker.gone, what="closed")
        self.assertEqual(attacker.close_code, CLOSE_POLICY)
        self.assertEqual(attacker.messages[-1],
                         b"too many registration attempts on this connection (at most 2)")
        await self.get_ok(tunnel, "/echo?still")

