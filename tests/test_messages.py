"""
Tests for L{brickchain_proxy.messages}: the captured v1 vectors decode and
re-encode, optional fields are omitted as docs/protocol.rst says, and every kind of
malformed input raises L{MessageError}.
"""

import hashlib
import json
import os
import re
import uuid

from twisted.trial.unittest import SynchronousTestCase

from brickchain_proxy.messages import (
    TYPE_PREFIX,
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
    go_string,
    new_id,
    now_timestamp,
)
from tests import protocol_vectors

_ID = "aa51b512-1ad1-400e-8e15-1c75f44b082b"
_TS = "2026-11-24T15:27:02.481087069Z"


def _vector_index():
    """
    The vectors folder and its parsed C{index.json}
    (L{tests.protocol_vectors}: C{tests/vectors/} or C{$BRICKCHAIN_VECTORS}).
    """
    return protocol_vectors.vector_index()


def _raw_vector(name):
    """
    The exact wire bytes of the vector called C{name}.
    """
    return protocol_vectors.raw_vector(name)


def _doc(type_name, **fields):
    """
    Wire bytes of a message of type C{type_name} with C{@id} and the given
    fields (wire names; C{None} values are left out).
    """
    doc = {"@type": TYPE_PREFIX + type_name + ".json", "@timestamp": _TS,
           "@id": _ID}
    for key, value in fields.items():
        if value is None:
            doc.pop(key.replace("_", "@"), None)
        else:
            doc[key] = value
    return json.dumps(doc).encode("utf-8")


def _go_string_reference(data):
    """
    A slow, obviously-Go reference for L{go_string}: at each position take
    the one valid UTF-8 sequence starting there, else one U+FFFD for the byte
    (Go's C{utf8.DecodeRune} returning C{(RuneError, 1)}).
    """
    out = []
    i = 0
    while i < len(data):
        for size in (1, 2, 3, 4):
            try:
                char = data[i:i + size].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if len(char) == 1:
                out.append(char)
                i += size
                break
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


