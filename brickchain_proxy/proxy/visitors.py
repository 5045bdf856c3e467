"""
The visitor websockets on this instance ("streams"), and the frames that
cross the tunnel for them.

A visitor websocket is opened with a ws-request correlated like any
request (L{VisitorStreams.open}); after that, frames flow without
correlation, keyed by the stream id (the ws-request's @id): here in
L{VisitorStreams.streams} on the visitor's side, and in the hub's relay
table on the tunnel's side when the two are different instances.
"""

from twisted.internet.defer import CancelledError, TimeoutError
from twisted.logger import Logger

from ..bus import envelope
from ..messages import WSMessage, WSTeardown, encode


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


class VisitorStreams:
    """
    The visitor websockets of one hub.

    @ivar streams: stream id -> L{Stream}.
    """

    _log = Logger()

    def __init__(self, hub):
        self._hub = hub
        self.streams = {}

    def open(self, client_id, stream_id, raw, visitor):
        """
        Send the ws-request C{raw} (whose @id is C{stream_id}) for a visitor
        websocket, and register the visitor so frames that follow the
        ws-response find it at once.

        @return: a L{Deferred} firing with the L{WSResponse} (failing as
            L{request} does); on failure or cancel the stream is forgotten.
        """
        stream = Stream(visitor, client_id)
        self.streams[stream_id] = stream
        connection = self._hub.pick(client_id)
        if connection is not None:
            stream.owner = connection
            d = self._hub.pending.expect(stream_id, connection, self._hub.request_timeout)
            connection.send_raw(raw)
        else:
            d = self._hub._remote_request(client_id, stream_id, raw, stream)

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
                    self._hub._publish(stream.owner, envelope.Teardown(
                        client_id, stream_id, teardown))
                else:
                    stream.owner.send_frame(stream_id, teardown, True)
            return f

        d.addCallbacks(refused, failed)
        return d

    def count(self, client_id):
        """
        How many visitor websockets of C{client_id} are open here.
        """
        return sum(1 for stream in self.streams.values()
                   if stream.client_id == client_id)

    def to_tunnel(self, stream_id, raw, last=False):
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
            self._hub._publish(owner, envelope.Teardown(stream.client_id, stream_id, raw))
        else:
            d = self._hub._publish(owner, envelope.Frame(stream.client_id, raw))
            d.addCallback(self._check_stream_receiver, stream_id)
        return True

    def _check_stream_receiver(self, receivers, stream_id):
        if receivers == 0:
            # The instance holding the tunnel is gone.
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                stream.visitor.tunnel_lost("the tunnel's proxy instance is gone")

    def probe_remote(self):
        """
        Probe every instance that holds the tunnel of a visitor websocket
        here; close (1001) the visitors of instances nobody listens for any
        more (killed), which an idle websocket would otherwise never notice.
        """
        owners = {stream.owner for stream in self.streams.values()
                  if isinstance(stream.owner, str)}
        for owner in owners:
            d = self._hub._publish(owner, envelope.Probe())
            d.addCallback(self._probed, owner)

    def _probed(self, receivers, owner):
        if receivers != 0:
            return
        gone = [sid for sid, stream in self.streams.items() if stream.owner == owner]
        for stream_id in gone:
            self.streams.pop(stream_id).visitor.tunnel_lost(
                "the tunnel's proxy instance is gone")

    def throttle(self, stream_id, paused):
        """
        Stop (C{paused}) or resume reading the visitor of stream
        C{stream_id}, if it is on this instance: its frames wait for their
        pace to a v1 client (L{FramePacer}).
        """
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.visitor.throttle(paused)

    def reset(self, stream_id):
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
        relay = self._hub.relays.find(stream_id)
        if relay is not None:
            relay.connection.send_raw(teardown)
            self._hub._fail_remote(stream_id, "websocket too fast for the tunnel client")

    def register(self, stream_id, visitor, client_id, connection):
        """
        Count a visitor websocket that rides a stream of C{connection}
        (it needs no frame routing here, but counts against the tunnel's
        limit and is closed when the connection goes or the proxy stops).
        """
        stream = Stream(visitor, client_id)
        stream.owner = connection
        self.streams[stream_id] = stream

    def forget(self, stream_id):
        """
        Drop a stream without telling the tunnel (it is already gone).
        """
        self.streams.pop(stream_id, None)

    def from_tunnel(self, connection, message, raw):
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
        relay = self._hub.relays.get(stream_id, connection)
        if relay is not None:
            if teardown:
                self._hub.relays.drop(stream_id)
            d = self._hub._publish(relay.origin, envelope.Answer(raw))
            if not teardown:
                d.addCallback(self._hub.relay_published, stream_id, relay)
            return
        self._log.debug(
            "{type} for unknown websocket {id} ignored",
            type=type(message).__name__, id=stream_id,
        )

    def connection_lost(self, connection, reason):
        """
        The tunnel connection C{connection} is gone: close (1001) every
        visitor whose websocket ran over it.
        """
        lost = [sid for sid, st in self.streams.items() if st.owner is connection]
        for stream_id in lost:
            self.streams.pop(stream_id).visitor.tunnel_lost(reason)

    def from_remote(self, message):
        """
        A ws-message or ws-teardown for a visitor here, from the instance
        holding its tunnel.
        """
        stream = self.streams.get(message.id)
        if stream is not None:
            if type(message) is WSTeardown:
                del self.streams[message.id]
            stream.visitor.deliver(message)

    def remote_failed(self, stream_id, reason):
        """
        The instance holding the tunnel gave up websocket C{stream_id}.

        @return: L{True} if it was a visitor here.
        """
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return False
        stream.visitor.tunnel_lost(reason)
        return True
