"""
Streams this instance relays between a tunnel it holds and the visitors of
other instances (L{remote_streams} is the visitors' side).

A relayed stream is a stream id reserved on the tunnel connection's session
(L{StreamSession.relay}); frames cross it unchanged but for the stream id,
which is rewritten between the visitor instance's and the tunnel's, so flow
control stays end to end and this instance buffers nothing.  A relay ends
when both sides have finished, either resets, the tunnel's connection goes,
a frame cannot be delivered to the visitor's instance, or nothing crossed
it for the idle timeout.
"""

from collections import deque

from twisted.logger import Logger

from ..bus import envelope
from ..bus.interface import BusUnavailable
from ..features import MULTI_HEADER, RAW_PATH
from ..streams import frames
from ..streams.frames import FIN, FrameError, HEAD, RESET, SYN, WINDOW_UPDATE, WS_CLOSE
from .relay import adapt_head


def _frame(kind, flags, stream_id, length, payload):
    if kind == WINDOW_UPDATE:
        return frames.window_update(stream_id, length)
    return frames.encode(kind, flags, stream_id, payload)


def _ends(kind, flags):
    return flags & FIN or kind == WS_CLOSE


class RelayedStream:
    """
    One visitor stream of instance C{origin}, relayed over a tunnel
    connection here (what its session holds under C{id}).

    @ivar remote_id: the stream's id on the visitor's instance.
    """

    __slots__ = ("id", "session", "origin", "client_id", "remote_id", "closed",
                 "visitor_done", "tunnel_done", "last_activity", "timer", "_relays")

    def __init__(self, relays, session, stream_id, origin, client_id, remote_id):
        self._relays = relays
        self.session = session
        self.id = stream_id
        self.origin = origin
        self.client_id = client_id
        self.remote_id = remote_id
        self.closed = False
        self.visitor_done = False
        self.tunnel_done = False
        self.last_activity = 0.0
        self.timer = None

    @property
    def key(self):
        return (self.origin, self.client_id, self.remote_id)

    # What the tunnel's session calls, as it would on a Stream.

    def _received(self, kind, flags, payload):
        self._relays.to_visitor(
            self, frames.encode(kind, flags, self.remote_id, payload), kind, flags)

    def _credit(self, increment):
        self._relays.to_visitor(
            self, frames.window_update(self.remote_id, increment), WINDOW_UPDATE, 0)

    def _connection_lost(self, reason):
        self.closed = True
        self._relays.tunnel_lost(self, reason)


