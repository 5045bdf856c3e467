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

Instances talk to each other in the envelopes of
L{brickchain_proxy.bus.envelope}; what an instance relays for the others is
in L{brickchain_proxy.proxy.relay}.

Websockets ("streams") are opened with a ws-request correlated like any
request; after that, frames flow without correlation, keyed by the stream id
(the ws-request's @id) in L{TunnelHub.streams} on the visitor's side and in
the relay table on the tunnel's side when the two are different instances.
"""

import uuid

from twisted.internet.defer import CancelledError, TimeoutError
from twisted.logger import Logger

from ..bus import envelope
from ..bus.envelope import EnvelopeError
from ..bus.interface import BusUnavailable
from ..correlation import PendingRequests, TunnelGone
from ..errors import RemoteFailure, TunnelOffline
from ..features import SUPPORTED
from ..messages import MessageError, WSMessage, WSTeardown, decode, encode
from .relay import RelayTable, adapt_to


def instance_channel(instance_id):
    """
    The bus channel an instance listens on.
    """
    return "brickproxy:instance:" + instance_id


class Stream:
    """
    A visitor websocket on this instance.

    @ivar visitor: has C{deliver(message)} and C{tunnel_lost(reason)}.
    @ivar owner: the tunnel connection it runs over (local), or the id of the
        instance holding that tunnel (remote); L{None} until known.
    """

    __slots__ = ("visitor", "client_id", "owner")

    def __init__(self, visitor, client_id):
        self.visitor = visitor
        self.client_id = client_id
        self.owner = None


class TunnelHub:
    """
    @ivar local: clientID -> connection, for the tunnels this instance holds.
    @ivar pending: requests waiting for a reply (L{PendingRequests}).
    @ivar streams: stream id -> L{Stream}, the visitor websockets here.
    @ivar relays: the requests and websockets this instance relays for
        other instances (L{RelayTable}).
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
        self.streams = {}
        # The asking instance gives up after request_timeout; a little later
        # its relay here is forgotten too.
        self.relays = RelayTable(reactor, request_timeout + 5)
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
        self.relays.clear()
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
                    envelope.encode(envelope.TakenOver(client_id, self.instance_id)),
                )

        d.addCallback(claimed)
        d.addErrback(self._directory_failed,
                     "could not record tunnel {client_id} in the directory",
                     client_id)
        return d

    def detach(self, client_id, connection):
        """
        C{connection} no longer carries C{client_id}.
        """
        if self.local.get(client_id) is connection:
            del self.local[client_id]
            d = self._directory.release(client_id, self.instance_id)
            d.addErrback(self._directory_failed,
                         "could not remove tunnel {client_id} from the directory",
                         client_id)

    def _directory_failed(self, failure, what, client_id):
        # An unreachable bus is an operating condition (logged as such, and
        # renewals repair the directory when it is back), not a bug.
        if failure.check(BusUnavailable):
            self._log.warn(what + ": {error}", client_id=client_id,
                           error=failure.getErrorMessage())
        else:
            self._log.failure(what, failure, client_id=client_id)

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
        lost = [sid for sid, st in self.streams.items() if st.owner is connection]
        for stream_id in lost:
            self.streams.pop(stream_id).visitor.tunnel_lost(
                "the tunnel's connection was lost")
        for message_id in self.relays.over(connection):
            self._fail_remote(message_id, "the tunnel's connection was lost")
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
            d.addErrback(self._renew_failed)

    def _renew_failed(self, failure):
        if failure.check(BusUnavailable):
            self._log.warn("cannot renew tunnels in the directory: {error}",
                           error=failure.getErrorMessage())
        else:
            self._log.failure("directory renewal failed", failure)

    def encoding_features(self, client_id):
        """
        The extensions to encode a visitor's request for C{client_id} with:
        those its connection negotiated when this instance holds it, else
        every extension (lossless), which the instance holding the tunnel
        adapts to its connection (L{adapt_to}).
        """
        connection = self.local.get(client_id)
        if connection is None:
            return SUPPORTED
        return connection.features

    def backpressure_for(self, client_id):
        """
        The backpressure of C{client_id}'s tunnel connection when this
        instance holds it (visitors sending into it pause when it backs
        up), else L{None}.
        """
        connection = self.local.get(client_id)
        return None if connection is None else connection.backpressure

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

    def _remote_request(self, client_id, message_id, raw, stream=None):
        def found(owner):
            if owner is None or owner == self.instance_id:
                raise TunnelOffline(client_id)
            if stream is not None:
                stream.owner = owner
            reply = self.pending.expect(message_id, owner, self.request_timeout)
            published = self._bus.publish(
                instance_channel(owner),
                envelope.encode(envelope.Request(
                    client_id, self.instance_id, message_id, raw)))

            def delivered(receivers):
                if receivers == 0:
                    # Nobody listens for that instance: it died without
                    # releasing its tunnels.  Drop its stale entry.
                    self._log.info(
                        "tunnel {client_id}: instance {owner} is gone",
                        client_id=client_id, owner=owner,
                    )
                    self._directory.release(client_id, owner).addErrback(
                        lambda f: None)
                    self.pending.fail(message_id, TunnelOffline(client_id))

            published.addCallbacks(
                delivered,
                lambda f: self.pending.fail(
                    message_id, BusUnavailable(f.getErrorMessage())
                ),
            )
            # Returning the reply Deferred chains it: cancelling the result
            # cancels the reply, whose canceller removes the pending entry.
            return reply

        def lookup_failed(f):
            if f.check(CancelledError, BusUnavailable):
                return f
            raise BusUnavailable(f.getErrorMessage())

        d = self._directory.lookup(client_id)
        # lookup_failed sees only the directory's failures: the reply's own
        # (TimeoutError, RemoteFailure, ...) must reach the caller unchanged.
        d.addCallbacks(found, lookup_failed)
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
        relay = self.relays.get(message.id, connection)
        if relay is not None:
            if getattr(message, "ok", False):
                # An accepted ws-response: the relay now carries the stream's
                # frames until one side tears it down.
                self.relays.keep_open(relay)
            else:
                self.relays.drop(message.id)
            self._publish(relay.origin, envelope.Answer(raw))
            return True
        return False

    # -- websockets --------------------------------------------------------

    def open_stream(self, client_id, stream_id, raw, visitor):
        """
        Send the ws-request C{raw} (whose @id is C{stream_id}) for a visitor
        websocket, and register the visitor so frames that follow the
        ws-response find it at once.

        @return: a L{Deferred} firing with the L{WSResponse} (failing as
            L{request} does); on failure or cancel the stream is forgotten.
        """
        stream = Stream(visitor, client_id)
        self.streams[stream_id] = stream
        connection = self.local.get(client_id)
        if connection is not None:
            stream.owner = connection
            d = self.pending.expect(stream_id, connection, self.request_timeout)
            connection.send_raw(raw)
        else:
            d = self._remote_request(client_id, stream_id, raw, stream)

        def refused(result):
            if not getattr(result, "ok", True):
                self.streams.pop(stream_id, None)
            return result

        def failed(f):
            self.streams.pop(stream_id, None)
            if f.check(CancelledError, TimeoutError) and stream.owner is not None:
                # The ws-request went out but the visitor no longer waits
                # (it left, or got its 504): tell the client, or it would
                # keep the local websocket open forever once it opens.
                teardown = encode(WSTeardown(id=stream_id))
                if isinstance(stream.owner, str):
                    self._publish(stream.owner, envelope.Teardown(
                        client_id, stream_id, teardown))
                else:
                    stream.owner.send_frame(stream_id, teardown, True)
            return f

        d.addCallbacks(refused, failed)
        return d

    def stream_count(self, client_id):
        """
        How many visitor websockets of C{client_id} are open here.
        """
        return sum(1 for stream in self.streams.values()
                   if stream.client_id == client_id)

    def stream_to_tunnel(self, stream_id, raw, last=False):
        """
        Send a frame (ws-message) or, with C{last}, the visitor's ws-teardown
        for stream C{stream_id} to its tunnel.

        @return: L{False} if the stream is unknown (already gone).
        """
        stream = self.streams.get(stream_id)
        if stream is None:
            return False
        if last:
            del self.streams[stream_id]
        owner = stream.owner
        if owner is None:
            return False
        if not isinstance(owner, str):
            owner.send_frame(stream_id, raw, last)
        elif last:
            self._publish(owner, envelope.Teardown(stream.client_id, stream_id, raw))
        else:
            d = self._publish(owner, envelope.Frame(stream.client_id, raw))
            d.addCallback(self._check_stream_receiver, stream_id)
        return True

    def _check_stream_receiver(self, receivers, stream_id):
        if receivers == 0:
            # The instance holding the tunnel is gone.
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                stream.visitor.tunnel_lost("the tunnel's proxy instance is gone")

    def check_remote_streams(self):
        """
        Probe every instance that holds the tunnel of a visitor websocket
        here; close (1001) the visitors of instances nobody listens for any
        more (killed), which an idle websocket would otherwise never notice.
        """
        owners = {stream.owner for stream in self.streams.values()
                  if isinstance(stream.owner, str)}
        for owner in owners:
            d = self._publish(owner, envelope.Probe())
            d.addCallback(self._probed, owner)

    def _probed(self, receivers, owner):
        if receivers != 0:
            return
        gone = [sid for sid, stream in self.streams.items() if stream.owner == owner]
        for stream_id in gone:
            self.streams.pop(stream_id).visitor.tunnel_lost(
                "the tunnel's proxy instance is gone")

    def throttle_stream(self, stream_id, paused):
        """
        Stop (C{paused}) or resume reading the visitor of stream
        C{stream_id}, if it is on this instance: its frames wait for their
        pace to a v1 client (L{FramePacer}).
        """
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.visitor.throttle(paused)

    def reset_stream(self, stream_id):
        """
        Give up stream C{stream_id} on the tunnel side: its frames could not
        be paced (a visitor on another instance sending too fast for a v1
        client).  The client is told the visitor closed, the visitor that
        the tunnel is gone.
        """
        teardown = encode(WSTeardown(id=stream_id))
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            if not isinstance(stream.owner, str) and stream.owner is not None:
                stream.owner.send_raw(teardown)
            stream.visitor.tunnel_lost("websocket too fast for the tunnel client")
            return
        relay = self.relays.find(stream_id)
        if relay is not None:
            relay.connection.send_raw(teardown)
            self._fail_remote(stream_id, "websocket too fast for the tunnel client")

    def forget_stream(self, stream_id):
        """
        Drop a stream without telling the tunnel (it is already gone).
        """
        self.streams.pop(stream_id, None)

    def stream_from_tunnel(self, connection, message, raw):
        """
        A ws-message or ws-teardown from a tunnel connection: deliver it to
        the visitor here, or relay it to the instance that has the visitor.
        """
        stream_id = message.id
        stream = self.streams.get(stream_id)
        teardown = type(message) is not WSMessage
        if stream is not None and stream.owner is connection:
            if teardown:
                del self.streams[stream_id]
            stream.visitor.deliver(message)
            return
        relay = self.relays.get(stream_id, connection)
        if relay is not None:
            if teardown:
                self.relays.drop(stream_id)
            self._publish(relay.origin, envelope.Answer(raw))
            return
        self._log.debug(
            "{type} for unknown websocket {id} ignored",
            type=type(message).__name__, id=stream_id,
        )

    # -- bus ---------------------------------------------------------------

    def _bus_received(self, data):
        try:
            received = envelope.decode(data)
            self._received[type(received)](self, received)
        except (EnvelopeError, MessageError):
            self._log.failure("malformed bus envelope ignored")

    def _frame_received(self, frame):
        connection = self.local.get(frame.client_id)
        if connection is not None:
            connection.send_frame(None, adapt_to(connection.features, frame.raw))

    def _teardown_received(self, teardown):
        self.relays.drop(teardown.stream_id)
        connection = self.local.get(teardown.client_id)
        if connection is not None:
            connection.send_frame(
                teardown.stream_id, adapt_to(connection.features, teardown.raw), True)

    def _probe_received(self, probe):
        pass  # being subscribed is the answer

    def _remote_answer(self, answer):
        message = decode(answer.raw)
        message_type = type(message)
        if message_type is WSMessage or message_type is WSTeardown:
            stream = self.streams.get(message.id)
            if stream is not None:
                if message_type is WSTeardown:
                    del self.streams[message.id]
                stream.visitor.deliver(message)
            return
        # The owner recorded for a remote request is the instance id; any
        # instance may answer (the tunnel may have moved), so do not check.
        self.pending.resolve(message.id, message)

    def _remote_failed(self, failed):
        message_id, reason = failed.message_id, failed.reason
        if self.pending.fail(message_id, RemoteFailure(reason)):
            return
        stream = self.streams.pop(message_id, None)
        if stream is not None:
            stream.visitor.tunnel_lost(reason)

    def _relay(self, request):
        connection = self.local.get(request.client_id)
        if connection is None:
            self._publish(request.origin, envelope.Failed(
                request.message_id, "tunnel is not connected here"))
            return
        raw = adapt_to(connection.features, request.raw)
        self.relays.add(request.message_id, request.origin, connection)
        connection.send_raw(raw)

    def _taken_over(self, taken_over):
        client_id = taken_over.client_id
        connection = self.local.pop(client_id, None)
        if connection is not None:
            self._log.info(
                "tunnel {client_id} registered on another instance: closing ours",
                client_id=client_id,
            )
            connection.tunnel_taken_over(client_id)

    def _fail_remote(self, message_id, reason):
        relay = self.relays.drop(message_id)
        if relay is not None:
            self._publish(relay.origin, envelope.Failed(message_id, reason))

    def _publish(self, instance, outgoing):
        d = self._bus.publish(instance_channel(instance), envelope.encode(outgoing))
        d.addErrback(self._publish_failed)
        return d

    def _publish_failed(self, failure):
        if failure.check(BusUnavailable):
            self._log.warn("bus unavailable: {error}", error=failure.getErrorMessage())
        else:
            self._log.failure("bus publish failed", failure)
        return None

    _received = {
        envelope.Answer: _remote_answer,
        envelope.Request: _relay,
        envelope.Frame: _frame_received,
        envelope.Teardown: _teardown_received,
        envelope.Failed: _remote_failed,
        envelope.TakenOver: _taken_over,
        envelope.Probe: _probe_received,
    }


__all__ = ["TunnelHub", "TunnelOffline", "BusUnavailable", "RemoteFailure",
           "instance_channel"]
