"""
The tunnel hub: which tunnels this proxy instance holds, and how a public
request reaches any tunnel.

Plain object, no sockets: the websocket protocol (L{tunnel}) attaches and
detaches connections and hands over the replies it receives; the public
side (L{site}) asks for requests to be delivered and gets a Deferred of the
reply.

Routing:

  - tunnel held by this instance: a dict lookup, the message goes straight
    onto that websocket (the fast path; the bus is not involved);
  - tunnel held by another instance (per the directory): the message goes
    over the bus to that instance, which relays it and sends the reply back
    over the bus;
  - nobody holds it: L{TunnelOffline} at once.

Bus envelopes are byte strings: a one-letter kind, newline-separated header
fields, then the raw protocol message untouched (never re-encoded)::

    R <client_id> <from_instance> <message_id> <raw>   deliver to a tunnel
    A <raw>                                            a reply, for its @id
    F <message_id> <reason>                            that request failed
    K <client_id> <new_instance>                       you lost this tunnel
"""

import uuid

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from ..correlation import PendingRequests, TunnelGone
from ..messages import MessageError, decode


class TunnelOffline(Exception):
    """
    No proxy instance holds a connection for this tunnel.
    """


class BusUnavailable(Exception):
    """
    The tunnel lives on another instance and the bus could not reach it.
    """


class RemoteFailure(Exception):
    """
    The instance holding the tunnel reported that the request failed.
    """


def instance_channel(instance_id):
    """
    The bus channel an instance listens on.
    """
    return "brickproxy:instance:" + instance_id


