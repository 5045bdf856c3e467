"""
Streams to a tunnel another instance holds, from the visitors here.

A visitor's request or websocket for a tunnel held elsewhere rides a
L{StreamSession} exactly as it would on a tunnel connection here; only the
session's frames travel over the bus (as L{envelope.TunnelFrame} to the
instance holding the tunnel, which relays them unchanged but for the stream
id: L{stream_relay}).  Flow control is end to end: the window is the tunnel
client's, its WINDOW_UPDATEs cross the bus like every other frame, so a fast
producer on one side and a slow consumer on the other keep at most one
window per stream in flight -- in Redis's buffers included.

A frame the bus could not deliver breaks its session (every stream on it is
reset, the visitor sees a 502 or an aborted connection): the stream layer
has no retransmission, so a lost frame must never go unnoticed.
"""

from twisted.logger import Logger

from ..bus import envelope
from ..bus.interface import BusUnavailable
from ..features import SUPPORTED
from ..streams import frames
from ..streams.frames import FrameError, RESET, WINDOW_UPDATE
from ..streams.session import StreamIds, StreamSession

#: Why the streams to a tunnel on another instance are reset.
INSTANCE_GONE = "the tunnel's proxy instance is gone"


class RemoteTunnel:
    """
    Tunnel C{client_id} as held by instance C{instance}, seen from here:
    it has what a visitor's stream needs of a tunnel connection
    (C{streams}, C{features}).  Each visitor (request or websocket) gets
    its own, so nothing outlives the streams: the frames that come back
    find their session by stream id (L{RemoteTunnels}).

    @ivar streams: the L{StreamSession} of the visitor here.
    """

    _log = Logger()
    #: A streams-speaking client of ours negotiates every extension; the
    #: instance holding the tunnel adapts the head when it did not.
    features = SUPPORTED

    def __init__(self, tunnels, client_id, instance):
        self._tunnels = tunnels
        self.client_id = client_id
        self.instance = instance
        self.streams = StreamSession(self._send, allocate_id=self._allocate_id,
                                     on_forget=tunnels.forget_stream)

    def __repr__(self):
        return "<RemoteTunnel {} on {}>".format(self.client_id, self.instance)

    def _allocate_id(self):
        return self._tunnels.allocate(self)

    def _send(self, frame):
        d = self._tunnels.publish(self.instance, envelope.TunnelFrame(
            self.client_id, self._tunnels.instance_id, frame))
        d.addCallbacks(self._delivered, self._undelivered)

    def _delivered(self, receivers):
        if receivers == 0:
            self._tunnels.instance_gone(self)

    def _undelivered(self, failure):
        if not failure.check(BusUnavailable):
            self._log.failure("publishing a stream frame failed", failure)
        self.lost("the bus is unavailable: " + failure.getErrorMessage())

    def received(self, frame):
        """
        A frame from the instance holding the tunnel.
        """
        try:
            self.streams.received(frame)
        except FrameError as e:
            self._log.warn("tunnel {client_id} on {instance}: bad stream frame ({error})",
                           client_id=self.client_id, instance=self.instance,
                           error=str(e))
            self.lost("bad stream frame from the tunnel's instance")

    def lost(self, reason):
        """
        Frames no longer reach the tunnel: reset every stream.
        """
        if not self.streams.closed:
            self.streams.connection_lost(reason)

    def reset(self, reason):
        """
        Reset every stream, here and (if the bus carries it) on the
        instance holding the tunnel, which then forgets its relays at once.
        """
        for stream_id in list(self.streams.streams):
            d = self._tunnels.publish(self.instance, envelope.TunnelFrame(
                self.client_id, self._tunnels.instance_id,
                frames.encode(RESET, 0, stream_id, reason.encode("utf-8")[:500])))
            d.addErrback(lambda f: None)
        self.lost(reason)


class RemoteTunnels:
    """
    The streams of visitors here to tunnels held elsewhere, by stream id:
    one id space for every L{RemoteTunnel} of this instance, so an id is
    never reused while a frame for its predecessor may still be on the bus.

    @param publish: C{publish(instance, envelope)} returns a L{Deferred} of
        the number of receivers.
    @param gone: called with C{(client_id, instance)} when nobody listens
        for that instance any more (it died holding the tunnel).
    """

    _log = Logger()

    def __init__(self, instance_id, publish, gone=lambda client_id, instance: None):
        self.instance_id = instance_id
        self.publish = publish
        self._gone = gone
        self._ids = StreamIds()
        self._streams = {}

    def __len__(self):
        return len(self._streams)

    def get(self, client_id, instance):
        """
        A new L{RemoteTunnel} of C{client_id} held by C{instance}.
        """
        return RemoteTunnel(self, client_id, instance)

    def allocate(self, tunnel):
        """
        An id for a new stream of C{tunnel}.
        """
        while True:
            stream_id = self._ids()
            if stream_id not in self._streams:
                self._streams[stream_id] = tunnel
                return stream_id

    def forget_stream(self, stream_id):
        self._streams.pop(stream_id, None)

    def instance_gone(self, tunnel):
        """
        Nobody listens for C{tunnel}'s instance: its streams end as for a
        tunnel nobody holds.
        """
        if not tunnel.streams.closed:
            self._gone(tunnel.client_id, tunnel.instance)
        tunnel.lost(INSTANCE_GONE)

    def received(self, frame):
        """
        A L{envelope.VisitorFrame} from the instance holding a tunnel.
        """
        try:
            kind, _, stream_id, _, _ = frames.decode(frame.frame)
        except FrameError as e:
            self._log.warn("bad stream frame from instance {origin} ignored: {error}",
                           origin=frame.origin, error=str(e))
            return
        tunnel = self._streams.get(stream_id)
        if (tunnel is not None and tunnel.instance == frame.origin
                and tunnel.client_id == frame.client_id):
            tunnel.received(frame.frame)
            return
        if kind != RESET and kind != WINDOW_UPDATE:
            # A stream already forgotten here: the other side stops it.
            d = self.publish(frame.origin, envelope.TunnelFrame(
                frame.client_id, self.instance_id,
                frames.encode(RESET, 0, stream_id, b"unknown stream")))
            d.addErrback(lambda f: None)

    def probe(self, probe):
        """
        Ask every instance that streams here run to whether it is still
        there: C{probe(instance)} returns a L{Deferred} of the number of
        receivers; 0 resets those streams.
        """
        for instance in {tunnel.instance for tunnel in self._streams.values()}:
            probe(instance).addCallback(self._probed, instance)

    def _probed(self, receivers, instance):
        if receivers == 0:
            for tunnel in {t for t in self._streams.values() if t.instance == instance}:
                self.instance_gone(tunnel)

    def clear(self, reason):
        """
        Reset every stream, here and toward the instances holding their
        tunnels (the proxy is stopping, or the bus lost frames).
        """
        for tunnel in set(self._streams.values()):
            tunnel.reset(reason)