class VectorTests(SynchronousTestCase):
    """
    The messages captured from the Go implementation are understood and
    re-encoded to equivalent JSON.
    """

    def test_every_raw_vector_decodes_and_reencodes_equivalently(self):
        """Each raw vector decodes to its index type and re-encodes to equal JSON."""
        path, index = _vector_index()
        self.assertTrue(index)
        for name, entry in index.items():
            raw = (path / entry["raw_file"]).read_bytes()
            message = decode(raw)
            self.assertEqual(type(message).TYPE_URI, entry["type"], name)
            reencoded = encode(message)
            self.assertEqual(json.loads(reencoded), json.loads(raw), name)
            self.assertEqual(decode(reencoded), message, name)

    def test_raw_vectors_match_their_recorded_hash_and_size(self):
        """Each raw vector file still has the SHA-256 and size index.json records."""
        path, index = _vector_index()
        for name, entry in index.items():
            raw = (path / entry["raw_file"]).read_bytes()
            self.assertEqual(hashlib.sha256(raw).hexdigest(),
                             entry["payload_sha256"], name)
            self.assertEqual(len(raw), entry["payload_bytes"], name)

    def test_every_raw_file_is_listed_in_the_index(self):
        """No raw/*.txt vector escapes the walk because index.json omits it."""
        path, index = _vector_index()
        listed = {entry["raw_file"] for entry in index.values()}
        on_disk = {"raw/" + p.name for p in (path / "raw").glob("*.txt")}
        self.assertEqual(on_disk - listed, set())

    def test_pretty_vectors_decode_like_their_raw_form(self):
        """Each pretty <name>.json decodes to the same message as its raw bytes."""
        path, index = _vector_index()
        for name, entry in index.items():
            pretty = (path / (name + ".json")).read_bytes()
            raw = (path / entry["raw_file"]).read_bytes()
            self.assertEqual(decode(pretty), decode(raw), name)

    def test_http_request_binary_body_is_300_bytes(self):
        """The binary-body http-request carries its 300 body bytes."""
        message = decode(_raw_vector("http-request.binary-body"))
        self.assertIsInstance(message, HttpRequest)
        self.assertEqual(len(message.body), 300)
        self.assertEqual(message.method, "PUT")
        self.assertEqual(message.query, "")

    def test_http_response_binary_body_is_every_byte_value(self):
        """The binary-body http-response decodes to bytes 0..255."""
        message = decode(_raw_vector("http-response.binary-body"))
        self.assertIsInstance(message, HttpResponse)
        self.assertEqual(message.body, bytes(range(256)))
        self.assertEqual(message.status, 200)
        self.assertEqual(message.content_type, "application/octet-stream")

    def test_go_escaped_ampersands_in_query_are_decoded(self):
        """Go's \\u0026 escapes in the get-query vector decode to plain '&'."""
        message = decode(_raw_vector("http-request.get-query"))
        self.assertEqual(message.query, "a=1&b=two%20x&a=3")
        self.assertEqual(message.body, b"")

    def test_ping_encodes_to_the_exact_v1_bytes(self):
        """A Ping encodes byte for byte as the raw ping vector, newline included."""
        raw = _raw_vector("ping")
        self.assertEqual(encode(Ping()), raw)
        self.assertEqual(
            encode(Ping()),
            b'{"@type":"https://proxy.brickchain.com/v1/ping.json"}\n')
        self.assertEqual(decode(raw), Ping())

    def test_registration_response_fields(self):
        """The registration-response vector yields keyID and hostname, no features."""
        message = decode(_raw_vector("registration-response"))
        self.assertEqual(
            message.key_id, "q7x3nielm25i3cnuuswjf5yhjqmpkahiswmfayccyeaf2sehlw6q")
        self.assertEqual(message.hostname, message.key_id + ".example.test")
        self.assertIsNone(message.features)

    def test_v1_binary_payload_is_read_as_go_does(self):
        """Without binary-ws, invalid UTF-8 bytes become U+FFFD as in the vector."""
        vector = decode(_raw_vector("ws-message.binary"))
        self.assertEqual(vector.body, "\x00\x01\x02\x7f" + "\ufffd" * 4)
        message = WSMessage.from_payload(
            vector.id, b"\x00\x01\x02\x7f\xff\xfe\xfd\xfc", is_binary=True,
            binary_ws=False, timestamp=vector.timestamp)
        self.assertEqual(message, vector)
        self.assertEqual(json.loads(encode(message)),
                         json.loads(_raw_vector("ws-message.binary")))

    def test_v1_binary_payload_without_del_byte(self):
        """The bytes 00 01 02 ff fe fd fc read as 00 01 02 and four U+FFFD."""
        message = WSMessage.from_payload(
            _ID, b"\x00\x01\x02\xff\xfe\xfd\xfc", is_binary=True, binary_ws=False)
        self.assertEqual(message.body, "\x00\x01\x02" + "\ufffd" * 4)
        self.assertEqual(message.message_type, 2)
        self.assertIsNone(message.encoding)


