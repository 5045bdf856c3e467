"""
What an instance does for the others: the requests and websockets it
relays between a tunnel it holds and a visitor on another instance, and the
adaptation of their messages to the tunnel's connection.

A visitor's message for a tunnel held elsewhere is encoded with every
extension (L{brickchain_proxy.proxy.hub.TunnelHub.encoding_features}); the
instance holding the tunnel adapts it to what the tunnel's connection
negotiated (L{adapt_to}), so a tunnel behaves the same through every
instance.
"""

from urllib.parse import unquote

import attr
import orjson

from ..features import BINARY_WS, MESSAGE_FEATURES, MULTI_HEADER, RAW_PATH, WS_CLOSE
from ..headers import join_values
from ..messages import HttpRequest, WSMessage, WSRequest, WSTeardown, decode, encode


def adapt_to(features, raw):
    """
    Adapt a message for a tunnel that another instance encoded with every
    extension to the extensions C{features} the tunnel's connection
    negotiated: C{raw} untouched when it has them all (the usual case),
    otherwise re-encoded as this instance would have encoded it for that
    connection (pure v1 for a v1 client).

    @raise MessageError: C{raw} is not a valid message.
    """
    if features >= MESSAGE_FEATURES:
        return raw
    message = decode(raw)
    kind = type(message)
    if kind is HttpRequest or kind is WSRequest:
        if RAW_PATH not in features:
            message.url = unquote(message.url, errors="replace")
        if MULTI_HEADER not in features:
            message.headers = {
                name: join_values(name.lower(), value) if isinstance(value, list)
                else value
                for name, value in message.headers.items()
            }
    elif kind is WSMessage:
        if message.encoding is not None and BINARY_WS not in features:
            message = WSMessage.from_payload(
                message.id, message.payload(), True, False,
                timestamp=message.timestamp)
    elif kind is WSTeardown:
        if WS_CLOSE not in features:
            message = WSTeardown(id=message.id, timestamp=message.timestamp)
    return encode(message)


def adapt_head(features, head):
    """
    Adapt the head of a request stream that another instance encoded with
    every extension (a dict) to the extensions C{features} of the tunnel's
    connection, as L{adapt_to} does for a message.

    @return: the head's JSON bytes.
    """
    url = head.get("url")
    if RAW_PATH not in features and isinstance(url, str):
        head["url"] = unquote(url, errors="replace")
    headers = head.get("headers")
    if MULTI_HEADER not in features and isinstance(headers, dict):
        head["headers"] = {
            name: join_values(name.lower(), value) if isinstance(value, list)
            else value
            for name, value in headers.items()
        }
    return orjson.dumps(head)


@attr.s(slots=True)
class Relay:
    """
    A request (or, once accepted, a websocket) this instance relays.

    @ivar origin: the id of the instance to send answers to.
    @ivar connection: the tunnel connection here that carries it.
    @ivar timer: its expiry while the answer is awaited; L{None} once it is
        an open websocket, which lives until either side tears it down or
        its origin is found gone (L{RelayTable.open_origins}: the probe,
        and the result of publishing each frame to it).
    """

    origin = attr.ib()
    connection = attr.ib()
    timer = attr.ib(default=None)


class RelayTable:
    """
    The relays of one instance, by message id (a websocket's is its
    ws-request's @id).

    @param clock: provides C{callLater}.
    @param lifetime: seconds a relay waits for its answer before it is
        forgotten (the asking instance has given up by then).
    """

    def __init__(self, clock, lifetime):
        self._clock = clock
        self.lifetime = lifetime
        self._relays = {}

    def __len__(self):
        return len(self._relays)

    def add(self, message_id, origin, connection):
        """
        Relay C{message_id} for instance C{origin} over C{connection}.
        """
        self.drop(message_id)
        timer = self._clock.callLater(self.lifetime, self.drop, message_id)
        self._relays[message_id] = Relay(origin, connection, timer)

    def get(self, message_id, connection):
        """
        The relay of C{message_id}, if it runs over C{connection}.
        """
        relay = self._relays.get(message_id)
        if relay is not None and relay.connection is connection:
            return relay
        return None

    def find(self, message_id):
        """
        The relay of C{message_id} over any connection, or L{None}.
        """
        return self._relays.get(message_id)

    def keep_open(self, relay):
        """
        C{relay}'s websocket was accepted: it no longer expires.
        """
        if relay.timer is not None:
            if relay.timer.active():
                relay.timer.cancel()
            relay.timer = None

    def drop(self, message_id):
        """
        Forget C{message_id}'s relay.

        @return: the L{Relay}, or L{None} if there was none.
        """
        relay = self._relays.pop(message_id, None)
        if relay is not None and relay.timer is not None and relay.timer.active():
            relay.timer.cancel()
        return relay

    def open_origins(self):
        """
        The instances that visitors of the open websockets relayed here are
        on (those to probe).
        """
        return {relay.origin for relay in self._relays.values() if relay.timer is None}

    def drop_open_from(self, origin):
        """
        Forget the open websockets relayed for C{origin}.

        @return: their C{(message_id, relay)}s.
        """
        gone = [(mid, relay) for mid, relay in self._relays.items()
                if relay.origin == origin and relay.timer is None]
        for message_id, _ in gone:
            del self._relays[message_id]
        return gone

    def over(self, connection):
        """
        The message ids relayed over C{connection}.
        """
        return [mid for mid, relay in self._relays.items()
                if relay.connection is connection]

    def clear(self):
        """
        Forget every relay.
        """
        for message_id in list(self._relays):
            self.drop(message_id)
