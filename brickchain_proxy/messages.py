"""
The wire documents of the Brickchain tunneling protocol (docs/protocol.rst).

Every message is one JSON object in one websocket text message, named by its
C{@type} URI.  L{decode} turns the bytes of such a message into one of the
classes below and L{encode} turns one back into bytes.  Both sit on the hot
path of the proxy, so each does exactly one C{orjson} call, picks the per-type
function from a dict, and checks field types with C{type(value) is str}-style
tests rather than any schema machinery.

Field names follow the wire names in Python spelling (C{mandateToken} is
C{mandate_token}, C{@id} is C{id}).  Timestamps are kept as the string that
was received, so a decoded message re-encodes to the same document.  Bodies
of HTTP messages are L{bytes}, carried as standard base64 on the wire.

Anything malformed raises L{MessageError} and nothing else.
"""

import binascii
import codecs
import time
import uuid
from typing import Dict, List, Optional, Union

import attr
import orjson

TYPE_PREFIX = "https://proxy.brickchain.com/v1/"

HeaderValue = Union[str, List[str]]
Headers = Dict[str, HeaderValue]

# WebSocket opcodes (RFC 6455), as carried in ws-message's messageType.
TEXT = 1
BINARY = 2

# The value of ws-message's "encoding" under the negotiated binary-ws feature.
BASE64 = "base64"


class MessageError(ValueError):
    """
    A message could not be decoded or encoded: invalid JSON or UTF-8, not a
    JSON object, a missing or unknown C{@type}, a missing required field, a
    field of the wrong type, or invalid base64.
    """


def new_id():
    """
    A fresh message id: a random UUID in its canonical string form.

    @rtype: L{str}
    """
    return str(uuid.uuid4())


def now_timestamp():
    """
    The current time in the RFC 3339 UTC form Go writes: nanoseconds with
    trailing zeros trimmed (no fraction at all on a whole second) and C{Z},
    e.g. C{2026-11-24T15:14:31.624252637Z}.

    @rtype: L{str}
    """
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if nanoseconds:
        return "%s.%sZ" % (whole, ("%09d" % nanoseconds).rstrip("0"))
    return whole + "Z"


def _go_replace(error):
    """
    Codec error handler that replaces invalid UTF-8 the way Go's
    C{encoding/json} does: one U+FFFD for every byte that does not start a
    valid sequence.

    Python reports an ill-formed sequence as its maximal valid prefix (a lead
    byte and the continuation bytes that could follow it); Go rejects the lead
    byte and then each continuation byte on its own, so each byte of the
    reported range becomes one U+FFFD.
    """
    if isinstance(error, UnicodeDecodeError):
        return "\ufffd" * (error.end - error.start), error.end
    raise error


_GO_REPLACE = "brickchain-go-replace"
codecs.register_error(_GO_REPLACE, _go_replace)


def go_string(data):
    """
    Bytes read as a string exactly as Go's JSON encoder writes C{string(data)}:
    valid UTF-8 unchanged, every invalid byte replaced by U+FFFD.

    @type data: L{bytes}
    @rtype: L{str}
    """
    return data.decode("utf-8", _GO_REPLACE)


try:
    # SIMD base64: 100 KB in ~2 µs instead of ~130 µs with binascii, and as
    # strict as Go's decoder (no characters outside the alphabet, no
    # stray padding).
    import pybase64 as _pybase64
except ImportError:  # pragma: no cover - the fallback is binascii
    _pybase64 = None


if _pybase64 is not None:
    def _b64encode(data):
        return _pybase64.b64encode(data).decode("ascii")

    def _b64decode(text, what):
        try:
            return _pybase64.b64decode(text, validate=True)
        except ValueError as e:  # binascii.Error, or non-ASCII text
            raise MessageError("%s is not valid base64: %s" % (what, e)) from None
else:
    def _b64encode(data):
        return binascii.b2a_base64(data, newline=False).decode("ascii")

    def _b64decode(text, what):
        try:
            return binascii.a2b_base64(text, strict_mode=True)
        except ValueError as e:  # binascii.Error, or non-ASCII text
            raise MessageError("%s is not valid base64: %s" % (what, e)) from None


class _Message:
    """
    Mixin for every message that has C{@id} and C{@timestamp}.
    """

    __slots__ = ()