class WSMessagePayloadTests(SynchronousTestCase):
    """
    L{WSMessage.from_payload} and L{WSMessage.payload}.
    """

    def test_binary_ws_round_trips_random_bytes_exactly(self):
        """Under binary-ws, random payloads survive encode/decode byte for byte."""
        for size in (0, 1, 1000, 400000):
            payload = os.urandom(size)
            message = WSMessage.from_payload(
                _ID, payload, is_binary=True, binary_ws=True)
            self.assertEqual(message.message_type, 2)
            self.assertEqual(message.encoding, "base64")
            wire = encode(message)
            self.assertEqual(json.loads(wire)["encoding"], "base64")
            self.assertEqual(decode(wire).payload(), payload, size)

    def test_text_payload_round_trips(self):
        """A text message keeps its UTF-8 text as body and gives it back."""
        payload = "hello text \u2713".encode("utf-8")
        message = WSMessage.from_payload(
            _ID, payload, is_binary=False, binary_ws=True, timestamp=_TS)
        self.assertEqual(message, WSMessage(
            id=_ID, timestamp=_TS, message_type=1, body="hello text \u2713"))
        self.assertEqual(decode(encode(message)).payload(), payload)
        self.assertNotIn(b"encoding", encode(message))

    def test_from_payload_fills_timestamp(self):
        """Without a timestamp, from_payload stamps the current time."""
        message = WSMessage.from_payload(_ID, b"x", False, False)
        self.assertTrue(message.timestamp.endswith("Z"))
        self.assertEqual(message.id, _ID)

    def test_go_string_matches_go_on_tricky_sequences(self):
        """Truncated, overlong and surrogate sequences get one U+FFFD per bad byte."""
        cases = [
            b"\xe2\x9cA",  # truncated 3-byte sequence: Go writes two U+FFFD
            b"\xf0\x9f\x98",  # truncated 4-byte sequence
            b"\xc0\xaf",  # overlong '/'
            b"\xed\xa0\x80",  # UTF-16 surrogate
            b"\xf4\x90\x80\x80",  # beyond U+10FFFF
            b"\xef\xbf\xbd",  # a real U+FFFD passes unchanged
            b"ok \xe2\x9c\x93 \xff",
        ]
        for data in cases:
            self.assertEqual(go_string(data), _go_string_reference(data), data)
        self.assertEqual(go_string(b"\xe2\x9cA"), "\ufffd\ufffdA")

    def test_go_string_matches_reference_on_random_bytes(self):
        """On random bytes go_string agrees with a byte-by-byte Go reference."""
        for _ in range(50):
            data = os.urandom(300)
            self.assertEqual(go_string(data), _go_string_reference(data))

    def test_payload_with_invalid_base64_raises(self):
        """A base64 ws-message whose body is not base64 fails in payload()."""
        message = WSMessage(id=_ID, message_type=2, body="!!", encoding="base64")
        self.assertRaises(MessageError, message.payload)

    def test_payload_with_unknown_encoding_raises(self):
        """An encoding other than base64 fails in payload()."""
        message = WSMessage(id=_ID, message_type=2, body="AA==", encoding="hex")
        self.assertRaises(MessageError, message.payload)


