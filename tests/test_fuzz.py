"""
Property-based tests (Hypothesis): malformed input never hurts anybody else.

Whatever one peer sends -- random bytes, random JSON, captured v1 messages
with fields deleted, retyped or replaced, unknown types, huge strings, wrong
base64, ids that belong to somebody else, messages out of order -- the
receiving side

  - lets no exception escape (nothing is logged as a failure),
  - refuses or closes the offending connection, or ignores the message and
    says so in its log,
  - and keeps serving everybody else: the healthy tunnel's waiting request
    and open websocket are untouched, and are answered correctly afterwards.

The unit-level tests drive real Autobahn frames through
L{twisted.test.iosim} on a L{Clock} (as L{tests.test_tunnel_protocol}
does), so they run many examples fast.  The end-to-end test runs fewer
examples against a real proxy, tunnel client and local service on loopback
while a raw TCP attacker and a websocket attacker do their worst.

For a longer hunt, raise the number of examples with
C{BRICKCHAIN_FUZZ_EXAMPLES} (unit level, default 150) and
C{BRICKCHAIN_FUZZ_E2E_EXAMPLES} (end to end, default 30).
"""

import base64
import functools
import gc
import json
import os
import traceback

import attr
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import FailTest, TestCase
from twisted.web.resource import Resource

from brickchain_proxy import features as _features
from brickchain_proxy.bus import MemoryBus, MemoryDirectory
from brickchain_proxy.client.forward import LocalForwarder
from brickchain_proxy.client.inspector import NO_RECORDER
from brickchain_proxy.client.rewrite import LocalRewrite
from brickchain_proxy.client.tunnel import TunnelClientFactory
from brickchain_proxy.identity import ClientKey
from brickchain_proxy.mandate_tokens import RegistrationRefused, TokenVerifier
from brickchain_proxy.messages import (
    Disconnect,
    HttpRequest,
    HttpResponse,
    MessageError,
    Ping,
    RegistrationRequest,
    RegistrationResponse,
    WSMessage,
    WSRequest,
    WSResponse,
    WSTeardown,
    decode,
    encode,
)
from brickchain_proxy.proxy.hub import TunnelHub
from brickchain_proxy.proxy.site import build_site
from brickchain_proxy.proxy.tunnel_factory import TunnelServerFactory
from brickchain_proxy.streams import frames
from brickchain_proxy.tls import SYSTEM_TRUST
from tests import protocol_vectors
from tests.support import (
    RecordingResource,
    open_transports,
    start_local_service,
    start_tunnel,
    visitor,
)
from tests.support_http import parse_response
from tests.support_hub import FakeVisitor
from tests.support_hypothesis import BASE_SETTINGS
from tests.support_tunnel import (
    BASE,
    DOMAIN,
    NOW,
    WS_URL,
    FakeProxy,
    MemoryConnections,
    RawTunnelClient,
    without_global_timers,
)

# -- settings ------------------------------------------------------------------

#: Unit-level properties: in memory, on a Clock; many examples.  (No
#: example database, no deadline: L{BASE_SETTINGS}.)
UNIT = settings(
    BASE_SETTINGS,
    max_examples=int(os.environ.get("BRICKCHAIN_FUZZ_EXAMPLES", "150")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)

#: The pure codec: cheap, so even more examples.
CODEC = settings(UNIT, max_examples=3 * UNIT.max_examples)

#: End to end with real sockets: few examples.
END_TO_END = settings(
    UNIT, max_examples=int(os.environ.get("BRICKCHAIN_FUZZ_E2E_EXAMPLES", "30")))



def explained(test):
    """
    Hypothesis puts the falsifying example in the exception's notes, which
    trial does not print: put the whole report in the failure's message.
    Use it as the outermost decorator.
    """

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        try:
            return test(*args, **kwargs)
        except Exception as e:
            # Hypothesis reports several distinct failures as a group whose
            # members carry the notes.
            parts = getattr(e, "exceptions", None) or [e]
            if parts == [e] and not getattr(e, "__notes__", None):
                raise
            # A group (also Hypothesis's FlakyFailure): show its report and
            # every member, whose tracebacks trial would not print.
            parts = [e] + [part for part in parts if part is not e]
            raise FailTest("".join(
                "".join(traceback.format_exception(part)) for part in parts
            )) from None

    return wrapper


CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_INVALID_PAYLOAD = 1007

# -- the captured v1 vectors ---------------------------------------------------


def _load_vectors():
    """
    The exact bytes of every captured vector (C{raw/*.txt}), by name, from
    L{tests.protocol_vectors} (C{tests/vectors/} or C{$BRICKCHAIN_VECTORS});
    empty when the folder is missing, which L{require_vectors} turns into a
    failure.
    """
    try:
        return protocol_vectors.raw_vectors()
    except protocol_vectors.VectorsMissing:
        return {}


VECTORS = _load_vectors()


def require_vectors():
    """
    Fail the test when the protocol vectors are missing.
    """
    if not VECTORS:
        path = protocol_vectors.vectors_dir()  # raises VectorsMissing
        raise FailTest("no raw/*.txt vectors in %s" % (path,))


# -- identities ------------------------------------------------------------------

HEALTHY_KEY = ClientKey.generate()
ATTACKER_KEY = ClientKey.generate()

#: The healthy tunnel's waiting request and open websocket.  Attack
#: strategies use these ids on purpose: nobody else may answer them.
HEALTHY_REQUEST_ID = "11111111-1111-4111-8111-111111111111"
HEALTHY_STREAM_ID = "22222222-2222-4222-8222-222222222222"

healthy_ids = st.sampled_from([HEALTHY_REQUEST_ID, HEALTHY_STREAM_ID])

#: Placeholders an attack may contain, filled in when it is sent.
REGISTER = b"@@register@@"  # a valid registration for the attacker's key
REGISTER_SESSION = b"@@register-session@@"  # the same, with a session
REGISTRATION_ID = "@@registration-id@@"  # the client's registration @id


# -- strategies -------------------------------------------------------------------

ids = st.one_of(
    st.sampled_from([HEALTHY_REQUEST_ID, HEALTHY_STREAM_ID, "", "0", " ",
                     HEALTHY_REQUEST_ID.upper(), REGISTRATION_ID]),
    st.uuids().map(str),
    st.text(max_size=40),
)

json_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)

json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=12,
)

huge_strings = st.builds(
    lambda n, unit: unit * n,
    st.integers(min_value=1000, max_value=200000),
    st.sampled_from(["A", "\u00e9", "\u2713", "=", "%", "\\"]),
)