class StreamRelays:
    """
    The relayed streams of one instance, by C{(origin, client_id,
    remote_id)}.

    @param hub: the L{TunnelHub} (its C{local} tunnels, C{instance_id} and
        C{publish}).
    @param idle_timeout: seconds a relay may carry nothing (0: forever).
    """

    _log = Logger()

    def __init__(self, hub, clock, idle_timeout=300.0):
        self._hub = hub
        self._clock = clock
        self.idle_timeout = idle_timeout
        self._relays = {}
        # Resets for visitors' instances that the bus could not take: sent
        # once it is back (bounded: the oldest are dropped, their visitors
        # end at their own timeouts).
        self._owed = deque(maxlen=10000)

    def __len__(self):
        return len(self._relays)

    # -- from the visitors' instances ----------------------------------------

    def from_visitor(self, tunnel_frame):
        """
        A L{envelope.TunnelFrame}: relay it to the tunnel.
        """
        try:
            kind, flags, remote_id, length, payload = frames.decode(tunnel_frame.frame)
        except FrameError as e:
            self._log.warn("bad stream frame from instance {origin} ignored: {error}",
                           origin=tunnel_frame.origin, error=str(e))
            return
        origin, client_id = tunnel_frame.origin, tunnel_frame.client_id
        relayed = self._relays.get((origin, client_id, remote_id))
        if kind == HEAD and flags & SYN:
            if relayed is not None:
                self._end(relayed, "stream id reused")
            self._open(origin, client_id, remote_id, flags, payload)
            return
        if relayed is None:
            if kind != RESET and kind != WINDOW_UPDATE:
                self._reset_visitor(origin, client_id, remote_id, "unknown stream")
            return
        relayed.last_activity = self._clock.seconds()
        relayed.session.send_frame(_frame(kind, flags, relayed.id, length, payload))
        if kind == RESET:
            self._forget(relayed)
        elif _ends(kind, flags):
            relayed.visitor_done = True
            self._maybe_done(relayed)

    def _open(self, origin, client_id, remote_id, flags, payload):
        connection = self._hub.pick(client_id)
        session = getattr(connection, "streams", None)
        if session is None or session.closed:
            reason = ("tunnel is not connected here" if connection is None
                      else "tunnel does not speak streams")
            self._reset_visitor(origin, client_id, remote_id, reason)
            return
        features = connection.features
        if not (RAW_PATH in features and MULTI_HEADER in features):
            try:
                payload = adapt_head(features, frames.decode_head(payload))
            except FrameError as e:
                self._reset_visitor(origin, client_id, remote_id, str(e))
                return
        relayed = session.relay(lambda session, stream_id: RelayedStream(
            self, session, stream_id, origin, client_id, remote_id))
        self._relays[relayed.key] = relayed
        relayed.last_activity = self._clock.seconds()
        if self.idle_timeout:
            relayed.timer = self._clock.callLater(self.idle_timeout,
                                                  self._check_idle, relayed)
        session.send_frame(frames.encode(HEAD, flags, relayed.id, payload))
        if flags & FIN:
            relayed.visitor_done = True

    # -- from the tunnel -----------------------------------------------------

    def to_visitor(self, relayed, frame, kind, flags):
        """
        A frame from the tunnel on C{relayed}: publish it to the visitor's
        instance.
        """
        relayed.last_activity = self._clock.seconds()
        d = self._hub.publish(relayed.origin, envelope.VisitorFrame(
            relayed.client_id, self._hub.instance_id, frame))
        d.addCallbacks(self._delivered, self._undelivered,
                       callbackArgs=(relayed,), errbackArgs=(relayed,))
        if kind == RESET:
            self._forget(relayed)
        elif _ends(kind, flags):
            relayed.tunnel_done = True
            self._maybe_done(relayed)

    def _delivered(self, receivers, relayed):
        if receivers == 0:
            self._end(relayed, "the visitor's proxy instance is gone")

    def _undelivered(self, failure, relayed):
        if not failure.check(BusUnavailable):
            self._log.failure("publishing a stream frame failed", failure)
        # The frame is lost: the stream cannot go on, on either side.
        if self._forget(relayed) and not relayed.session.closed:
            relayed.session.send_frame(
                frames.encode(RESET, 0, relayed.id, b"the bus is unavailable"))
        self._reset_visitor(relayed.origin, relayed.client_id, relayed.remote_id,
                            "the bus is unavailable")

    def tunnel_lost(self, relayed, reason):
        """
        The tunnel connection under C{relayed} is gone.
        """
        if self._forget(relayed):
            self._reset_visitor(relayed.origin, relayed.client_id,
                                relayed.remote_id, reason)

    # -- endings -------------------------------------------------------------

    def _check_idle(self, relayed):
        relayed.timer = None
        if self._relays.get(relayed.key) is not relayed:
            return
        quiet = self._clock.seconds() - relayed.last_activity
        if quiet < self.idle_timeout:
            relayed.timer = self._clock.callLater(self.idle_timeout - quiet,
                                                  self._check_idle, relayed)
            return
        self._log.info("tunnel {client_id}: relayed stream idle for {idle:g} s, "
                       "resetting it", client_id=relayed.client_id,
                       idle=self.idle_timeout)
        self._end(relayed, "idle")
        self._reset_visitor(relayed.origin, relayed.client_id, relayed.remote_id,
                            "idle")

    def _end(self, relayed, reason):
        """
        Give up C{relayed}: the tunnel's side is reset.
        """
        if self._forget(relayed) and not relayed.session.closed:
            relayed.session.send_frame(
                frames.encode(RESET, 0, relayed.id, reason.encode("utf-8")))

    def _maybe_done(self, relayed):
        if relayed.visitor_done and relayed.tunnel_done:
            self._forget(relayed)

    def _forget(self, relayed):
        """
        @return: whether C{relayed} was still open.
        """
        if self._relays.get(relayed.key) is not relayed:
            return False
        del self._relays[relayed.key]
        relayed.closed = True
        relayed.session.forget_relay(relayed)
        if relayed.timer is not None:
            if relayed.timer.active():
                relayed.timer.cancel()
            relayed.timer = None
        return True

    def _reset_visitor(self, origin, client_id, remote_id, reason):
        reset = envelope.VisitorFrame(
            client_id, self._hub.instance_id,
            frames.encode(RESET, 0, remote_id, reason.encode("utf-8")[:500]))
        d = self._hub.publish(origin, reset)
        d.addErrback(self._owe, origin, reset)

    def _owe(self, failure, origin, reset):
        if failure.check(BusUnavailable):
            self._owed.append((origin, reset))

    def pay_resets(self):
        """
        The bus is back: send the visitors' instances the resets it could
        not take, so their visitors do not wait for a timeout.
        """
        owed, self._owed = self._owed, deque(maxlen=self._owed.maxlen)
        for origin, reset in owed:
            self._hub.publish(origin, reset).addErrback(lambda f: None)

    def probe(self, probe):
        """
        Ask every instance with visitors on relays here whether it is still
        there: C{probe(instance)} returns a L{Deferred} of the number of
        receivers; 0 ends its relays (an idle stream of a killed instance
        would otherwise wait for the idle timeout).
        """
        for origin in {relayed.origin for relayed in self._relays.values()}:
            probe(origin).addCallback(self._probed, origin)

    def _probed(self, receivers, origin):
        if receivers == 0:
            for relayed in [r for r in self._relays.values() if r.origin == origin]:
                self._end(relayed, "the visitor's proxy instance is gone")

    def clear(self, reason="the proxy is stopping"):
        """
        Reset every relay both ways, with C{reason} (the proxy is stopping,
        or the bus lost frames).
        """
        for relayed in list(self._relays.values()):
            self._end(relayed, reason)
            self._reset_visitor(relayed.origin, relayed.client_id, relayed.remote_id,
                                reason)