def _message(cls):
    return attr.s(slots=True, auto_attribs=True, kw_only=True)(cls)


def _id_field():
    return attr.ib(factory=new_id)


def _timestamp_field():
    return attr.ib(factory=now_timestamp)


@_message
class RegistrationRequest(_Message):
    """
    client -> proxy: register a tunnel with a mandate token (a compact JWS).
    C{session}, when set, derives a different client id from the same key;
    C{features} lists the extensions the client offers.
    """

    TYPE_URI = TYPE_PREFIX + "registration-request.json"

    mandate_token: str
    session: Optional[str] = None
    features: Optional[List[str]] = None
    id: str = _id_field()
    timestamp: str = _timestamp_field()


@_message
class RegistrationResponse(_Message):
    """
    proxy -> client: the tunnel is registered.  C{id} is the request's id,
    C{key_id} the client id; C{features} the extensions in use on this
    tunnel (L{None}: pure v1).
    """

    TYPE_URI = TYPE_PREFIX + "registration-response.json"

    key_id: str
    hostname: Optional[str] = None
    features: Optional[List[str]] = None
    id: str = _id_field()
    timestamp: str = _timestamp_field()


@_message
class Ping:
    """
    proxy -> client: keep-alive.  Has no id and no timestamp.
    """

    TYPE_URI = TYPE_PREFIX + "ping.json"


@_message
class HttpRequest(_Message):
    """
    proxy -> client: a public HTTP request to forward to the local service.
    C{query} is the raw query string (C{""}: none).
    """

    TYPE_URI = TYPE_PREFIX + "http-request.json"

    url: str
    method: str
    query: str = ""
    headers: Headers = attr.ib(factory=dict)
    body: bytes = b""
    id: str = _id_field()
    timestamp: str = _timestamp_field()


@_message
class HttpResponse(_Message):
    """
    client -> proxy: the local service's answer to the L{HttpRequest} with
    the same C{id}.
    """

    TYPE_URI = TYPE_PREFIX + "http-response.json"

    status: int
    headers: Headers = attr.ib(factory=dict)
    content_type: str = ""
    body: bytes = b""
    id: str = _id_field()
    timestamp: str = _timestamp_field()


@_message
class WSRequest(_Message):
    """
    proxy -> client: a visitor opens a websocket; C{id} becomes the
    connection id.
    """

    TYPE_URI = TYPE_PREFIX + "ws-request.json"

    url: str
    query: str = ""
    headers: Headers = attr.ib(factory=dict)
    id: str = _id_field()
    timestamp: str = _timestamp_field()


@_message
class WSResponse(_Message):
    """
    client -> proxy: whether the local websocket for connection C{id} opened.
    """

    TYPE_URI = TYPE_PREFIX + "ws-response.json"

    ok: bool
    error: str = ""
    #: the subprotocol the local service chose (the C{ws-subprotocol}
    #: extension; omitted on the wire when None).
    protocol: Optional[str] = None
    id: str = _id_field()
    timestamp: str = _timestamp_field()


@_message
class WSMessage(_Message):
    """
    Both ways: one websocket message on connection C{id}.

    C{message_type} is the RFC 6455 opcode (1 text, 2 binary).  C{body} is
    the wire string: the payload itself, or its base64 when C{encoding} is
    C{"base64"} (the C{binary-ws} feature).  Use L{from_payload} and
    L{payload} rather than reading C{body} directly.
    """

    TYPE_URI = TYPE_PREFIX + "ws-message.json"

    message_type: int
    body: str
    encoding: Optional[str] = None
    id: str = _id_field()
    timestamp: str = _timestamp_field()

    @classmethod
    def from_payload(cls, id, payload, is_binary, binary_ws, timestamp=None):
        """
        Wrap one websocket message's payload.

        @param id: the connection id.
        @param payload: the message's bytes.
        @param is_binary: whether it arrived as a binary message.
        @param binary_ws: whether the tunnel negotiated C{binary-ws}; without
            it a binary payload is read as a string the way v1 (Go) does,
            so bytes that are not UTF-8 become U+FFFD.
        @param timestamp: the C{@timestamp}; L{None} for now.
        @rtype: L{WSMessage}
        """
        if timestamp is None:
            timestamp = now_timestamp()
        if not is_binary:
            # Text messages are valid UTF-8 (RFC 6455); replace like Go if not.
            return cls(id=id, timestamp=timestamp, message_type=TEXT,
                       body=payload.decode("utf-8", _GO_REPLACE))
        if binary_ws:
            return cls(id=id, timestamp=timestamp, message_type=BINARY,
                       body=_b64encode(payload), encoding=BASE64)
        return cls(id=id, timestamp=timestamp, message_type=BINARY,
                   body=payload.decode("utf-8", _GO_REPLACE))

    def payload(self):
        """
        The message's bytes: C{body} base64-decoded under C{"base64"}
        encoding, else C{body} as UTF-8.

        @raise MessageError: invalid base64, or an unknown encoding.
        @rtype: L{bytes}
        """
        if self.encoding is None:
            return self.body.encode("utf-8")
        if self.encoding == BASE64:
            return _b64decode(self.body, "ws-message body")
        raise MessageError("unknown ws-message encoding %r" % (self.encoding,))