bad_base64 = st.one_of(
    st.sampled_from(["=", "A", "AB=", "!!!!", "YQ", "YQ==YQ==", "\u00e9\u00e9\u00e9\u00e9",
                     " YQ==", "YQ==\n", "YQ=\u2713", "-_-_", "AAAA" * 3 + "A"]),
    st.text(max_size=20),
)

#: Any value a field might be replaced with.
field_values = st.one_of(json_values, huge_strings, bad_base64, ids,
                         st.integers(min_value=-10 ** 30, max_value=10 ** 30))

type_uris = st.one_of(
    st.sampled_from(
        ["https://proxy.brickchain.com/v1/" + name + ".json" for name in (
            "registration-request", "registration-response", "ping",
            "http-request", "http-response", "ws-request", "ws-response",
            "ws-message", "ws-teardown", "disconnect")]
        + ["https://proxy.brickchain.com/v1/http-response",
           "https://proxy.brickchain.com/v2/http-response.json",
           "HTTPS://PROXY.BRICKCHAIN.COM/V1/PING.JSON",
           "https://proxy.brickchain.com/v1/.json", "", "ping"]),
    st.text(max_size=60),
)

#: Field names worth retyping: the protocol's own.
FIELD_NAMES = ["@type", "@id", "@timestamp", "mandateToken", "session",
               "features", "keyID", "hostname", "url", "query", "headers",
               "method", "body", "status", "contentType", "ok", "error",
               "protocol", "messageType", "encoding", "code", "reason"]


@st.composite
def mutated_documents(draw, document):
    """
    C{document} (a JSON object) with one to four fields deleted, retyped,
    replaced by random values, or added.
    """
    doc = dict(document)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        keys = sorted(doc)
        action = draw(st.sampled_from(
            ["delete", "replace", "retype", "type", "add", "id"]))
        if action == "delete" and keys:
            del doc[draw(st.sampled_from(keys))]
        elif action in ("replace", "retype") and keys:
            key = draw(st.sampled_from(keys))
            if action == "retype":
                # The same value in another JSON type.
                value = doc[key]
                doc[key] = draw(st.sampled_from(
                    [[value], {"value": value}, str(value), 1, 0, -1, True,
                     None, 1.5, ""]))
            else:
                doc[key] = draw(field_values)
        elif action == "type":
            doc["@type"] = draw(type_uris)
        elif action == "id":
            doc["@id"] = draw(ids)
        else:
            name = draw(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=10)))
            doc[name] = draw(field_values)
    return doc


def _dumps(document):
    # The standard library writes integers of any size (orjson stops at
    # 64 bits) and non-ASCII either escaped or raw.
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


@st.composite
def mutated_vectors(draw):
    """
    A captured message with its fields mutated (L{mutated_documents}).
    """
    raw = VECTORS[draw(st.sampled_from(sorted(VECTORS)))]
    return _dumps(draw(mutated_documents(json.loads(raw))))