class TunnelHub:
    """
    @ivar local: clientID -> connection, for the tunnels this instance holds.
    @ivar pending: requests waiting for a reply (L{PendingRequests}).
    """

    _log = Logger()

    def __init__(self, reactor, bus, directory, request_timeout=30.0,
                 instance_id=None):
        self._reactor = reactor
        self._bus = bus
        self._directory = directory
        self.request_timeout = request_timeout
        self.instance_id = instance_id or uuid.uuid4().hex
        self.local = {}
        self.pending = PendingRequests(reactor)
        # message id -> (instance to answer, connection, expiry timer):
        # requests this instance relays for other instances.
        self._relays = {}
        self._channel = instance_channel(self.instance_id)

    # -- lifecycle ---------------------------------------------------------

    def start(self):
        """
        Listen on this instance's bus channel.
        """
        return self._bus.subscribe(self._channel, self._bus_received)

    def stop(self):
        """
        Stop listening, fail everything still pending, forget tunnels.
        """
        for message_id in list(self._relays):
            self._drop_relay(message_id)
        for connection in set(self.local.values()):
            self.connection_lost(connection)
        return self._bus.unsubscribe(self._channel, self._bus_received)

    # -- tunnels -----------------------------------------------------------

    def attach(self, client_id, connection):
        """
        C{connection} has registered C{client_id}.  The newest registration
        wins: an older connection holding the same clientID (here or on
        another instance) is told to go.

        @return: a L{Deferred} that fires when the directory has recorded it.
        """
        old = self.local.get(client_id)
        self.local[client_id] = connection
        if old is not None and old is not connection:
            self._log.info(
                "tunnel {client_id} registered again: closing the older connection",
                client_id=client_id,
            )
            old.tunnel_taken_over(client_id)
        d = self._directory.claim(client_id, self.instance_id)

        def claimed(previous):
            if previous is not None and previous != self.instance_id:
                return self._bus.publish(
                    instance_channel(previous),
                    b"K\n%s\n%s" % (client_id.encode("ascii"),
                                    self.instance_id.encode("ascii")),
                )

        d.addCallback(claimed)
        d.addErrback(
            lambda f: self._log.failure(
                "could not record tunnel {client_id} in the directory",
                f, client_id=client_id,
            )
        )
        return d

    def detach(self, client_id, connection):
        """
        C{connection} no longer carries C{client_id}.
        """
        if self.local.get(client_id) is connection:
            del self.local[client_id]
            d = self._directory.release(client_id, self.instance_id)
            d.addErrback(
                lambda f: self._log.failure(
                    "could not remove tunnel {client_id} from the directory",
                    f, client_id=client_id,
                )
            )

    def connection_lost(self, connection):
        """
        A tunnel connection is gone: forget its tunnels and fail at once every
        request waiting on it.
        """
        for client_id in [c for c, conn in self.local.items() if conn is connection]:
            self.detach(client_id, connection)
        failed = self.pending.fail_owner(
            connection, TunnelGone("the tunnel's connection was lost")
        )
        for message_id, (instance, conn, timer) in list(self._relays.items()):
            if conn is connection:
                self._fail_remote(message_id, instance,
                                  "the tunnel's connection was lost")
        return failed

    def renew_all(self):
        """
        Renew this instance's directory entries (for directories with a TTL).
        """
        for client_id, connection in list(self.local.items()):
            d = self._directory.renew(client_id, self.instance_id)

            def renewed(ours, client_id=client_id, connection=connection):
                if not ours and self.local.get(client_id) is connection:
                    self._log.info(
                        "tunnel {client_id} was taken over by another instance",
                        client_id=client_id,
                    )
                    del self.local[client_id]
                    connection.tunnel_taken_over(client_id)

            d.addCallback(renewed)
            d.addErrback(
                lambda f: self._log.failure("directory renewal failed", f)
            )

    def features_of(self, client_id):
        """
        The extensions negotiated with C{client_id}'s connection; empty (pure
        v1) when the tunnel is held by another instance.
        """
        connection = self.local.get(client_id)
        if connection is None:
            return frozenset()
        return connection.features

    # -- requests ----------------------------------------------------------

    def request(self, client_id, message_id, raw):
        """
        Deliver the request C{raw} (an encoded message whose @id is
        C{message_id}) to tunnel C{client_id}.

        @return: a L{Deferred} firing with the decoded reply message; it fails
            with L{TunnelOffline}, L{TunnelGone}, L{BusUnavailable},
            L{RemoteFailure} or L{twisted.internet.defer.TimeoutError}; cancel
            it when the answer is no longer wanted.
        """
        connection = self.local.get(client_id)
        if connection is not None:
            d = self.pending.expect(message_id, connection, self.request_timeout)
            connection.send_raw(raw)
            return d
        return self._remote_request(client_id, message_id, raw)

    def _remote_request(self, client_id, message_id, raw):
        def found(owner):
            if owner is None or owner == self.instance_id:
                raise TunnelOffline(client_id)
            reply = self.pending.expect(message_id, owner, self.request_timeout)
            envelope = b"R\n%s\n%s\n%s\n%s" % (
                client_id.encode("ascii"),
                self.instance_id.encode("ascii"),
                message_id.encode("ascii"),
                raw,
            )
            published = self._bus.publish(instance_channel(owner), envelope)
            published.addErrback(
                lambda f: self.pending.fail(
                    message_id, BusUnavailable(f.getErrorMessage())
                )
            )
            # Returning the reply Deferred chains it: cancelling the result
            # cancels the reply, whose canceller removes the pending entry.
            return reply

        def lookup_failed(f):
            if f.check(TunnelOffline, CancelledError):
                return f
            raise BusUnavailable(f.getErrorMessage())

        d = self._directory.lookup(client_id)
        d.addCallback(found)
        d.addErrback(lookup_failed)
        return d

    def reply(self, connection, message, raw):
        """
        A connection sent a reply (http-response, ws-response), decoded as
        C{message} from the bytes C{raw}: hand it to whoever waits for it
        here, or to the instance that relayed the request.

        @return: L{True} if somebody wanted it.
        """
        if self.pending.resolve(message.id, message, connection):
            return True
        relay = self._relays.get(message.id)
        if relay is not None and relay[1] is connection:
            self._drop_relay(message.id)
            self._publish(relay[0], b"A\n" + raw)
            return True
        return False

    def stream_from_tunnel(self, connection, message, raw):
        """
        A ws-message or ws-teardown from a tunnel connection.
        """
        self._log.debug(
            "{type} for unknown websocket {id} ignored",
            type=type(message).__name__, id=message.id,
        )

    # -- bus ---------------------------------------------------------------

    def _bus_received(self, envelope):
        kind = envelope[:1]
        try:
            if kind == b"A":
                self._remote_answer(envelope[2:])
            elif kind == b"R":
                _, client_id, origin, message_id, raw = envelope.split(b"\n", 4)
                self._relay(client_id.decode("ascii"), origin.decode("ascii"),
                            message_id.decode("ascii"), raw)
            elif kind == b"F":
                _, message_id, reason = envelope.split(b"\n", 2)
                self.pending.fail(message_id.decode("ascii"),
                                  RemoteFailure(reason.decode("utf-8", "replace")))
            elif kind == b"K":
                _, client_id, new_owner = envelope.split(b"\n", 2)
                self._taken_over(client_id.decode("ascii"))
            else:
                raise ValueError("unknown envelope kind {!r}".format(kind))
        except (ValueError, MessageError):
            self._log.failure("malformed bus envelope ignored")

    def _remote_answer(self, raw):
        message = decode(raw)
        # The owner recorded for a remote request is the instance id; any
        # instance may answer (the tunnel may have moved), so do not check.
        self.pending.resolve(message.id, message)

    def _relay(self, client_id, origin, message_id, raw):
        connection = self.local.get(client_id)
        if connection is None:
            self._publish(origin, b"F\n%s\ntunnel is not connected here" %
                          message_id.encode("ascii"))
            return
        timer = self._reactor.callLater(
            self.request_timeout + 5, self._relays.pop, message_id, None
        )
        self._relays[message_id] = (origin, connection, timer)
        connection.send_raw(raw)

    def _taken_over(self, client_id):
        connection = self.local.pop(client_id, None)
        if connection is not None:
            self._log.info(
                "tunnel {client_id} registered on another instance: closing ours",
                client_id=client_id,
            )
            connection.tunnel_taken_over(client_id)

    def _drop_relay(self, message_id):
        relay = self._relays.pop(message_id, None)
        if relay is not None and relay[2].active():
            relay[2].cancel()
        return relay

    def _fail_remote(self, message_id, instance, reason):
        self._drop_relay(message_id)
        self._publish(instance, b"F\n%s\n%s" % (message_id.encode("ascii"),
                                                reason.encode("utf-8")))

    def _publish(self, instance, envelope):
        d = self._bus.publish(instance_channel(instance), envelope)
        d.addErrback(lambda f: self._log.failure("bus publish failed", f))
        return d


__all__ = ["TunnelHub", "TunnelOffline", "BusUnavailable", "RemoteFailure",
           "instance_channel"]
