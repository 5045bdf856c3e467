"""
The stream layer's frames and sessions, without sockets: two sessions wired
back to back, frames moved by hand.  Heads, bodies cut into bounded frames,
per-stream windows (a writer pauses when the window is used up and resumes
when credit comes back), FIN both ways, reset, websocket messages, and what
malformed frames do.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from brickchain_proxy.streams import frames
from brickchain_proxy.streams.frames import FrameError
from brickchain_proxy.streams.session import IStreamHandler, StreamError, StreamSession


@implementer(IStreamHandler)
class Recorder:
    """
    Records what a stream end is told; consumes at once unless told not to.
    """

    def __init__(self, consume=True):
        self.events = []
        self.data = []
        self.consume = consume
        self.stream = None

    def head_received(self, head, fin):
        self.events.append(("head", head, fin))

    def data_received(self, data):
        self.data.append(data)
        if self.consume:
            self.stream.consumed(len(data))

    def ws_received(self, payload, is_text):
        self.events.append(("ws", payload, is_text))
        if self.consume:
            self.stream.consumed(len(payload))

    def end_received(self):
        self.events.append(("end",))

    def ws_closed(self, code, reason):
        self.events.append(("closed", code, reason))

    def reset_received(self, reason):
        self.events.append(("reset", reason))

    def write_paused(self):
        self.events.append(("paused",))

    def write_resumed(self):
        self.events.append(("resumed",))

    def body(self):
        return b"".join(self.data)


class Pair:
    """
    A proxy-side session (opens streams) and a client-side one (accepts
    them), with the frames each sent waiting in a list until delivered.
    """

    def __init__(self, window=64 * 1024, max_frame=16 * 1024, consume=True):
        self.to_client = []
        self.to_proxy = []
        self.accepted = []
        self.proxy = StreamSession(self.to_client.append, window=window,
                                   max_frame=max_frame)
        self.client = StreamSession(self.to_proxy.append, self._accept,
                                    window=window, max_frame=max_frame)
        self.consume = consume

    def _accept(self, stream, head):
        handler = Recorder(self.consume)
        handler.stream = stream
        handler.events.append(("opened", head))
        self.accepted.append(handler)
        return handler

    def open(self, head, consume=True):
        handler = Recorder(consume)
        handler.stream = self.proxy.open(handler, head)
        return handler

    def flush(self):
        moved = True
        while moved:
            moved = False
            while self.to_client:
                self.client.received(self.to_client.pop(0))
                moved = True
            while self.to_proxy:
                self.proxy.received(self.to_proxy.pop(0))
                moved = True


class FrameCodecTests(SynchronousTestCase):
    def test_header_layout(self):
        """A frame is version, type, flags, stream, length (12 bytes, big-endian), then the payload."""
        data = frames.encode(frames.DATA, frames.FIN, 7, b"abc")
        self.assertEqual(data, b"\x00\x00\x00\x02\x00\x00\x00\x07\x00\x00\x00\x03abc")
        kind, flags, stream_id, length, payload = frames.decode(data)
        self.assertEqual((kind, flags, stream_id, length, bytes(payload)),
                         (frames.DATA, frames.FIN, 7, 3, b"abc"))

    def test_window_update_carries_the_increment_in_length(self):
        """A WINDOW_UPDATE has no payload; its length field is the increment."""
        data = frames.window_update(5, 1000)
        self.assertEqual(len(data), 12)
        self.assertEqual(frames.decode(data)[3], 1000)

    def test_malformed_frames_are_refused(self):
        """Short, unknown version or type, stream 0, wrong length, bad increments: FrameError."""
        good = frames.encode(frames.DATA, 0, 1, b"x")
        for data in (b"", good[:11], b"\x01" + good[1:], good[:1] + b"\x09" + good[2:],
                     frames.encode(frames.DATA, 0, 0, b"x"), good + b"y", good[:-1],
                     frames.window_update(1, 0), frames.window_update(1, 2 ** 31),
                     frames.window_update(1, 5) + b"z"):
            self.assertRaises(FrameError, frames.decode, data)

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.binary(max_size=64))
    def test_random_bytes_decode_or_raise_frame_error(self, data):
        """Any bytes decode to a frame or raise FrameError, nothing else."""
        try:
            frames.decode(data)
        except FrameError:
            pass

    def test_head_must_be_a_json_object(self):
        """A head that is not a JSON object is a FrameError."""
        for payload in (b"[1]", b"nope", b"\xff"):
            self.assertRaises(FrameError, frames.decode_head, payload)


class SessionTests(SynchronousTestCase):
    def test_handler_provides_the_interface(self):
        """The test's handler is a real IStreamHandler."""
        self.assertTrue(verifyObject(IStreamHandler, Recorder()))

    def test_head_and_body_reach_the_other_side(self):
        """The opener's head and body arrive, then its FIN; the answer comes back the same way."""
        pair = Pair()
        proxy_end = pair.open({"method": "POST"})
        proxy_end.stream.write(b"x" * 40000)
        proxy_end.stream.finish()
        pair.flush()
        [client_end] = pair.accepted
        self.assertEqual(client_end.events[0], ("opened", {"method": "POST"}))
        self.assertEqual(client_end.body(), b"x" * 40000)
        self.assertEqual(client_end.events[-1], ("end",))
        client_end.stream.send_head({"status": 200})
        client_end.stream.write(b"ok")
        client_end.stream.finish()
        pair.flush()
        self.assertEqual(proxy_end.events, [("head", {"status": 200}, False), ("end",)])
        self.assertEqual(proxy_end.body(), b"ok")
        self.assertEqual((len(pair.proxy), len(pair.client)), (0, 0))

    def test_bodies_are_cut_into_bounded_frames(self):
        """No frame carries more than max_frame bytes of payload."""
        pair = Pair(max_frame=1000)
        end = pair.open({})
        end.stream.write(b"y" * 4500)
        sizes = [frames.decode(f)[3] for f in pair.to_client[1:]]
        self.assertEqual(sizes, [1000, 1000, 1000, 1000, 500])

    def test_writer_pauses_at_the_window_and_resumes_on_credit(self):
        """A writer is paused when the other side's window is used up, resumed once it consumes."""
        pair = Pair(window=10000, max_frame=4000, consume=False)
        end = pair.open({})
        end.stream.write(b"z" * 25000)
        self.assertEqual(end.events, [("paused",)])
        pair.flush()
        [client_end] = pair.accepted
        self.assertEqual(len(client_end.body()), 8000)  # two frames fit the window
        self.assertEqual(end.stream.queued, 17000)
        client_end.stream.consumed(8000)
        pair.flush()
        self.assertEqual(len(client_end.body()), 16000)
        client_end.stream.consumed(16000 - 8000)
        client_end.stream.consumed(0)
        pair.flush()
        client_end.stream.consumed(len(client_end.body()) - 16000)
        pair.flush()
        client_end.stream.consumed(len(client_end.body()) - 24000)
        pair.flush()
        self.assertEqual(client_end.body(), b"z" * 25000)
        self.assertEqual(end.events, [("paused",), ("resumed",)])

    def test_sender_exceeding_the_window_gets_its_stream_reset(self):
        """A peer that sends more than the window allows has the stream reset."""
        pair = Pair(window=1000)
        end = pair.open({})
        pair.flush()
        [client_end] = pair.accepted
        stream_id = client_end.stream.id
        pair.client.received(frames.encode(frames.DATA, 0, stream_id, b"a" * 1001))
        self.assertEqual(client_end.events[-1], ("reset", "more data than the window allows"))
        pair.flush()
        self.assertEqual(end.events[-1][0], "reset")
        self.assertEqual((len(pair.proxy), len(pair.client)), (0, 0))

    def test_reset_reaches_the_other_side_and_forgets_the_stream(self):
        """A reset stops the stream on both sides, with its reason."""
        pair = Pair()
        end = pair.open({})
        pair.flush()
        [client_end] = pair.accepted
        end.stream.reset("visitor went away")
        pair.flush()
        self.assertEqual(client_end.events[-1], ("reset", "visitor went away"))
        self.assertRaises(StreamError, end.stream.write, b"more")
        self.assertEqual((len(pair.proxy), len(pair.client)), (0, 0))

    def test_frames_for_a_forgotten_stream_are_answered_with_reset(self):
        """Data for a stream the receiver does not know is answered with RESET."""
        pair = Pair()
        pair.client.received(frames.encode(frames.DATA, 0, 99, b"late"))
        kind, _, stream_id, _, payload = frames.decode(pair.to_proxy[0])
        self.assertEqual((kind, stream_id, bytes(payload)), (frames.RESET, 99, b"unknown stream"))

    def test_connection_lost_resets_every_stream(self):
        """When the connection goes, every stream's handler hears of it."""
        pair = Pair()
        one, two = pair.open({}), pair.open({})
        pair.proxy.connection_lost("gone")
        self.assertEqual([one.events[-1], two.events[-1]], [("reset", "gone")] * 2)
        self.assertEqual(len(pair.proxy), 0)

    def test_websocket_messages_keep_their_kind_boundaries_and_order(self):
        """Text and binary messages, large ones cut into parts, arrive whole and in order."""
        pair = Pair(max_frame=1000)
        end = pair.open({})
        pair.flush()
        [client_end] = pair.accepted
        messages = [(b"hello", True), (bytes(range(256)) * 10, False), (b"", True)]
        for payload, is_text in messages:
            end.stream.write_ws(payload, is_text)
        pair.flush()
        self.assertEqual([e[1:] for e in client_end.events if e[0] == "ws"], messages)

    def test_stream_ids_are_distinct(self):
        """Each opened stream gets a new id."""
        pair = Pair()
        ids = {pair.open({}).stream.id for _ in range(5)}
        self.assertEqual(len(ids), 5)


