"""
Pacing of visitor websocket frames toward v1 (Go) tunnel clients, on a
L{Clock}: each stream's frames go out at least the interval apart, in order;
idle streams are not delayed; streams do not wait for each other; a visitor
faster than its pace is paused, and one that cannot be paused is reset.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from brickchain_proxy.proxy.pacing import FramePacer


class PacerFixture:
    def setUp(self):
        self.clock = Clock()
        self.sent = []
        self.throttled = []
        self.overflowed = []
        self.pacer = FramePacer(
            self.clock, 0.005, lambda raw: self.sent.append((self.clock.seconds(), raw)),
            lambda stream_id, paused: self.throttled.append((stream_id, paused)),
            self.overflowed.append, high_water=4, max_queued=100)

    def times(self):
        return [round(t, 6) for t, _ in self.sent]

    def frames(self):
        return [raw for _, raw in self.sent]


class FramePacerTests(PacerFixture, SynchronousTestCase):
    def test_first_frame_of_a_stream_goes_out_at_once(self):
        """A frame of a stream that has been idle is sent without waiting."""
        self.pacer.send("s", b"1")
        self.assertEqual(self.sent, [(0, b"1")])

    def test_back_to_back_frames_are_spaced_by_the_interval_in_order(self):
        """Frames sent back to back leave one interval apart, in their order."""
        for n in range(3):
            self.pacer.send("s", b"%d" % n)
        self.clock.advance(0.005)
        self.clock.advance(0.005)
        self.assertEqual(self.frames(), [b"0", b"1", b"2"])
        self.assertEqual(self.times(), [0, 0.005, 0.01])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_frame_after_a_pause_longer_than_the_interval_is_not_delayed(self):
        """A stream idle for longer than the interval sends its next frame at once."""
        self.pacer.send("s", b"0")
        self.clock.advance(1)
        self.pacer.send("s", b"1")
        self.assertEqual(self.times(), [0, 1])

    def test_streams_do_not_wait_for_each_other(self):
        """Frames of different streams go out at once, each stream on its own pace."""
        self.pacer.send("a", b"a0")
        self.pacer.send("b", b"b0")
        self.pacer.send("a", b"a1")
        self.assertEqual(self.frames(), [b"a0", b"b0"])
        self.clock.advance(0.005)
        self.assertEqual(self.frames(), [b"a0", b"b0", b"a1"])

    def test_teardown_follows_the_queued_frames_and_forgets_the_stream(self):
        """A stream's teardown leaves after its waiting frames, and the stream is forgotten."""
        self.pacer.send("s", b"0")
        self.pacer.send("s", b"1")
        self.pacer.send("s", b"end", last=True)
        self.clock.advance(0.005)
        self.clock.advance(0.005)
        self.assertEqual(self.frames(), [b"0", b"1", b"end"])
        self.assertEqual(len(self.pacer), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_teardown_of_an_idle_stream_goes_out_at_once(self):
        """The teardown of a stream with nothing waiting is not delayed, and the stream is forgotten."""
        self.pacer.send("s", b"0")
        self.clock.advance(1)
        self.pacer.send("s", b"end", last=True)
        self.assertEqual(self.frames(), [b"0", b"end"])
        self.assertEqual(len(self.pacer), 0)

    def test_visitor_faster_than_its_pace_is_paused_then_resumed(self):
        """At the high-water mark the visitor is paused; once its queue drains it is resumed."""
        for n in range(5):
            self.pacer.send("s", b"%d" % n)
        self.assertEqual(self.throttled, [("s", True)])
        for _ in range(4):
            self.clock.advance(0.005)
        self.assertEqual(self.frames(), [b"0", b"1", b"2", b"3", b"4"])
        self.assertEqual(self.throttled, [("s", True), ("s", False)])

    def test_stream_queueing_more_than_the_limit_is_reset(self):
        """A stream with more than max_queued bytes waiting is dropped and reported, nothing else sent."""
        self.pacer.send("s", b"x")
        self.pacer.send("s", b"y" * 60)
        self.pacer.send("s", b"z" * 60)
        self.assertEqual(self.overflowed, ["s"])
        self.assertEqual(len(self.pacer), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.frames(), [b"x"])

    def test_forget_drops_what_waits(self):
        """Forgetting a stream (the tunnel closed it) drops its waiting frames and timer."""
        self.pacer.send("s", b"0")
        self.pacer.send("s", b"1")
        self.pacer.forget("s")
        self.clock.advance(1)
        self.assertEqual(self.frames(), [b"0"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_cancels_every_timer(self):
        """Stopping (the connection is gone) leaves no timer behind."""
        for stream_id in ("a", "b"):
            self.pacer.send(stream_id, b"0")
            self.pacer.send(stream_id, b"1")
        self.pacer.stop()
        self.assertEqual(len(self.pacer), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