@st.composite
def byte_mutated_vectors(draw):
    """
    A captured message with bytes flipped, cut, inserted or removed.
    """
    data = bytearray(VECTORS[draw(st.sampled_from(sorted(VECTORS)))])
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        where = draw(st.integers(min_value=0, max_value=len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert", "remove"]))
        if action == "flip" and where < len(data):
            data[where] ^= draw(st.integers(min_value=1, max_value=255))
        elif action == "cut":
            del data[where:]
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[where:where + draw(st.integers(min_value=1, max_value=20))]
    return bytes(data)


headers = st.dictionaries(
    st.one_of(st.sampled_from(["Content-Type", "Set-Cookie", "Connection",
                               "Content-Length", "Transfer-Encoding", "Location",
                               "X-A", "content-type", "Keep-Alive"]),
              st.text(max_size=12)),
    st.one_of(st.text(max_size=40), st.lists(st.text(max_size=20), max_size=3),
              huge_strings),
    max_size=5,
)

statuses = st.one_of(st.integers(min_value=-1000, max_value=1000),
                     st.sampled_from([100, 101, 200, 204, 304, 418, 599, 600]),
                     st.integers(min_value=-2 ** 63, max_value=2 ** 63 - 1))


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@st.composite
def mandate_tokens(draw):
    """
    Tokens that must be refused: random text, random segments, and real
    tokens with their header, payload or signature mangled (including
    documents nested deeper than any parser's recursion limit).
    """
    kind = draw(st.sampled_from(["text", "segments", "header", "payload",
                                 "signature", "nested", "valid-elsewhere"]))
    if kind == "text":
        return draw(st.one_of(st.text(max_size=80), huge_strings))
    if kind == "segments":
        return ".".join(draw(st.lists(st.text(alphabet="AZaz09-_=.+/", max_size=30),
                                      min_size=1, max_size=5)))
    if kind == "valid-elsewhere":
        return ATTACKER_KEY.sign_mandate_token(
            draw(st.sampled_from(["http://elsewhere.test", BASE + ":1", "ftp://x",
                                  "http://proxy.test/..", ""])),
            now=NOW)
    token = ATTACKER_KEY.sign_mandate_token(BASE, now=NOW)
    header, payload, signature = token.split(".")
    if kind == "nested":
        depth = draw(st.integers(min_value=500, max_value=5000))
        nested = draw(st.sampled_from([b"[" * depth, b'{"a":' * depth,
                                       b"[" * depth + b"]" * depth]))
        if draw(st.booleans()):
            header = _b64url(nested)
        else:
            payload = _b64url(nested)
    elif kind == "header":
        document = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
        document = draw(mutated_documents(document))
        if "jwk" in document and isinstance(document["jwk"], dict) and draw(st.booleans()):
            document["jwk"] = draw(mutated_documents(document["jwk"]))
        header = _b64url(_dumps(document))
    elif kind == "payload":
        document = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        payload = _b64url(_dumps(draw(mutated_documents(document))))
    else:
        signature = draw(st.one_of(
            st.binary(max_size=80).map(_b64url), st.just(""), st.text(max_size=10)))
    return ".".join([header, payload, signature])


#: A reason travels only with a close code (the ws-close extension).
teardowns = st.one_of(
    st.builds(WSTeardown, id=ids),
    st.builds(WSTeardown, id=ids, code=st.integers(min_value=1000, max_value=4999),
              reason=st.text(max_size=30)),
)

#: Well-typed messages a client may send, with random field values.
client_messages = st.one_of(
    st.builds(HttpResponse, id=ids, status=statuses, headers=headers,
              content_type=st.text(max_size=30), body=st.binary(max_size=200)),
    st.builds(WSResponse, id=ids, ok=st.booleans(), error=st.text(max_size=30),
              protocol=st.one_of(st.none(), st.text(max_size=10))),
    st.builds(WSMessage, id=ids, message_type=st.sampled_from([1, 2]),
              body=st.one_of(st.text(max_size=50), bad_base64),
              encoding=st.one_of(st.none(), st.just("base64"), st.text(max_size=8))),
    teardowns,
    st.builds(Disconnect, id=ids),
    st.builds(RegistrationRequest, id=ids, mandate_token=mandate_tokens(),
              session=st.one_of(st.none(), st.text(max_size=10)),
              features=st.one_of(st.none(), st.lists(st.text(max_size=12), max_size=4))),
)

#: Well-typed messages a proxy may send, with random field values.
proxy_messages = st.one_of(
    st.builds(HttpRequest, id=ids, url=st.one_of(st.text(max_size=40), huge_strings),
              method=st.one_of(st.sampled_from(["GET", "POST", "HEAD", "PATCH",
                                                "CONNECT", "OPTIONS", ""]),
                               st.text(max_size=10)),
              query=st.text(max_size=30), headers=headers, body=st.binary(max_size=200)),
    st.builds(WSRequest, id=ids, url=st.text(max_size=40), query=st.text(max_size=20),
              headers=headers),
    st.builds(WSMessage, id=ids, message_type=st.sampled_from([1, 2]),
              body=st.one_of(st.text(max_size=50), bad_base64),
              encoding=st.one_of(st.none(), st.just("base64"), st.text(max_size=8))),
    teardowns,
    st.builds(RegistrationResponse, id=ids, key_id=st.text(max_size=60),
              hostname=st.one_of(st.none(), st.text(max_size=60)),
              features=st.one_of(st.none(), st.lists(
                  st.one_of(st.sampled_from(sorted(_features.SUPPORTED)),
                            st.text(max_size=10)), max_size=6))),
    st.just(Ping()),
)


def _mutated_messages(messages):
    """
    Well-typed messages encoded, then with their fields mutated.
    """
    return messages.map(lambda m: json.loads(encode(m))).flatmap(
        mutated_documents).map(_dumps)


def garbage(messages):
    """
    Everything a peer might send: random bytes and JSON, huge payloads,
    captured vectors mutated, and well-typed C{messages} with random values,
    mutated or not.
    """
    options = [
        st.binary(max_size=300),
        json_values.map(_dumps),
        huge_strings.map(lambda s: s.encode("utf-8")),
        type_uris.map(lambda uri: _dumps({"@type": uri, "@id": HEALTHY_REQUEST_ID})),
        messages.map(encode),
        _mutated_messages(messages),
    ]
    if VECTORS:
        options += [mutated_vectors(), byte_mutated_vectors(),
                    st.sampled_from(sorted(VECTORS.values()))]
    return st.one_of(options)


#: What an attacker sends the proxy: one payload and whether it goes in a
#: binary frame (which skips Autobahn's UTF-8 check).
to_proxy = st.tuples(
    st.one_of(garbage(client_messages), st.sampled_from([REGISTER, REGISTER_SESSION])),
    st.booleans(),
)

to_client = st.tuples(garbage(proxy_messages), st.booleans())


# -- observing -----------------------------------------------------------------------


class LogWatch:
    """
    Every log event while a test runs, from the global publisher.
    """

    def __init__(self, testcase):
        self.events = []
        self._observe = self.events.append
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def reset(self):
        del self.events[:]

    def ours(self):
        """
        The events our own code logged.
        """
        return [e for e in self.events
                if e.get("log_namespace", "").startswith("brickchain_proxy")]

    def failures(self):
        """
        The events that carry a failure (tracebacks), as readable text.
        """
        return ["{}: {}".format(e.get("log_format"), e["log_failure"].getTraceback())
                for e in self.events if "log_failure" in e]

    def about(self, text, level=None):
        return [e for e in self.ours()
                if text in (e.get("log_format") or "")
                and (level is None or e["log_level"] == level)]


class _FuzzTestCase(TestCase):
    """
    Helpers shared by the properties below.
    """

    def setUp(self):
        self.log = LogWatch(self)
        # A Deferred nobody handled reports its failure when collected:
        # usually at once (reference counting), at the latest here.
        self.addCleanup(self.assertNothingEscaped)
        self.addCleanup(gc.collect)

    def start_example(self):
        # What an earlier (failed) example left behind is not this one's.
        self.log.reset()
        self.flushLoggedErrors()

    def assertNothingEscaped(self):
        """
        Nothing was logged as a failure: no traceback, no unhandled error.
        """
        self.assertEqual(self.log.failures(), [])
        self.assertEqual(self.flushLoggedErrors(), [])


def _decodes(payload):
    try:
        decode(payload)
    except MessageError:
        return False
    return True


def _is_frame(payload):
    try:
        frames.decode(payload)
    except frames.FrameError:
        return False
    return True


def _valid_utf8(payload):
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- the codec ---------------------------------------------------------------------


class CodecFuzzTests(_FuzzTestCase):
    """
    L{decode} raises L{MessageError} or returns a message, and what it
    returns re-encodes to an equivalent document.
    """

    @explained
    @CODEC
    @given(st.one_of(garbage(client_messages), garbage(proxy_messages),
                     st.binary(max_size=2000), mandate_tokens().map(str.encode),
                     st.integers(min_value=1, max_value=5000).map(
                         lambda n: b"[" * n + b"]" * n)))
    def test_decode_raises_only_message_error(self, data):
        """decode() of any bytes returns a message or raises MessageError, nothing else."""
        try:
            message = decode(data)
        except MessageError:
            return
        self.assertIsNotNone(message)

    @explained
    @CODEC
    @given(st.one_of(garbage(client_messages), garbage(proxy_messages)))
    def test_decoded_messages_round_trip(self, data):
        """encode(decode(x)) decodes to the same message and encodes to the same bytes again."""
        try:
            message = decode(data)
        except MessageError:
            return
        encoded = encode(message)
        again = decode(encoded)
        if isinstance(message, WSTeardown) and message.code is None:
            # By design a reason only travels with a close code (ws-close).
            message = attr.evolve(message, reason="")
        self.assertEqual(again, message)
        self.assertEqual(encode(again), encoded)

    def test_mutated_vectors_are_refused_or_decoded_stably(self):
        """Captured v1 messages with fields or bytes mangled decode to a message that re-encodes stably, or raise MessageError."""
        require_vectors()

        @explained
        @CODEC
        @given(st.one_of(mutated_vectors(), byte_mutated_vectors()))
        def check(data):
            try:
                message = decode(data)
            except MessageError:
                return
            self.assertEqual(encode(decode(encode(message))), encode(message))

        check()

    @explained
    @CODEC
    @given(st.one_of(client_messages, proxy_messages))
    def test_well_typed_messages_round_trip(self, message):
        """Any well-typed message survives encode then decode unchanged."""
        self.assertEqual(decode(encode(message)), message)

    @explained
    @UNIT
    @given(mandate_tokens())
    def test_token_verifier_only_refuses(self, token):
        """A mangled mandate token is refused (RegistrationRefused), never crashes the verifier."""
        try:
            TokenVerifier(BASE).verify(token, now=NOW)
        except RegistrationRefused:
            return
        self.fail("accepted a mangled token: {!r}".format(token))


# -- the proxy's tunnel websocket --------------------------------------------------


_CLIENT_ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


class ProxyWorld:
    """
    A proxy's tunnel side on a L{Clock}: hub, factory, and a healthy
    registered client that has one request waiting for its answer
    (L{HEALTHY_REQUEST_ID}) and one visitor websocket open
    (L{HEALTHY_STREAM_ID}).
    """

    def __init__(self, testcase):
        self.testcase = testcase
        self.clock = Clock()
        self.clock.advance(NOW)
        self.directory = MemoryDirectory()
        self.hub = TunnelHub(self.clock, MemoryBus(self.clock), self.directory,
                             request_timeout=30.0, instance_id="proxy-1")
        self.factory = without_global_timers(TunnelServerFactory(
            self.hub, TokenVerifier(BASE), DOMAIN, self.clock,
            ping_interval=10.0, registration_timeout=10.0,
        ))
        self.net = MemoryConnections(self.clock)

        self.healthy_server, self.healthy = self.connect()
        self.healthy.send(self.registration(HEALTHY_KEY))
        self.net.flush()
        testcase.assertIs(self.hub.local[HEALTHY_KEY.client_id], self.healthy_server)
        self.reply = self.hub.request(
            HEALTHY_KEY.client_id, HEALTHY_REQUEST_ID,
            encode(HttpRequest(id=HEALTHY_REQUEST_ID, url="/", method="GET")))
        self.visitor = FakeVisitor()
        opened = self.hub.websockets.open(
            HEALTHY_KEY.client_id, HEALTHY_STREAM_ID,
            encode(WSRequest(id=HEALTHY_STREAM_ID, url="/ws")), self.visitor)
        self.net.flush()
        self.healthy.send(WSResponse(id=HEALTHY_STREAM_ID, ok=True))
        self.net.flush()
        testcase.assertTrue(testcase.successResultOf(opened).ok)
        del self.healthy.messages[:]

    def connect(self):
        client_factory = without_global_timers(
            WebSocketClientFactory(WS_URL, reactor=self.clock), client=True)
        client_factory.protocol = RawTunnelClient
        return self.net.connect(self.factory, client_factory)

    def registration(self, key, session=None):
        return RegistrationRequest(
            mandate_token=key.sign_mandate_token(BASE, now=self.clock.seconds()),
            session=session)

    def materialize(self, payload):
        """
        Fill in a placeholder registration.
        """
        if payload == REGISTER:
            return encode(self.registration(ATTACKER_KEY))
        if payload == REGISTER_SESSION:
            return encode(self.registration(ATTACKER_KEY, session="s"))
        return payload


class ProxyTunnelFuzzTests(_FuzzTestCase):
    """
    Malformed and hostile messages from one tunnel connection, at the
    proxy's L{TunnelServerProtocol}.
    """

    @explained
    @UNIT
    @given(register_first=st.booleans(),
           attack=st.lists(to_proxy, min_size=1, max_size=6))
    def test_hostile_connection_cannot_hurt_a_healthy_tunnel(self, register_first, attack):
        """Whatever one connection sends, the healthy tunnel's request and websocket are untouched and still answered."""
        self.start_example()
        world = ProxyWorld(self)
        server, attacker = world.connect()
        if register_first:
            attacker.send(world.materialize(REGISTER))
            world.net.flush()

        for payload, is_binary in attack:
            if attacker.state != attacker.STATE_OPEN:
                break
            payload = world.materialize(payload)
            registered = bool(server.client_ids)
            self.log.reset()
            attacker.sendMessage(payload, isBinary=is_binary)
            world.net.flush()
            self.assertNothingEscaped()
            if not is_binary and not _valid_utf8(payload):
                # Autobahn fails a text message that is not UTF-8 itself.
                self.assertEqual(attacker.closed[0], CLOSE_INVALID_PAYLOAD)
            elif not _decodes(payload):
                # Ignored, and said so; before a registration it is a refusal.
                self.assertEqual(
                    len(self.log.about("malformed message ignored", LogLevel.warn)), 1)
                if not registered:
                    self.assertEqual(attacker.closed[0], CLOSE_POLICY)
                    self.assertRaises(MessageError, decode, attacker.messages[-1])
            elif attacker.state == attacker.STATE_OPEN:
                # Handled or ignored: either way the proxy says something.
                self.assertNotEqual(self.log.ours(), [], payload)

        self.assertHealthyTunnelUntouched(world, server, attacker)
        self.assertHealthyTunnelServes(world)
        world.net.close_all()
        self.assertNothingLeft(world)
        self.assertNothingEscaped()

    @explained
    @UNIT
    @given(attack=st.lists(st.one_of(
        st.builds(HttpResponse, id=healthy_ids, status=statuses,
                  body=st.binary(max_size=20)),
        st.builds(WSResponse, id=healthy_ids, ok=st.booleans()),
        st.builds(WSMessage, id=healthy_ids, message_type=st.sampled_from([1, 2]),
                  body=st.text(max_size=10)),
        st.builds(WSTeardown, id=healthy_ids),
    ), min_size=1, max_size=8), register_first=st.booleans())
    def test_messages_with_the_healthy_tunnels_ids_are_ignored(self, attack, register_first):
        """Replies, frames and teardowns naming another tunnel's request or websocket never reach it."""
        self.start_example()
        world = ProxyWorld(self)
        server, attacker = world.connect()
        if register_first:
            attacker.send(world.materialize(REGISTER))
            world.net.flush()
        for message in attack:
            if attacker.state != attacker.STATE_OPEN:
                break
            attacker.send(message)
            world.net.flush()
        self.assertHealthyTunnelUntouched(world, server, attacker)
        self.assertHealthyTunnelServes(world)
        world.net.close_all()
        self.assertNothingLeft(world)
        self.assertNothingEscaped()

    def assertHealthyTunnelUntouched(self, world, server, attacker):
        """
        The healthy tunnel's request still waits, its websocket got nothing,
        and the hub holds exactly the connections that are open.
        """
        self.assertNoResult(world.reply)
        self.assertEqual(world.visitor.delivered, [])
        self.assertEqual(world.visitor.lost, [])
        self.assertEqual(len(world.hub.pending), 1)
        self.assertIn(HEALTHY_REQUEST_ID, world.hub.pending)
        self.assertEqual(set(world.hub.streams), {HEALTHY_STREAM_ID})
        self.assertEqual(world.healthy.messages, [])
        self.assertIsNone(world.healthy.closed)
        self.assertIs(world.hub.local[HEALTHY_KEY.client_id], world.healthy_server)
        holders = set(world.hub.local.values())
        if attacker.state == attacker.STATE_OPEN:
            self.assertEqual(world.factory.connections, {world.healthy_server, server})
            self.assertEqual({c for c, s in world.hub.local.items() if s is server},
                             server.client_ids)
        else:
            self.assertIsNotNone(attacker.closed)
            self.assertEqual(world.factory.connections, {world.healthy_server})
            self.assertEqual(holders, {world.healthy_server})

    def assertHealthyTunnelServes(self, world):
        """
        The healthy client answers its request and talks on its websocket,
        and a new request goes through too.
        """
        world.healthy.send(HttpResponse(id=HEALTHY_REQUEST_ID, status=200, body=b"healthy"))
        world.net.flush()
        self.assertEqual(self.successResultOf(world.reply).body, b"healthy")
        world.healthy.send(WSMessage(id=HEALTHY_STREAM_ID, message_type=1, body="hi"))
        world.net.flush()
        self.assertEqual([m.body for m in world.visitor.delivered], ["hi"])
        request = HttpRequest(url="/again", method="GET")
        reply = world.hub.request(HEALTHY_KEY.client_id, request.id, encode(request))
        world.net.flush()
        self.assertEqual([decode(m) for m in world.healthy.messages], [request])
        world.healthy.send(HttpResponse(id=request.id, status=201))
        world.net.flush()
        self.assertEqual(self.successResultOf(reply).status, 201)

    def assertNothingLeft(self, world):
        """
        Once every connection is closed: no tunnel, nothing pending, no
        stream, no timer.
        """
        self.assertEqual(world.hub.local, {})
        self.assertEqual(len(world.hub.pending), 0)
        self.assertEqual(world.hub.streams, {})
        self.assertEqual(world.factory.connections, set())
        self.assertEqual(world.clock.getDelayedCalls(), [])
        self.assertIsNone(
            self.successResultOf(world.directory.lookup(HEALTHY_KEY.client_id)))


# -- the client's tunnel websocket --------------------------------------------------


class RecordingForwarder:
    """
    Stands in for the client's L{LocalForwarder}: answers every request at
    once and remembers it.
    """

    timeout = 25.0
    max_body = 512000
    rewrite = LocalRewrite()
    endpoint = None  # the local service is reached by its URL
    recorder = NO_RECORDER
    tls = SYSTEM_TRUST  # how an https local service would be verified

    def __init__(self):
        self.requests = []

    def forward(self, message, features=frozenset()):
        self.requests.append(message)
        return succeed(HttpResponse(id=message.id, status=200,
                                    body=b"local answer"))


class ClientWorld:
    """
    A client's L{TunnelClientFactory} on a L{MemoryReactorClock} (local
    websockets try to connect there, and never get anywhere), connected to
    a L{FakeProxy}.
    """

    def __init__(self, testcase):
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.closes = []
        self.registrations = []
        self.forwarder = RecordingForwarder()
        self.factory = without_global_timers(TunnelClientFactory(
            WS_URL, BASE, HEALTHY_KEY, forwarder=self.forwarder,
            clock=self.clock, local_url="http://127.0.0.1:8080", ping_timeout=20.0,
            on_registered=lambda *args: self.registrations.append(args),
            on_closed=lambda *args: self.closes.append(args),
        ), client=True)
        # As the client service does: a refusal is followed through
        # on_closed, not through each protocol's registered Deferred.
        self.factory.consume_refusals = True
        proxy_factory = without_global_timers(
            WebSocketServerFactory(WS_URL, reactor=self.clock))
        proxy_factory.protocol = FakeProxy
        self.net = MemoryConnections(self.clock)
        self.proxy, self.client = self.net.connect(proxy_factory, self.factory)
        [request] = [decode(m) for m in self.proxy.messages]
        testcase.assertIsInstance(request, RegistrationRequest)
        self.request = request
        del self.proxy.messages[:]

    def accept(self, features=None):
        self.proxy.sendMessage(encode(RegistrationResponse(
            id=self.request.id, key_id=HEALTHY_KEY.client_id,
            hostname="{}.{}".format(HEALTHY_KEY.client_id, DOMAIN),
            features=features)), isBinary=False)
        self.net.flush()

    def materialize(self, payload):
        return payload.replace(REGISTRATION_ID.encode("ascii"),
                               self.request.id.encode("ascii"))


class ClientTunnelFuzzTests(_FuzzTestCase):
    """
    Malformed and hostile messages from the proxy, at the client's
    L{TunnelClientProtocol}.
    """

    @explained
    @UNIT
    @given(accept_first=st.booleans(),
           features=st.one_of(st.none(), st.lists(st.sampled_from(sorted(_features.SUPPORTED)),
                                                  unique=True)),
           attack=st.lists(to_client, min_size=1, max_size=6))
    def test_hostile_proxy_messages_are_refused_or_ignored(self, accept_first, features, attack):
        """Garbage from the proxy fails the registration or is ignored with a log line; the tunnel keeps answering."""
        self.start_example()
        world = ClientWorld(self)
        if accept_first:
            world.accept(features)
            self.assertEqual(len(world.registrations), 1)
        refused = False
        for payload, is_binary in attack:
            if world.client.state != world.client.STATE_OPEN:
                break
            payload = world.materialize(payload)
            registered_before = world.client.registration is not None
            streams_before = world.client.streams is not None
            self.log.reset()
            world.proxy.sendMessage(payload, isBinary=is_binary)
            world.net.flush()
            self.assertNothingEscaped()
            if not is_binary and not _valid_utf8(payload):
                # Autobahn fails a text message that is not UTF-8 itself.
                self.assertNotEqual(world.client.state, world.client.STATE_OPEN)
            elif is_binary and streams_before:
                # On a streams tunnel a binary message is a frame: a valid
                # one is acted on, anything else breaks the connection.
                if not _is_frame(payload):
                    self.assertEqual(len(self.log.about(
                        "bad stream frame from the proxy", LogLevel.warn)), 1)
                    self.assertNotEqual(world.client.state, world.client.STATE_OPEN)
            elif not _decodes(payload):
                if registered_before:
                    self.assertEqual(len(self.log.about(
                        "malformed message from the proxy ignored", LogLevel.warn)), 1)
                elif not refused:
                    self.assertEqual(len(self.log.about(
                        "refused the registration", LogLevel.error)), 1)
                    refused = True
        # At most one registration counts, only the one answering our own
        # request, and none after a refusal.
        self.assertLessEqual(len(world.registrations), 1)
        if refused:
            self.assertEqual(world.registrations, [])
        for _, response in world.registrations:
            self.assertEqual(response.id, world.request.id)
        if world.client.state == world.client.STATE_OPEN and not refused:
            if world.client.registration is None:
                world.accept(features)
            # The tunnel still answers a well-formed request, with its id.
            del world.proxy.messages[:]
            request = HttpRequest(url="/healthy", method="GET")
            world.proxy.sendMessage(encode(request), isBinary=False)
            world.net.flush()
            self.assertEqual(world.forwarder.requests[-1], request)
            answers = [decode(m) for m in world.proxy.messages]
            self.assertEqual([(a.id, a.status) for a in answers
                              if isinstance(a, HttpResponse)], [(request.id, 200)])
        world.net.close_all()
        world.net.flush()
        self.assertEqual(len(world.closes), 1)
        self.assertEqual(world.clock.getDelayedCalls(), [])
        self.assertNothingEscaped()


# -- the proxy's public side: a tunnel's answer to its visitor ----------------------


class AnsweringHub:
    """
    Stands in for the L{TunnelHub}: every request is answered at once with
    C{response} (under the request's id).
    """

    #: no tunnel is held here: every request takes the v1 path
    local = {}

    def tunnel_known(self, client_id):
        return succeed(True)

    def remote_tunnel(self, client_id):
        return succeed(None)  # not over streams: the v1 path

    def pick(self, client_id):
        return self.local.get(client_id)

    def __init__(self, response, features):
        self.response = response
        self.features = features

    def features_of(self, client_id):
        return self.features

    encoding_features = features_of

    class websockets:
        @staticmethod
        def count(client_id):
            return 0

    def request(self, client_id, message_id, raw):
        return succeed(attr.evolve(self.response, id=message_id))


class _NoLimit:
    def check(self, key):
        return succeed(None)

    def prune(self):
        return 0


class PublicResponseFuzzTests(_FuzzTestCase):
    """
    A tunnel's http-response, however odd, becomes a well-formed HTTP
    answer for its visitor.
    """

    @explained
    @UNIT
    @given(response=st.builds(
        HttpResponse, status=statuses, headers=headers,
        content_type=st.one_of(st.text(max_size=30), st.just("a\r\nInjected: yes")),
        body=st.binary(max_size=300)),
        method=st.sampled_from([b"GET", b"HEAD", b"POST"]),
        features=st.sampled_from([frozenset(), _features.SUPPORTED]))
    def test_any_tunnel_answer_is_a_well_formed_http_response(self, response, method, features):
        """The visitor gets one well-formed response: the tunnel's status or a 502, no injected header."""
        self.start_example()
        clock = Clock()
        site = build_site(DOMAIN, AnsweringHub(response, features), _NoLimit(),
                          Resource(), max_body=512000, request_timeout=30.0,
                          reactor=clock)
        channel = site.buildProtocol(_CLIENT_ADDRESS)
        transport = StringTransport(peerAddress=_CLIENT_ADDRESS)
        channel.makeConnection(transport)
        channel.dataReceived(
            method + b" /proxy/request/" + b"a" * 52 + b"/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 0\r\n\r\n")
        status, pairs, body = parse_response(transport.value(), method == b"HEAD")
        if 200 <= response.status <= 599:
            self.assertEqual(status, response.status)
            if method != b"HEAD" and status not in (204, 304):
                self.assertEqual(body, response.body)
        else:
            self.assertEqual(status, 502)
        self.assertNotIn(b"injected", [name for name, _ in pairs])
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertNothingEscaped()


# -- the client's local forwarder ------------------------------------------------------


class ForwarderFuzzTests(_FuzzTestCase):
    """
    Whatever http-request the proxy sends, the client's forwarder answers
    it with an http-response of the same id.
    """

    @explained
    @UNIT
    @given(request=st.builds(
        HttpRequest, id=ids,
        url=st.one_of(st.text(max_size=60), st.just("//evil.test/x"),
                      st.just("http://evil.test/"), st.just("/a b\r\nX: y")),
        method=st.one_of(st.sampled_from(["GET", "POST", "HEAD", "", "G T",
                                          "G\r\nT", "\u0100"]),
                         st.text(max_size=10)),
        query=st.text(max_size=30), headers=headers, body=st.binary(max_size=100)))
    def test_any_request_gets_an_answer_with_its_id(self, request):
        """A malformed http-request is answered (502 or 504 at worst), with its own id."""
        self.start_example()
        clock = MemoryReactorClock()
        forwarder = LocalForwarder(clock, "http://127.0.0.1:8080", timeout=5.0)
        d = forwarder.forward(request, _features.SUPPORTED)
        clock.advance(6)
        response = self.successResultOf(d)
        self.assertIsInstance(response, HttpResponse)
        self.assertEqual(response.id, request.id)
        for host, port, *_ in clock.tcpClients:
            self.assertEqual((host, port), ("127.0.0.1", 8080))
        self.successResultOf(forwarder.close())
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertNothingEscaped()


# -- end to end: a real proxy, tunnel client and local service under attack ---------

#: Placeholders in HTTP attacks: the healthy tunnel's path prefix and Host.
TUNNEL_PATH = b"@@tunnel@@"
TUNNEL_HOST = b"@@host@@"


@attr.s(frozen=True)
class HttpAttack:
    """
    Bytes a raw TCP attacker sends to the public side, and how it ends:
    C{"wait"} for an answer (then hang up), C{"abort"} at once, or
    C{"half-close"} (close its sending side, then wait).
    """

    data = attr.ib()
    ending = attr.ib()


_METHODS = st.one_of(
    st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS",
                     b"CONNECT", b"PATCH", b"TRACE", b"get", b"G(T", b"G\x00T",
                     b"", b"\xff\xfe"]),
    st.binary(min_size=1, max_size=8).filter(lambda b: not any(c in b for c in b" \r\n")),
)
_TARGETS = st.one_of(
    st.sampled_from([b"/", b"*", b"//", b"http://evil.test/x", b"/proxy/subscribe",
                     b"/proxy/request/", b"/proxy/request/nosuchtunnel/x",
                     TUNNEL_PATH, TUNNEL_PATH + b"/fuzz/a%00b", TUNNEL_PATH + b"/fuzz/%zz",
                     TUNNEL_PATH + b"/fuzz/../../x", TUNNEL_PATH + b"/fuzz/?" + b"q" * 9000]),
    st.binary(max_size=40).map(lambda b: TUNNEL_PATH + b"/fuzz/" + b.replace(b" ", b"%20")),
    st.binary(max_size=40),
)
_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0",
                             b"HTTP/1.1 extra", b"http/1.1", b"", b"HTTP/1.1\x00"])