class WebSocketStreamTests(SynchronousTestCase):
    def test_close_carries_its_code_and_reason_and_ends_the_stream(self):
        """WS_CLOSE reaches the other side with its code and reason; both closes end the stream."""
        pair = Pair()
        end = pair.open({"kind": "ws"})
        pair.flush()
        [client_end] = pair.accepted
        end.stream.close_ws(4001, "bye \u2713")
        pair.flush()
        self.assertEqual(client_end.events[-1], ("closed", 4001, "bye \u2713"))
        client_end.stream.close_ws(4001, "bye \u2713")
        pair.flush()
        self.assertEqual(end.events[-1], ("closed", 4001, "bye \u2713"))
        self.assertEqual((len(pair.proxy), len(pair.client)), (0, 0))

    def test_close_without_a_code(self):
        """A close without a code arrives as (None, '')."""
        pair = Pair()
        end = pair.open({"kind": "ws"})
        pair.flush()
        end.stream.close_ws()
        pair.flush()
        self.assertEqual(pair.accepted[0].events[-1], ("closed", None, ""))

    def test_message_larger_than_the_window_arrives_whole(self):
        """A websocket message four windows long is not stalled by flow control."""
        pair = Pair(window=64 * 1024, max_frame=16 * 1024)
        end = pair.open({"kind": "ws"})
        pair.flush()
        payload = bytes(range(256)) * 1024  # 256 KiB
        end.stream.write_ws(payload, False)
        pair.flush()
        self.assertEqual([e[1:] for e in pair.accepted[0].events if e[0] == "ws"],
                         [(payload, False)])
        self.assertEqual(end.stream.queued, 0)
