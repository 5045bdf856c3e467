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

Visitor websockets ("streams") are L{visitors.VisitorStreams}, the hub's
C{websockets}.

A tunnel whose connection speaks the stream layer is recorded in the
directory under its instance's *streams holder* (the instance id with
L{STREAMS_HOLDER_SUFFIX}), which the instance listens on too: any instance
can then tell from one lookup that the tunnel's streams can reach it
(L{remote_streams}, relayed there by L{stream_relay}), and an instance that
does not know the suffix still reaches it.
"""

import uuid

from twisted.internet.defer import CancelledError, succeed
from twisted.logger import Logger

from ..bus import envelope
from ..bus.envelope import EnvelopeError
from ..bus.interface import BusUnavailable
from ..correlation import PendingRequests, TunnelGone
from ..errors import CLOSE_GOING_AWAY, RemoteFailure, TunnelOffline
from ..features import POOL, SUPPORTED
from ..messages import MessageError, WSMessage, WSResponse, WSTeardown, decode, encode
from .relay import RelayTable, adapt_to
from .remote_streams import RemoteTunnels
from .stream_relay import StreamRelays
from .visitors import VisitorStreams

#: Appended to an instance id in the directory: the tunnel speaks streams.
STREAMS_HOLDER_SUFFIX = "+streams"


def _maybe_known(failure):
    # The directory cannot be asked: let the request try (and get its 503);
    # any other failure is a bug, and goes on.
    failure.trap(BusUnavailable)
    return True


def instance_channel(instance_id):
    """
    The bus channel an instance listens on.
    """
    return "brickproxy:instance:" + instance_id


def parse_holder(holder):
    """
    The instance id and whether the tunnel speaks streams, from a
    directory entry (L{STREAMS_HOLDER_SUFFIX}).
    """
    if holder.endswith(STREAMS_HOLDER_SUFFIX):
        return holder[:-len(STREAMS_HOLDER_SUFFIX)], True
    return holder, False


class TunnelHub:
    """
    @ivar local: clientID -> connection, for the tunnels this instance holds.
    @ivar pending: requests waiting for a reply (L{PendingRequests}).
    @ivar websockets: the visitor websockets here (L{VisitorStreams}).
    @ivar streams: stream id -> L{Stream}, their table.
    @ivar relays: the requests and websockets this instance relays for
        other instances (L{RelayTable}).
    @ivar relayed_streams: the streams this instance relays between its
        tunnels and other instances' visitors (L{StreamRelays}).
    @ivar remote_tunnels: the streams of visitors here to tunnels held
        elsewhere (L{RemoteTunnels}).
    @ivar pools: clientID -> the connections of its pool members here, when
        more than one client registered it as a pool (L{POOL}); C{local}
        holds one of them.
    """

    _log = Logger()

    def __init__(self, reactor, bus, directory, request_timeout=30.0,
                 instance_id=None, stream_idle_timeout=300.0):
        self._reactor = reactor
        self._bus = bus
        self._directory = directory
        self.request_timeout = request_timeout
        self.instance_id = instance_id or uuid.uuid4().hex
        self.local = {}
        self.pools = {}
        self.pending = PendingRequests(reactor)
        self.websockets = VisitorStreams(self)
        self.streams = self.websockets.streams
        # The asking instance gives up after request_timeout; a little later
        # its relay here is forgotten too.
        self.relays = RelayTable(reactor, request_timeout + 5)
        self.relayed_streams = StreamRelays(self, reactor, stream_idle_timeout)
        self.remote_tunnels = RemoteTunnels(self.instance_id, self.publish,
                                            self._instance_gone)
        self._channels = [instance_channel(self.instance_id),
                          instance_channel(self.instance_id + STREAMS_HOLDER_SUFFIX)]

    # -- lifecycle ---------------------------------------------------------

    def start(self):
        """
        Listen on this instance's bus channels.
        """
        plain, streams = self._channels
        d = self._bus.subscribe(plain, self._bus_received)
        d.addCallback(lambda _: self._bus.subscribe(streams, self._bus_received))
        return d

    def stop(self):
        """
        Stop listening, fail everything still pending, forget tunnels.
        """
        self.relays.clear()
        self.relayed_streams.clear()
        self.remote_tunnels.clear("the proxy is stopping")
        connections = set(self.local.values())
        for members in self.pools.values():
            connections.update(members)
        for connection in connections:
            self.connection_lost(connection)
        plain, streams = self._channels
        d = self._bus.unsubscribe(streams, self._bus_received)
        d.addCallback(lambda _: self._bus.unsubscribe(plain, self._bus_received))
        return d

    def bus_interrupted(self):
        """
        The bus may have lost messages to this instance (Redis dropped our
        subscriber connection): reset every stream that crosses instances,
        here and toward the other instances, as a lost frame must never go
        unnoticed (L{remote_streams}).
        """
        reason = "the bus lost messages to this proxy instance"
        self.relayed_streams.clear(reason)
        self.remote_tunnels.clear(reason)

    def holder(self, connection):
        """
        What the directory records for a tunnel C{connection} carries here.
        """
        if getattr(connection, "streams", None) is not None:
            return self.instance_id + STREAMS_HOLDER_SUFFIX
        return self.instance_id

    # -- tunnels -----------------------------------------------------------

    def attach(self, client_id, connection):
        """
        C{connection} has registered C{client_id}.  The newest registration
        wins: an older connection holding the same clientID (here or on
        another instance) is told to go.

        A connection that negotiated L{POOL} joins the pool of the others
        that did instead: each keeps serving, and across instances a pool
        member never takes the directory entry from another instance's.

        @return: a L{Deferred} that fires when the directory has recorded it.
        """
        old = self.local.get(client_id)
        pooled = POOL in connection.features
        if (old is not None and old is not connection and pooled
                and POOL in old.features):
            members = self.pools.setdefault(client_id, [old])
            if connection not in members:
                members.append(connection)
            self._log.info("tunnel {client_id}: {count} clients in its pool",
                           client_id=client_id, count=len(members))
            return succeed(None)
        self.local[client_id] = connection
        if old is not None and old is not connection:
            self._log.info(
                "tunnel {client_id} registered again: closing the older connection",
                client_id=client_id,
            )
            for member in self.pools.pop(client_id, [old]):
                if member is not connection:
                    member.tunnel_taken_over(client_id)
        if pooled:
            d = self._directory.claim_if_free(client_id, self.holder(connection))
            d.addCallback(self._pool_claimed, client_id)
            d.addErrback(self._directory_failed,
                         "could not record tunnel {client_id} in the directory",
                         client_id)
            return d
        d = self._directory.claim(client_id, self.holder(connection))

        def claimed(previous):
            if previous is not None and parse_holder(previous)[0] != self.instance_id:
                return self._bus.publish(
                    instance_channel(previous),
                    envelope.encode(envelope.TakenOver(client_id, self.instance_id)),
                )

        d.addCallback(claimed)
        d.addErrback(self._directory_failed,
                     "could not record tunnel {client_id} in the directory",
                     client_id)
        return d

    def _pool_claimed(self, holder, client_id):
        if holder is not None and parse_holder(holder)[0] != self.instance_id:
            self._log.info(
                "tunnel {client_id}: its pool is held by instance {owner} too; "
                "visitors here use the members here", client_id=client_id,
                owner=parse_holder(holder)[0])

    def pick(self, client_id):
        """
        The connection a new request or websocket for C{client_id} goes
        over: the tunnel's connection here, or the next member of its pool
        (round robin); L{None} if this instance holds no connection for it.
        """
        members = self.pools.get(client_id)
        if members is None:
            return self.local.get(client_id)
        member = members.pop(0)
        members.append(member)
        return member

    def detach(self, client_id, connection):
        """
        C{connection} no longer carries C{client_id}.
        """
        members = self.pools.get(client_id)
        if members is not None and connection in members:
            # A pool member leaves; the others keep the tunnel here.
            members.remove(connection)
            if self.local.get(client_id) is connection:
                self.local[client_id] = members[0]
            if len(members) == 1:
                del self.pools[client_id]
            self._log.info("tunnel {client_id}: a pool member left, {count} left",
                           client_id=client_id, count=len(members))
            return
        if self.local.get(client_id) is connection:
            del self.local[client_id]
            d = self._directory.release(client_id, self.holder(connection))
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
        held = {c for c, conn in self.local.items() if conn is connection}
        held.update(c for c, members in self.pools.items() if connection in members)
        for client_id in held:
            self.detach(client_id, connection)
        failed = self.pending.fail_owner(
            connection, TunnelGone("the tunnel's connection was lost")
        )
        self.websockets.connection_lost(connection, "the tunnel's connection was lost")
        for message_id in self.relays.over(connection):
            self._fail_remote(message_id, "the tunnel's connection was lost")
        return failed

    def renew_all(self):
        """
        Renew this instance's directory entries (for directories with a TTL).
        """
        for client_id, connection in list(self.local.items()):
            if POOL in connection.features:
                # Keep the entry if ours, take it if free; another
                # instance's pool members may hold it.
                d = self._directory.claim_if_free(client_id, self.holder(connection))
                d.addErrback(self._renew_failed)
                continue
            d = self._directory.renew(client_id, self.holder(connection))

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

    def tunnel_known(self, client_id):
        """
        Whether some instance holds C{client_id}, as far as can be told:
        L{True} at once for a tunnel here, else what the directory says
        (L{True} too when the directory cannot be asked: the request then
        gets its 503 from L{request}).

        @return: a L{Deferred} of a L{bool}.
        """
        if client_id in self.local:
            return succeed(True)
        d = self._directory.lookup(client_id)
        d.addCallbacks(self._held_elsewhere, _maybe_known)
        return d

    def _instance_gone(self, client_id, instance):
        # It died without releasing its tunnels: drop its stale entry.
        self._log.info("tunnel {client_id}: instance {owner} is gone",
                       client_id=client_id, owner=instance)
        self._directory.release(client_id, instance + STREAMS_HOLDER_SUFFIX).addErrback(
            lambda f: None)

    def _held_elsewhere(self, holder):
        return holder is not None and parse_holder(holder)[0] != self.instance_id

    def remote_tunnel(self, client_id):
        """
        The tunnel C{client_id} as streams reach it on another instance.

        @return: a L{Deferred} firing with its L{RemoteTunnel}, or L{None}
            when no other instance holds it over a connection that speaks
            streams, or the directory cannot be asked (the buffered path
            then answers).
        """
        d = self._directory.lookup(client_id)

        def found(holder):
            if holder is None:
                return None
            instance, streams = parse_holder(holder)
            if not streams or instance == self.instance_id:
                return None
            return self.remote_tunnels.get(client_id, instance)

        def failed(failure):
            failure.trap(BusUnavailable)
            return None

        d.addCallbacks(found, failed)
        return d

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
        connection = self.pick(client_id)
        if connection is not None:
            d = self.pending.expect(message_id, connection, self.request_timeout)
            connection.send_raw(raw)
            return d
        return self._remote_request(client_id, message_id, raw)

    def _remote_request(self, client_id, message_id, raw, stream=None):
        def found(owner):
            if owner is None or parse_holder(owner)[0] == self.instance_id:
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
            accepted = getattr(message, "ok", False)
            if accepted:
                # An accepted ws-response: the relay now carries the stream's
                # frames until one side tears it down.
                self.relays.keep_open(relay)
            else:
                self.relays.drop(message.id)
            d = self._publish(relay.origin, envelope.Answer(raw))
            if accepted:
                d.addCallback(self.relay_published, message.id, relay)
            return True
        if type(message) is WSResponse and message.ok:
            # A websocket accepted after its visitor gave up (or its relay
            # expired): nobody will ever use it, so the client closes it.
            self._log.info("websocket {id} accepted too late: closing it",
                           id=message.id)
            connection.send_raw(encode(WSTeardown(id=message.id)))
        return False

    def relay_published(self, receivers, message_id, relay):
        """
        What publishing a relayed websocket's answer or frame to its origin
        came to: nobody listening there (the instance is gone) ends the
        relay and the client's local websocket.  (L{None}, the bus being
        down, proves nothing.)
        """
        if receivers == 0 and self.relays.find(message_id) is relay:
            self.relays.drop(message_id)
            self._relay_origin_gone(message_id, relay)

    def _relay_origin_gone(self, message_id, relay):
        self._log.info(
            "relayed websocket {id}: instance {origin} of its visitor is gone; "
            "closing it", id=message_id, origin=relay.origin)
        teardown = encode(WSTeardown(id=message_id, code=CLOSE_GOING_AWAY,
                                     reason="the visitor's proxy instance is gone"))
        relay.connection.send_frame(message_id, adapt_to(relay.connection.features,
                                                         teardown), True)

    def probe_relay_origins(self):
        """
        Probe the instances whose visitors have websockets relayed here;
        end those of instances nobody listens for any more (killed), which
        an idle websocket would otherwise keep open for good.
        """
        for origin in self.relays.open_origins():
            d = self._publish(origin, envelope.Probe())
            d.addCallback(self._relay_origin_probed, origin)

    def _relay_origin_probed(self, receivers, origin):
        if receivers != 0:
            return  # listening, or the bus is down (None): keep them
        for message_id, relay in self.relays.drop_open_from(origin):
            self._relay_origin_gone(message_id, relay)

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
            self.websockets.from_remote(message)
            return
        # The owner recorded for a remote request is the instance id; any
        # instance may answer (the tunnel may have moved), so do not check.
        self.pending.resolve(message.id, message)

    def _remote_failed(self, failed):
        message_id, reason = failed.message_id, failed.reason
        if not self.pending.fail(message_id, RemoteFailure(reason)):
            self.websockets.remote_failed(message_id, reason)

    def _relay(self, request):
        connection = self.pick(request.client_id)
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
            for member in self.pools.pop(client_id, [connection]):
                member.tunnel_taken_over(client_id)

    def _fail_remote(self, message_id, reason):
        relay = self.relays.drop(message_id)
        if relay is not None:
            self._publish(relay.origin, envelope.Failed(message_id, reason))

    def publish(self, instance, outgoing):
        """
        Publish the envelope C{outgoing} to C{instance} (an id or a holder).

        @return: a L{Deferred} of the number of receivers, failing with
            L{BusUnavailable}.
        """
        return self._bus.publish(instance_channel(instance), envelope.encode(outgoing))

    def _publish(self, instance, outgoing):
        d = self.publish(instance, outgoing)
        d.addErrback(self._publish_failed)
        return d

    def probe_remote(self):
        """
        Probe the instances that visitors here stream to, those holding
        the tunnels of v1 visitor websockets here, and those whose visitors
        have websockets relayed here.
        """
        self.websockets.probe_remote()
        self.probe_relay_origins()

        def probe(instance):
            return self._publish(instance, envelope.Probe())

        self.remote_tunnels.probe(probe)
        self.relayed_streams.probe(probe)

    def _tunnel_frame(self, frame):
        self.relayed_streams.from_visitor(frame)

    def _visitor_frame(self, frame):
        self.remote_tunnels.received(frame)

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
        envelope.TunnelFrame: _tunnel_frame,
        envelope.VisitorFrame: _visitor_frame,
    }


__all__ = ["TunnelHub", "TunnelOffline", "BusUnavailable", "RemoteFailure",
           "instance_channel"]