_HEADER_LINES = st.one_of(
    st.sampled_from([b"Host: " + TUNNEL_HOST, b"Host:", b"Host: a b c", b"Host: [::1",
                     b"Host: " + b"x" * 70 + b".localhost", b" folded continuation",
                     b"No-Colon", b": empty-name", b"Content-Length: 5",
                     b"Content-Length: -1", b"Content-Length: 99999999999999999999",
                     b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked",
                     b"Connection: Upgrade", b"Upgrade: websocket", b"Expect: 100-continue",
                     b"X-Big: " + b"b" * 20000]),
    st.tuples(st.binary(max_size=20), st.binary(max_size=40)).map(
        lambda nv: nv[0].replace(b"\r", b"").replace(b"\n", b"") + b": "
        + nv[1].replace(b"\r", b"").replace(b"\n", b"")),
    st.binary(max_size=60).map(lambda b: b.replace(b"\r\n", b"")),
)


def _request(head, body=b""):
    return head + b"\r\n\r\n" + body


@st.composite
def http_attacks(draw):
    """
    Malformed HTTP for the public side: random request lines, bad headers,
    bad chunked encoding, impossible lengths, garbage bytes, requests cut
    short, bad websocket upgrades.
    """
    kind = draw(st.sampled_from(["bytes", "request-line", "headers", "chunked",
                                 "length", "half", "upgrade", "many-headers"]))
    if kind == "bytes":
        data = draw(st.binary(min_size=1, max_size=2000))
    elif kind == "request-line":
        line = b" ".join([draw(_METHODS), draw(_TARGETS), draw(_VERSIONS)])
        data = _request(line + b"\r\nHost: " + TUNNEL_HOST)
    elif kind == "headers":
        lines = draw(st.lists(_HEADER_LINES, min_size=1, max_size=6))
        data = _request(b"\r\n".join([b"GET " + TUNNEL_PATH + b"/fuzz/h HTTP/1.1"] + lines),
                        draw(st.binary(max_size=20)))
    elif kind == "many-headers":
        count = draw(st.integers(min_value=90, max_value=400))
        data = _request(b"\r\n".join([b"GET " + TUNNEL_PATH + b"/fuzz/m HTTP/1.1",
                                      b"Host: " + TUNNEL_HOST]
                                     + [b"X-%d: v" % (i,) for i in range(count)]))
    elif kind == "chunked":
        chunks = draw(st.lists(st.tuples(
            st.one_of(st.sampled_from([b"0", b"1", b"5", b"zz", b"-1", b"ffffffffffffffffff",
                                       b"5;ext=1", b" 5", b"", b"0x5", b"7fffffff"]),
                      st.integers(min_value=0, max_value=64).map(lambda n: b"%x" % n)),
            st.binary(max_size=40),
            st.sampled_from([b"\r\n", b"\n", b"", b"XX"])), max_size=5))
        body = b"".join(size + b"\r\n" + data + end for size, data, end in chunks)
        body += draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nTrailer: x\r\n\r\n", b"",
                                      b"0\r\n" + b"T: " + b"t" * 5000 + b"\r\n\r\n"]))
        data = _request(b"POST " + TUNNEL_PATH + b"/fuzz/c HTTP/1.1\r\nHost: " + TUNNEL_HOST
                        + b"\r\nTransfer-Encoding: chunked", body)
    elif kind == "length":
        lengths = draw(st.lists(st.sampled_from(
            [b"99999999999999999999", b"-1", b"1e3", b" 5", b"5, 6", b"abc", b"",
             b"10", b"600000", b"0x10", b"+5"]), min_size=1, max_size=2))
        head = b"POST " + TUNNEL_PATH + b"/fuzz/l HTTP/1.1\r\nHost: " + TUNNEL_HOST
        head += b"".join(b"\r\nContent-Length: " + value for value in lengths)
        if draw(st.booleans()):
            head += b"\r\nTransfer-Encoding: chunked"
        data = _request(head, draw(st.binary(max_size=30)))
    elif kind == "half":
        body = draw(st.binary(max_size=40))
        full = _request(b"POST " + TUNNEL_PATH + b"/fuzz/half HTTP/1.1\r\nHost: "
                        + TUNNEL_HOST + b"\r\nContent-Length: %d" % (len(body),), body)
        data = full[:draw(st.integers(min_value=1, max_value=len(full) - 1))]
    else:
        target = draw(st.sampled_from([TUNNEL_PATH + b"/ws", b"/proxy/subscribe"]))
        headers = [b"Host: " + TUNNEL_HOST, b"Upgrade: websocket", b"Connection: Upgrade",
                   b"Sec-WebSocket-Key: " + draw(st.sampled_from(
                       [b"dGhlIHNhbXBsZSBub25jZQ==", b"", b"short", b"!" * 24])),
                   b"Sec-WebSocket-Version: " + draw(st.sampled_from(
                       [b"13", b"8", b"", b"99", b"13, 8"]))]
        data = _request(b"\r\n".join([b"GET " + target + b" HTTP/1.1"] + headers),
                        draw(st.binary(max_size=200)))
    ending = draw(st.sampled_from(["wait", "abort", "half-close"]))
    return HttpAttack(data=data, ending=ending)