class OptionalFieldTests(SynchronousTestCase):
    """
    Optional fields are omitted exactly where docs/protocol.rst says.
    """

    def test_http_request_omits_empty_query_but_keeps_empty_body(self):
        """An http-request without query has no 'query' key and body ''."""
        doc = json.loads(encode(HttpRequest(
            url="/", query="", headers={}, method="GET", body=b"")))
        self.assertNotIn("query", doc)
        self.assertEqual(doc["body"], "")
        self.assertEqual(doc["headers"], {})

    def test_http_response_always_has_its_four_fields(self):
        """An empty http-response still carries headers, contentType, status, body."""
        doc = json.loads(encode(HttpResponse(status=204)))
        self.assertEqual(
            {k: doc[k] for k in ("headers", "contentType", "status", "body")},
            {"headers": {}, "contentType": "", "status": 204, "body": ""})

    def test_ws_request_omits_empty_query(self):
        """A ws-request with no query string has no 'query' key."""
        doc = json.loads(encode(WSRequest(url="/ws", headers={"X": "1"})))
        self.assertNotIn("query", doc)
        self.assertEqual(json.loads(encode(WSRequest(url="/ws", query="a=1")))[
            "query"], "a=1")

    def test_ws_response_omits_empty_error(self):
        """A ws-response carries 'error' only when there is one."""
        self.assertNotIn("error", json.loads(encode(WSResponse(ok=True))))
        doc = json.loads(encode(WSResponse(ok=False, error="refused")))
        self.assertEqual((doc["ok"], doc["error"]), (False, "refused"))

    def test_registration_messages_omit_unset_optionals(self):
        """session, hostname and features are absent when None."""
        request = json.loads(encode(RegistrationRequest(mandate_token="t")))
        self.assertNotIn("session", request)
        self.assertNotIn("features", request)
        response = json.loads(encode(RegistrationResponse(key_id="k")))
        self.assertNotIn("hostname", response)
        self.assertNotIn("features", response)

    def test_registration_extensions_round_trip(self):
        """session and features survive an encode/decode round trip."""
        request = RegistrationRequest(
            mandate_token="t", session="s", features=["binary-ws", "multi-header"])
        self.assertEqual(decode(encode(request)), request)
        response = RegistrationResponse(key_id="k", hostname="k.example.test",
                                        features=["binary-ws"])
        self.assertEqual(decode(encode(response)), response)
        self.assertEqual(json.loads(encode(response))["features"], ["binary-ws"])

    def test_missing_timestamp_decodes_as_empty_and_is_omitted(self):
        """A message without @timestamp decodes with '' and encodes without it."""
        message = decode(_doc("ws-teardown", _timestamp=None))
        self.assertEqual(message, WSTeardown(id=_ID, timestamp=""))
        self.assertNotIn(b"@timestamp", encode(message))

    def test_unknown_fields_are_ignored(self):
        """Fields a receiver does not know are ignored."""
        message = decode(_doc("ws-response", ok=True, extra={"a": [1]}))
        self.assertEqual(message, WSResponse(id=_ID, timestamp=_TS, ok=True))

    def test_multi_valued_headers_round_trip(self):
        """Header values may be lists of strings and stay as given."""
        headers = {"Set-Cookie": ["a=1", "b=2"], "Content-Type": "text/plain"}
        message = HttpResponse(status=200, headers=headers, body=b"hi")
        self.assertEqual(decode(encode(message)).headers, headers)

    def test_null_headers_and_body_decode_as_empty(self):
        """Go's null for a nil map or byte slice decodes as empty."""
        message = decode(
            b'{"@type":"https://proxy.brickchain.com/v1/http-response.json",'
            b'"@id":"x","headers":null,"contentType":"","status":200,"body":null}')
        self.assertEqual((message.headers, message.body), ({}, b""))

    def test_decode_accepts_str(self):
        """decode takes a str document as well as bytes."""
        self.assertEqual(decode(_doc("disconnect").decode("utf-8")),
                         Disconnect(id=_ID, timestamp=_TS))


