"""
The envelopes proxy instances send each other over the bus.

An envelope is a byte string: a one-letter kind, then newline-separated
header fields, then (for the kinds that carry one) the raw protocol message,
untouched -- it is never decoded or re-encoded on the way::

    R <client_id> <from_instance> <message_id> <raw>   a request for a tunnel
    S <client_id> <raw>                                a frame for a tunnel
    T <client_id> <stream_id> <raw>                    a visitor closed
    A <raw>                                            from a tunnel, for its @id
    F <message_id> <reason>                            that request or stream failed
    K <client_id> <new_instance>                       you lost this tunnel
    P                                                  are you there? (no answer)
    O <client_id> <from_instance> <frame>              a stream frame for a tunnel
    V <client_id> <from_instance> <frame>              a stream frame for a visitor

L{encode} and L{decode} are the only places that know this layout; every
field but the raw message and the reason is ASCII without newlines.
Anything malformed raises L{EnvelopeError} and nothing else.
"""

import attr


class EnvelopeError(ValueError):
    """
    Bytes that are not a valid envelope.
    """


@attr.s(slots=True, frozen=True)
class Request:
    """
    A request (http-request or ws-request) for tunnel C{client_id}, from
    instance C{origin}, which waits for the answer to C{message_id}.
    """

    client_id = attr.ib()
    origin = attr.ib()
    message_id = attr.ib()
    raw = attr.ib()


@attr.s(slots=True, frozen=True)
class Frame:
    """
    A visitor's ws-message for tunnel C{client_id}.
    """

    client_id = attr.ib()
    raw = attr.ib()


@attr.s(slots=True, frozen=True)
class Teardown:
    """
    A visitor closed websocket C{stream_id} of tunnel C{client_id}; C{raw}
    is its ws-teardown.
    """

    client_id = attr.ib()
    stream_id = attr.ib()
    raw = attr.ib()


@attr.s(slots=True, frozen=True)
class Answer:
    """
    A message from a tunnel (a reply, or a frame of a websocket) for the
    instance waiting for its @id.
    """

    raw = attr.ib()


@attr.s(slots=True, frozen=True)
class Failed:
    """
    The request or websocket C{message_id} failed on the instance holding
    the tunnel, for C{reason} (text).
    """

    message_id = attr.ib()
    reason = attr.ib()


@attr.s(slots=True, frozen=True)
class TakenOver:
    """
    Tunnel C{client_id} registered on C{new_instance}: the receiver closes
    its own connection for it.
    """

    client_id = attr.ib()
    new_instance = attr.ib()


@attr.s(slots=True, frozen=True)
class Probe:
    """
    Is the receiving instance still there?  Being subscribed is the answer
    (the publish counts one receiver).
    """


@attr.s(slots=True, frozen=True)
class TunnelFrame:
    """
    A stream frame (L{brickchain_proxy.streams.frames}) from a visitor on
    instance C{origin}, for tunnel C{client_id} held by the receiver; its
    stream id is the one C{origin} chose.
    """

    client_id = attr.ib()
    origin = attr.ib()
    frame = attr.ib()


@attr.s(slots=True, frozen=True)
class VisitorFrame:
    """
    A stream frame from tunnel C{client_id}, held by instance C{origin},
    for a visitor on the receiver; its stream id is the receiver's.
    """

    client_id = attr.ib()
    origin = attr.ib()
    frame = attr.ib()


_PROBE = b"P"


def _ascii(value, what):
    if not isinstance(value, str):
        raise EnvelopeError("{} must be a string".format(what))
    try:
        data = value.encode("ascii")
    except UnicodeEncodeError:
        raise EnvelopeError("{} is not ASCII".format(what)) from None
    if not data or b"\n" in data:
        raise EnvelopeError("{} is empty or has a newline".format(what))
    return data


def _raw(value):
    if not isinstance(value, bytes):
        raise EnvelopeError("the raw message must be bytes")
    return value


def encode(envelope):
    """
    The bytes of C{envelope}.

    @raise EnvelopeError: a field cannot be carried.
    """
    kind = type(envelope)
    if kind is Request:
        return b"R\n%s\n%s\n%s\n%s" % (
            _ascii(envelope.client_id, "client id"),
            _ascii(envelope.origin, "instance id"),
            _ascii(envelope.message_id, "message id"),
            _raw(envelope.raw))
    if kind is Frame:
        return b"S\n%s\n%s" % (_ascii(envelope.client_id, "client id"),
                               _raw(envelope.raw))
    if kind is Teardown:
        return b"T\n%s\n%s\n%s" % (_ascii(envelope.client_id, "client id"),
                                   _ascii(envelope.stream_id, "stream id"),
                                   _raw(envelope.raw))
    if kind is Answer:
        return b"A\n" + _raw(envelope.raw)
    if kind is Failed:
        if not isinstance(envelope.reason, str):
            raise EnvelopeError("the reason must be a string")
        return b"F\n%s\n%s" % (_ascii(envelope.message_id, "message id"),
                               envelope.reason.encode("utf-8", "replace"))
    if kind is TakenOver:
        return b"K\n%s\n%s" % (_ascii(envelope.client_id, "client id"),
                               _ascii(envelope.new_instance, "instance id"))
    if kind is TunnelFrame or kind is VisitorFrame:
        return b"%s\n%s\n%s\n%s" % (
            b"O" if kind is TunnelFrame else b"V",
            _ascii(envelope.client_id, "client id"),
            _ascii(envelope.origin, "instance id"),
            _raw(envelope.frame))
    if kind is Probe:
        return _PROBE
    raise EnvelopeError("not an envelope: {!r}".format(kind))


def _field(data, what):
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise EnvelopeError("{} is not ASCII".format(what)) from None
    if not text:
        raise EnvelopeError("{} is empty".format(what))
    return text


def _split(data, count, kind):
    parts = data.split(b"\n", count)
    if len(parts) != count + 1:
        raise EnvelopeError("{} envelope has too few fields".format(kind))
    return parts


def decode(data):
    """
    The envelope in C{data} (bytes).

    @raise EnvelopeError: C{data} is not an envelope.
    """
    if not isinstance(data, bytes):
        raise EnvelopeError("an envelope is bytes")
    kind = data[:1]
    if kind == b"A":
        if data[1:2] != b"\n":
            raise EnvelopeError("A envelope has no message")
        return Answer(raw=data[2:])
    if kind == b"R":
        _, client_id, origin, message_id, raw = _split(data, 4, "R")
        return Request(_field(client_id, "client id"), _field(origin, "instance id"),
                       _field(message_id, "message id"), raw)
    if kind == b"S":
        _, client_id, raw = _split(data, 2, "S")
        return Frame(_field(client_id, "client id"), raw)
    if kind == b"T":
        _, client_id, stream_id, raw = _split(data, 3, "T")
        return Teardown(_field(client_id, "client id"),
                        _field(stream_id, "stream id"), raw)
    if kind == b"F":
        _, message_id, reason = _split(data, 2, "F")
        return Failed(_field(message_id, "message id"),
                      reason.decode("utf-8", "replace"))
    if kind == b"K":
        _, client_id, new_instance = _split(data, 2, "K")
        return TakenOver(_field(client_id, "client id"),
                         _field(new_instance, "instance id"))
    if kind == b"O" or kind == b"V":
        _, client_id, origin, frame = _split(data, 3, kind.decode())
        return (TunnelFrame if kind == b"O" else VisitorFrame)(
            _field(client_id, "client id"), _field(origin, "instance id"), frame)
    if data == _PROBE:
        return Probe()
    raise EnvelopeError("unknown envelope kind {!r}".format(kind))