class RawAttacker(Protocol):
    """
    A TCP connection that sends what it is told and records the answer.
    """

    def __init__(self):
        self.received = b""
        self.closed = False

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed = True


class WebSocketAttacker(WebSocketClientProtocol):
    """
    A websocket client at C{/proxy/subscribe} that sends what it is told
    and records how the proxy closed it.
    """

    opened = False
    closed = False
    close_code = None

    def onOpen(self):
        self.opened = True

    def onClose(self, wasClean, code, reason):
        self.closed = True
        self.close_code = code


async def poll(predicate, seconds, interval=0.01):
    """
    Wait until C{predicate()} is true, for at most C{seconds}.

    @return: whether it became true.
    """
    for _ in range(int(seconds / interval) + 1):
        if predicate():
            return True
        await task.deferLater(reactor, interval, lambda: None)
    return bool(predicate())


class EndToEndFuzzTests(TestCase):
    """
    A healthy tunnel (real proxy, real client, real local service on
    loopback) is served while attackers hit the same proxy.
    """

    timeout = 120

    async def test_attackers_leave_the_healthy_tunnel_serving(self):
        """Malformed HTTP and hostile tunnel websockets never stop the healthy tunnel, nor leave state behind."""
        self.log = LogWatch(self)
        self.local = RecordingResource()
        local_url = start_local_service(self, self.local)
        self.tunnel = await start_tunnel(self, local_url, request_timeout=10.0,
                                         rate_limit=(100000, 1.0))
        self.http = visitor(self)
        self.healthy_paths = []
        self.attacker_transports = []
        self.examples = 0
        self.addCleanup(self.close_attackers)

        @explained
        @END_TO_END
        @given(http_attack=http_attacks(),
               ws_attack=st.lists(to_proxy, max_size=5))
        def example(http_attack, ws_attack):
            threads.blockingCallFromThread(
                reactor, lambda: defer.ensureDeferred(self.attack(http_attack, ws_attack)))

        # Hypothesis runs (and shrinks) in a thread; each example runs here
        # in the reactor thread while that thread waits for it.
        await threads.deferToThread(example)

        self.assertGreaterEqual(self.examples, 1)
        for path in self.healthy_paths:
            self.assertEqual(len(self.local.requests_to(path)), 1, path)

    async def attack(self, http_attack, ws_attack):
        self.examples += 1
        self.log.reset()
        self.assertEqual(self.flushLoggedErrors(), [])
        before = defer.ensureDeferred(self.healthy_request())
        await defer.gatherResults([
            defer.ensureDeferred(self.raw_http(http_attack)),
            defer.ensureDeferred(self.websocket(ws_attack)),
        ], consumeErrors=True).addErrback(lambda f: f.value.subFailure)
        await before
        await self.assertClean()
        await self.healthy_request()
        await self.assertClean()
        self.assertEqual(self.log.failures(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    async def healthy_request(self):
        """
        A GET through the healthy tunnel answers 200 with its own body.
        """
        path = "/echo/healthy-{}".format(len(self.healthy_paths))
        self.healthy_paths.append(path.encode("ascii"))
        response = await self.http.get(self.tunnel.path_url(path), timeout=10)
        body = await response.content()
        self.assertEqual(response.code, 200, body)
        self.assertEqual(json.loads(body)["uri"], path)

    async def assertClean(self):
        """
        The proxy holds the healthy tunnel only, with nothing pending.
        """
        proxy = self.tunnel.proxy
        client_id = self.tunnel.client_id

        def clean():
            connection = proxy.hub.local.get(client_id)
            return (len(proxy.hub.pending) == 0 and proxy.hub.streams == {}
                    and not proxy.public.in_flight
                    and set(proxy.hub.local) == {client_id}
                    and proxy.tunnel_factory.connections == {connection}
                    and len(open_transports(self.tunnel.proxy_transports)) == 1)

        if not await poll(clean, 10):
            self.fail("proxy state not clean: pending={} streams={} in_flight={} "
                      "local={} connections={} open={}".format(
                          len(proxy.hub.pending), proxy.hub.streams,
                          proxy.public.in_flight, sorted(proxy.hub.local),
                          len(proxy.tunnel_factory.connections),
                          len(open_transports(self.tunnel.proxy_transports))))
        self.assertIsNotNone(self.tunnel.client.protocol)

    def materialize_http(self, data):
        return data.replace(
            TUNNEL_PATH, b"/proxy/request/" + self.tunnel.client_id.encode("ascii")
        ).replace(TUNNEL_HOST, self.tunnel.host.encode("ascii"))

    async def raw_http(self, attack):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.tunnel.port)
        attacker = await endpoint.connect(Factory.forProtocol(RawAttacker))
        self.attacker_transports.append(attacker.transport)
        attacker.transport.write(self.materialize_http(attack.data))
        if attack.ending == "half-close":
            attacker.transport.loseWriteConnection()
        if attack.ending != "abort":
            # Answered and closed by the proxy, or still waiting for more.
            await poll(lambda: attacker.closed, 0.3)
        attacker.transport.abortConnection()
        if not await poll(lambda: attacker.closed, 5):
            self.fail("raw attacker connection did not close")

    async def websocket(self, attack):
        url = "ws://127.0.0.1:{}/proxy/subscribe".format(self.tunnel.port)
        factory = WebSocketClientFactory(url, reactor=reactor)
        factory.protocol = WebSocketAttacker
        # No Autobahn timers (they would run on txaio's reactor): every wait
        # here is bounded by poll().
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0,
                                   serverConnectionDropTimeout=0)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.tunnel.port)
        attacker = await endpoint.connect(factory)
        self.attacker_transports.append(attacker.transport)
        if not await poll(lambda: attacker.opened or attacker.closed, 5):
            self.fail("the proxy did not complete the websocket handshake")
        for payload, is_binary in attack:
            if attacker.state != attacker.STATE_OPEN:
                break
            if payload in (REGISTER, REGISTER_SESSION):
                payload = encode(RegistrationRequest(
                    mandate_token=ATTACKER_KEY.sign_mandate_token(self.tunnel.base_url),
                    session="s" if payload == REGISTER_SESSION else None))
            attacker.sendMessage(payload, isBinary=is_binary)
        if attacker.state == attacker.STATE_OPEN:
            # Anything the proxy had to say comes before the close.
            attacker.sendClose(CLOSE_NORMAL)
        if not await poll(lambda: attacker.closed, 5):
            self.fail("the proxy did not close the attacker's websocket")

    async def close_attackers(self):
        for transport in self.attacker_transports:
            if not transport.disconnected:
                transport.abortConnection()
        await poll(lambda: not open_transports(self.attacker_transports), 5)