@_message
class WSTeardown(_Message):
    """
    Both ways: the sender has closed its end of websocket connection C{id}.
    """

    TYPE_URI = TYPE_PREFIX + "ws-teardown.json"

    #: the websocket close code and reason (the C{ws-close} extension;
    #: omitted on the wire when None / empty).
    code: Optional[int] = None
    reason: str = ""
    id: str = _id_field()
    timestamp: str = _timestamp_field()


@_message
class Disconnect(_Message):
    """
    client -> proxy: the client is leaving; drop its tunnels now.
    """

    TYPE_URI = TYPE_PREFIX + "disconnect.json"

    id: str = _id_field()
    timestamp: str = _timestamp_field()


# --- decoding ---------------------------------------------------------------

_MISSING = object()

_JSON_TYPE_NAMES = {
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _wrong_type(key, expected, value):
    return MessageError("field %r must be %s, not %s" % (
        key, expected, _JSON_TYPE_NAMES.get(type(value), type(value).__name__)))


def _required_str(doc, key):
    value = doc.get(key, _MISSING)
    if type(value) is str:
        return value
    if value is _MISSING:
        raise MessageError("missing field %r" % (key,))
    raise _wrong_type(key, "a string", value)


def _optional_str(doc, key, default):
    """
    A string field that may be absent (or null, which Go decodes as absent).
    """
    value = doc.get(key)
    if type(value) is str:
        return value
    if value is None:
        return default
    raise _wrong_type(key, "a string", value)


def _features(doc):
    value = doc.get("features")
    if value is None:
        return None
    if type(value) is list:
        for item in value:
            if type(item) is not str:
                raise MessageError("field 'features' must hold strings only")
        return value
    raise _wrong_type("features", "an array of strings", value)


def _headers(doc):
    value = doc.get("headers", _MISSING)
    if type(value) is dict:
        for header_value in value.values():
            if type(header_value) is not str:
                if type(header_value) is not list:
                    raise MessageError(
                        "header values must be strings or arrays of strings")
                for item in header_value:
                    if type(item) is not str:
                        raise MessageError(
                            "header value arrays must hold strings only")
        return value
    if value is None:
        # Go writes a nil map as null.
        return {}
    if value is _MISSING:
        raise MessageError("missing field 'headers'")
    raise _wrong_type("headers", "an object", value)


def _body(doc):
    value = doc.get("body", _MISSING)
    if type(value) is str:
        return _b64decode(value, "field 'body'")
    if value is None:
        # Go writes a nil []byte as null.
        return b""
    if value is _MISSING:
        raise MessageError("missing field 'body'")
    raise _wrong_type("body", "a base64 string", value)


def _decode_registration_request(doc):
    return RegistrationRequest(
        id=_required_str(doc, "@id"),
        timestamp=_optional_str(doc, "@timestamp", ""),
        mandate_token=_required_str(doc, "mandateToken"),
        session=_optional_str(doc, "session", None),
        features=_features(doc),
    )


def _decode_registration_response(doc):
    return RegistrationResponse(
        id=_required_str(doc, "@id"),
        timestamp=_optional_str(doc, "@timestamp", ""),
        key_id=_required_str(doc, "keyID"),
        hostname=_optional_str(doc, "hostname", None),
        features=_features(doc),
    )


_PING = Ping()


def _decode_ping(doc):
    return _PING


def _decode_http_request(doc):
    return HttpRequest(
        id=_required_str(doc, "@id"),
        timestamp=_optional_str(doc, "@timestamp", ""),
        url=_required_str(doc, "url"),
        query=_optional_str(doc, "query", ""),
        headers=_headers(doc),
        method=_required_str(doc, "method"),
        body=_body(doc),
    )


def _decode_http_response(doc):
    status = doc.get("status", _MISSING)
    if type(status) is not int:
        if status is _MISSING:
            raise MessageError("missing field 'status'")
        raise _wrong_type("status", "an integer", status)
    return HttpResponse(
        id=_required_str(doc, "@id"),
        timestamp=_optional_str(doc, "@timestamp", ""),
        headers=_headers(doc),
        content_type=_required_str(doc, "contentType"),
        status=status,
        body=_body(doc),
    )


def _decode_ws_request(doc):
    return WSRequest(
        id=_required_str(doc, "@id"),
        timestamp=_optional_str(doc, "@timestamp", ""),
        url=_required_str(doc, "url"),
        query=_optional_str(doc, "query", ""),
        headers=_headers(doc),
    )


def _decode_ws_response(doc):
    ok = doc.get("ok", _MISSING)
    if type(ok) is not bool:
        if ok is _MISSING:
            raise MessageError("missing field 'ok'")
        raise _wrong_type("ok", "a boolean", ok)
    return WSResponse(
        id=_required_str(doc, "@id"),
        timestamp=_optional_str(doc, "@timestamp", ""),
        ok=ok,
        error=_optional_str(doc, "error", ""),
        protocol=_optional_str(doc, "protocol", None),
    )


def _decode_ws_message(doc):
    message_type = doc.get("messageType", _MISSING)
    if message_type is _MISSING:
        raise MessageError("missing field 'messageType'")
    # bool is not int here, and True == 1 would otherwise pass the test.
    if type(message_type) is not int or (
            message_type != TEXT and message_type != BINARY):
        raise MessageError("field 'messageType' must be 1 or 2, not %r" % (
            message_type,))
    return WSMessage(
        id=_required_str(doc, "@id"),
        timestamp=_optional_str(doc, "@timestamp", ""),
        message_type=message_type,
        body=_required_str(doc, "body"),
        encoding=_optional_str(doc, "encoding", None),
    )


def _decode_ws_teardown(doc):
    code = doc.get("code")
    if code is not None and (type(code) is not int or not 1000 <= code <= 4999):
        raise MessageError("field 'code' must be a close code (1000-4999), not %r"
                           % (code,))
    return WSTeardown(
        id=_required_str(doc, "@id"),
        timestamp=_optional_str(doc, "@timestamp", ""),
        code=code,
        reason=_optional_str(doc, "reason", ""),
    )


def _decode_disconnect(doc):
    return Disconnect(
        id=_required_str(doc, "@id"),
        timestamp=_optional_str(doc, "@timestamp", ""),
    )


_DECODERS = {
    RegistrationRequest.TYPE_URI: _decode_registration_request,
    RegistrationResponse.TYPE_URI: _decode_registration_response,
    Ping.TYPE_URI: _decode_ping,
    HttpRequest.TYPE_URI: _decode_http_request,
    HttpResponse.TYPE_URI: _decode_http_response,
    WSRequest.TYPE_URI: _decode_ws_request,
    WSResponse.TYPE_URI: _decode_ws_response,
    WSMessage.TYPE_URI: _decode_ws_message,
    WSTeardown.TYPE_URI: _decode_ws_teardown,
    Disconnect.TYPE_URI: _decode_disconnect,
}


def decode(data):
    """
    Decode one message.

    @param data: the JSON document, as UTF-8 L{bytes} or as L{str}.
    @return: a L{RegistrationRequest}, L{RegistrationResponse}, L{Ping},
        L{HttpRequest}, L{HttpResponse}, L{WSRequest}, L{WSResponse},
        L{WSMessage}, L{WSTeardown} or L{Disconnect}.  Unknown fields are
        ignored; a missing C{@timestamp} becomes C{""}.
    @raise MessageError: the message is malformed in any way.
    """
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise MessageError("invalid JSON: %s" % (e,)) from None
    if type(doc) is not dict:
        raise MessageError("message is not a JSON object")
    type_uri = doc.get("@type")
    if type(type_uri) is not str:
        if type_uri is None:
            raise MessageError("message has no '@type'")
        raise MessageError("'@type' is not a string")
    decoder = _DECODERS.get(type_uri)
    if decoder is None:
        raise MessageError("unknown message type %r" % (type_uri,))
    try:
        return decoder(doc)
    except MessageError as e:
        raise MessageError("%s: %s" % (type_uri[len(TYPE_PREFIX):-5], e)) from None


# --- encoding ---------------------------------------------------------------

_PING_BYTES = b'{"@type":"https://proxy.brickchain.com/v1/ping.json"}\n'


def _common(type_uri, message):
    """
    The leading fields every message but ping has, in Go's order.
    """
    if message.timestamp:
        return {"@type": type_uri, "@timestamp": message.timestamp,
                "@id": message.id}
    return {"@type": type_uri, "@id": message.id}


def _encode_registration_request(message):
    doc = _common(RegistrationRequest.TYPE_URI, message)
    doc["mandateToken"] = message.mandate_token
    if message.session is not None:
        doc["session"] = message.session
    if message.features is not None:
        doc["features"] = message.features
    return doc


def _encode_registration_response(message):
    doc = _common(RegistrationResponse.TYPE_URI, message)
    doc["keyID"] = message.key_id
    if message.hostname is not None:
        doc["hostname"] = message.hostname
    if message.features is not None:
        doc["features"] = message.features
    return doc


def _encode_http_request(message):
    doc = _common(HttpRequest.TYPE_URI, message)
    doc["url"] = message.url
    if message.query:
        doc["query"] = message.query
    doc["headers"] = message.headers
    doc["method"] = message.method
    doc["body"] = _b64encode(message.body)
    return doc


def _encode_http_response(message):
    doc = _common(HttpResponse.TYPE_URI, message)
    doc["headers"] = message.headers
    doc["contentType"] = message.content_type
    doc["status"] = message.status
    doc["body"] = _b64encode(message.body)
    return doc


def _encode_ws_request(message):
    doc = _common(WSRequest.TYPE_URI, message)
    doc["url"] = message.url
    if message.query:
        doc["query"] = message.query
    doc["headers"] = message.headers
    return doc


def _encode_ws_response(message):
    doc = _common(WSResponse.TYPE_URI, message)
    doc["ok"] = message.ok
    if message.error:
        doc["error"] = message.error
    if message.protocol is not None:
        doc["protocol"] = message.protocol
    return doc


def _encode_ws_message(message):
    doc = _common(WSMessage.TYPE_URI, message)
    doc["messageType"] = message.message_type
    doc["body"] = message.body
    if message.encoding is not None:
        doc["encoding"] = message.encoding
    return doc


def _encode_ws_teardown(message):
    doc = _common(WSTeardown.TYPE_URI, message)
    if message.code is not None:
        doc["code"] = message.code
        if message.reason:
            doc["reason"] = message.reason
    return doc


def _encode_disconnect(message):
    return _common(Disconnect.TYPE_URI, message)


_ENCODERS = {
    RegistrationRequest: _encode_registration_request,
    RegistrationResponse: _encode_registration_response,
    HttpRequest: _encode_http_request,
    HttpResponse: _encode_http_response,
    WSRequest: _encode_ws_request,
    WSResponse: _encode_ws_response,
    WSMessage: _encode_ws_message,
    WSTeardown: _encode_ws_teardown,
    Disconnect: _encode_disconnect,
}


def encode(message):
    """
    Encode one message as compact UTF-8 JSON, fields in Go's order, optional
    fields omitted as docs/protocol.rst says.  A L{Ping} is exactly the bytes v1
    sends, trailing newline included.

    Field values are trusted, not validated; a value JSON cannot carry (or
    an HTTP body that is not bytes) raises L{MessageError}.

    @raise TypeError: C{message} is not one of this module's messages.
    @rtype: L{bytes}
    """
    message_class = type(message)
    if message_class is Ping:
        return _PING_BYTES
    encoder = _ENCODERS.get(message_class)
    if encoder is None:
        raise TypeError("not a protocol message: %r" % (message,))
    try:
        return orjson.dumps(encoder(message))
    except (TypeError, ValueError) as e:  # orjson.JSONEncodeError is a TypeError
        raise MessageError("cannot encode %s: %s" % (
            message_class.__name__, e)) from None
