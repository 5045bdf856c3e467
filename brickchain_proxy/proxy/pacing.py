"""
Pacing of websocket frames for v1 (Go) tunnel clients.

The Go client handles every ws-message it reads in a goroutine of its own,
so two frames of one websocket that reach it back to back race each other
to its local service and may arrive there out of order.  Its websocket
bridge also sleeps 10 ms after every frame, so frames that come faster than
that pile up as goroutines waiting on one lock, which Go does not grant in
order: a pace under ~10.5 ms narrows the damage but does not stop it
(measured with 1,000 frames: 0.005 s still reordered up to 455, 0.010 s up
to 4; 0.015 s none in ten runs).  The Go proxy hides this by sleeping 10 ms
per frame.  For a connection that negotiated no
features (a v1 client) this proxy instead spaces the frames *of each
stream* at least C{interval} seconds apart: a frame that finds its stream
idle for that long goes out at once, the others wait their turn on the
reactor's clock.  Streams do not wait for each other, and our own client
(which keeps order itself) is never paced.

A stream whose visitor sends faster than its pace has its visitor paused
once C{high_water} frames wait, and resumed when the queue is empty again;
a stream that cannot be paused (its visitor is on another instance) and
still queues more than C{max_queued} bytes is reset.
"""

from collections import deque

from twisted.logger import Logger


class _PacedStream:
    __slots__ = ("next_at", "queue", "queued", "timer", "throttled")

    def __init__(self, next_at):
        self.next_at = next_at
        self.queue = deque()
        self.queued = 0
        self.timer = None
        self.throttled = False


class FramePacer:
    """
    Spaces the frames of each stream at least C{interval} seconds apart.

    @param clock: provides C{seconds} and C{callLater}.
    @param interval: the least time between two frames of one stream.
    @param send: called with the raw bytes of each frame when it may go.
    @param throttle: called with C{(stream_id, paused)}: stop or resume
        reading the stream's visitor.
    @param overflow: called with C{stream_id} when a stream queued more
        than C{max_queued} bytes; its queue has been dropped.
    """

    _log = Logger()

    def __init__(self, clock, interval, send, throttle, overflow,
                 high_water=32, max_queued=4 * 1024 * 1024):
        self._clock = clock
        self.interval = interval
        self._send = send
        self._throttle = throttle
        self._overflow = overflow
        self.high_water = high_water
        self.max_queued = max_queued
        self._streams = {}

    def __len__(self):
        return len(self._streams)

    def send(self, stream_id, raw, last=False):
        """
        Send C{raw}, a frame of stream C{stream_id}, when its turn comes.

        @param last: it is the stream's ws-teardown; the stream is forgotten
            once it has gone out.
        """
        now = self._clock.seconds()
        stream = self._streams.get(stream_id)
        if stream is None:
            self._send(raw)
            if not last:
                self._streams[stream_id] = _PacedStream(now + self.interval)
            return
        if not stream.queue and now >= stream.next_at:
            self._send(raw)
            stream.next_at = now + self.interval
            if last:
                del self._streams[stream_id]
            return
        stream.queue.append((raw, last))
        stream.queued += len(raw)
        if stream.timer is None:
            stream.timer = self._clock.callLater(
                max(0.0, stream.next_at - now), self._release, stream_id)
        if stream.queued > self.max_queued:
            self._log.warn(
                "websocket {stream_id} of a v1 client: {size} bytes waiting "
                "for their pace; resetting it", stream_id=stream_id,
                size=stream.queued)
            self.forget(stream_id)
            self._overflow(stream_id)
        elif not stream.throttled and len(stream.queue) >= self.high_water:
            stream.throttled = True
            self._throttle(stream_id, True)

    def _release(self, stream_id):
        stream = self._streams[stream_id]
        raw, last = stream.queue.popleft()
        stream.queued -= len(raw)
        self._send(raw)
        if last:
            del self._streams[stream_id]
            return
        stream.next_at = self._clock.seconds() + self.interval
        if stream.queue:
            stream.timer = self._clock.callLater(self.interval, self._release,
                                                 stream_id)
            return
        stream.timer = None
        if stream.throttled:
            stream.throttled = False
            self._throttle(stream_id, False)

    def forget(self, stream_id):
        """
        Drop a stream and whatever still waits in it.
        """
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.timer is not None:
            stream.timer.cancel()

    def stop(self):
        """
        Drop every stream (the connection is gone).
        """
        for stream_id in list(self._streams):
            self.forget(stream_id)