class ConstructionTests(SynchronousTestCase):
    """
    Building messages in code, and the id and timestamp helpers.
    """

    def test_http_request_fills_id_and_timestamp(self):
        """HttpRequest built from its fields alone gets a UUID id and a timestamp."""
        message = HttpRequest(url="/", query="", headers={}, method="GET", body=b"")
        self.assertEqual(str(uuid.UUID(message.id)), message.id)
        self.assertTrue(message.timestamp.endswith("Z"))

    def test_new_id_is_a_random_uuid4(self):
        """new_id returns distinct version-4 UUID strings."""
        first, second = new_id(), new_id()
        self.assertNotEqual(first, second)
        self.assertEqual(uuid.UUID(first).version, 4)

    def test_now_timestamp_is_rfc3339_utc_like_go(self):
        """now_timestamp has at most 9 fraction digits, no trailing zero, and Z."""
        pattern = re.compile(
            r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z\Z")
        for _ in range(20):
            self.assertTrue(pattern.match(now_timestamp()))

    def test_encode_rejects_non_messages(self):
        """encode refuses an object that is not a protocol message."""
        self.assertRaises(TypeError, encode, {"@type": "x"})

    def test_encode_of_unencodable_value_raises_message_error(self):
        """A body that is not bytes fails to encode with MessageError."""
        self.assertRaises(MessageError, encode,
                          HttpResponse(status=200, body="not bytes"))


class MalformedInputTests(SynchronousTestCase):
    """
    Every kind of malformed message raises L{MessageError}, and only that.
    """

    cases = [
        ("empty", b""),
        ("truncated", b"{"),
        ("array", b"[]"),
        ("null", b"null"),
        ("string", b'"x"'),
        ("invalid utf-8", b'{"@type":"\xff"}'),
        ("missing @type", b'{"@id":"x"}'),
        ("unknown @type", b'{"@type":"https://proxy.brickchain.com/v1/nope.json"}'),
        ("@type not a string", b'{"@type":["x"]}'),
        ("@type a number", b'{"@type":5}'),
        ("missing @id", _doc("disconnect", _id=None)),
        ("@id not a string", _doc("ws-teardown").replace(
            ('"%s"' % (_ID,)).encode("ascii"), b"7")),
        ("@timestamp not a string", _doc("disconnect").replace(
            ('"%s"' % (_TS,)).encode("ascii"), b"1")),
        ("http-request missing method", _doc(
            "http-request", url="/", headers={}, body="")),
        ("http-request missing body", _doc(
            "http-request", url="/", headers={}, method="GET")),
        ("status as string", _doc(
            "http-response", headers={}, contentType="", status="200", body="")),
        ("status as true", _doc(
            "http-response", headers={}, contentType="", status=True, body="")),
        ("status as float", _doc(
            "http-response", headers={}, contentType="", status=200.0, body="")),
        ("status missing", _doc(
            "http-response", headers={}, contentType="", body="")),
        ("ok as yes", _doc("ws-response", ok="yes")),
        ("ok missing", _doc("ws-response")),
        ("headers as list", _doc(
            "http-request", url="/", headers=[], method="GET", body="")),
        ("header value as int", _doc(
            "http-request", url="/", headers={"X": 1}, method="GET", body="")),
        ("header list holding int", _doc(
            "ws-request", url="/", headers={"X": ["a", 2]})),
        ("body invalid base64", _doc(
            "http-request", url="/", headers={}, method="GET", body="AAE")),
        ("body non-ascii", _doc(
            "http-response", headers={}, contentType="", status=200,
            body="\u00e9")),
        ("messageType 3", _doc("ws-message", messageType=3, body="x")),
        ("messageType true", _doc("ws-message", messageType=True, body="x")),
        ("messageType missing", _doc("ws-message", body="x")),
        ("ws-message body missing", _doc("ws-message", messageType=1)),
        ("registration-request mandateToken 5", _doc(
            "registration-request", mandateToken=5)),
        ("registration-request features not a list", _doc(
            "registration-request", mandateToken="t", features="binary-ws")),
        ("registration-response features holding null", _doc(
            "registration-response", keyID="k", features=["a", None])),
        ("registration-response missing keyID", _doc(
            "registration-response", hostname="h")),
        ("ws-request url missing", _doc("ws-request", headers={})),
        ("lone surrogate escape", b'{"@type":"\\ud800"}'),
        ("not bytes at all", 12),
    ]

    def test_malformed_messages_raise_message_error(self):
        """Each malformed input in the table raises MessageError and nothing else."""
        for name, data in self.cases:
            try:
                self.assertRaises(MessageError, decode, data)
            except self.failureException as e:
                self.fail("%s: %s" % (name, e))

    def test_message_error_is_a_value_error(self):
        """MessageError subclasses ValueError, so generic handlers catch it."""
        self.assertTrue(issubclass(MessageError, ValueError))

    def test_error_names_the_message_type_and_field(self):
        """The error text says which message type and field was wrong."""
        error = self.assertRaises(MessageError, decode, _doc(
            "http-request", url="/", headers={}, body=""))
        self.assertIn("http-request", str(error))
        self.assertIn("method", str(error))
