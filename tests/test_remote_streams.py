"""
Streams across instances: a visitor's stream on instance B for a tunnel
held by instance A crosses the bus (L{remote_streams} on B, L{stream_relay}
on A), with the tunnel client's flow control end to end.

Two hubs share a L{MemoryBus} on one L{Clock}; the tunnel connection on A
is a pair of real L{StreamSession}s (the proxy's and the client's) joined
by reactor turns.
"""

from twisted.internet.defer import fail
from zope.interface import implementer

from brickchain_proxy.bus import BusUnavailable
from brickchain_proxy.bus import envelope
from brickchain_proxy.features import CLIENT_DEFAULT, MESSAGE_FEATURES, RAW_PATH, STREAMS
from brickchain_proxy.proxy.hub import STREAMS_HOLDER_SUFFIX, instance_channel, parse_holder
from brickchain_proxy.proxy.remote_streams import INSTANCE_GONE, RemoteTunnel
from brickchain_proxy.streams import frames
from brickchain_proxy.streams.session import (
    CONNECTION_LOST,
    INITIAL_WINDOW,
    IStreamHandler,
    StreamSession,
)
from tests.support_hub import CLIENT, FakeConnection, HubTestCase


@implementer(IStreamHandler)
class Recorder:
    """
    One end of a stream that records what it is told; it passes data on
    (grants credit) only when C{consuming}.
    """

    def __init__(self, consuming=True):
        self.consuming = consuming
        self.stream = None
        self.heads = []
        self.data = []
        self.messages = []
        self.ended = False
        self.closed = None
        self.resets = []
        self.paused = 0
        self.resumed = 0
        self.held = 0

    @property
    def body(self):
        return b"".join(self.data)

    def head_received(self, head, fin):
        self.heads.append(head)
        if fin:
            self.ended = True

    def data_received(self, data):
        self.data.append(data)
        if self.consuming:
            self.stream.consumed(len(data))
        else:
            self.held += len(data)

    def consume_held(self):
        held, self.held = self.held, 0
        self.stream.consumed(held)

    def ws_received(self, payload, is_text):
        self.messages.append((payload, is_text))
        self.stream.consumed(len(payload))

    def end_received(self):
        self.ended = True

    def ws_closed(self, code, reason):
        self.closed = (code, reason)

    def reset_received(self, reason):
        self.resets.append(reason)

    def write_paused(self):
        self.paused += 1

    def write_resumed(self):
        self.resumed += 1


class StreamingConnection(FakeConnection):
    """
    A tunnel connection that speaks streams: the proxy's session here, the
    client's in C{client}, each frame one reactor turn on its way.

    @ivar accepted: the client's L{Recorder} of every stream opened to it.
    """

    def __init__(self, clock, features=CLIENT_DEFAULT):
        FakeConnection.__init__(self, features)
        self._clock = clock
        self.accepted = []
        self.frames_to_client = []
        self.streams = StreamSession(self._to_client)
        self.client = StreamSession(self._to_proxy, accept=self._accept)

    def _accept(self, stream, head):
        recorder = Recorder()
        recorder.stream = stream
        recorder.heads.append(head)
        recorder.ended = stream.received_fin
        self.accepted.append(recorder)
        return recorder

    def _to_client(self, frame):
        self.frames_to_client.append(frame)
        self._clock.callLater(0, self.client.received, frame)

    def _to_proxy(self, frame):
        self._clock.callLater(0, self.streams.received, frame)

    def lose(self):
        self.streams.connection_lost(CONNECTION_LOST)
        self.client.connection_lost(CONNECTION_LOST)


class RemoteStreamTestCase(HubTestCase):

    def setUp(self):
        HubTestCase.setUp(self)
        self.a = self.make_hub("a")
        self.b = self.make_hub("b")
        self.connection = StreamingConnection(self.clock)
        self.successResultOf(self.a.attach(CLIENT, self.connection))
        self.addCleanup(self.assertNoStreamsLeft)

    def pump(self, turns=40):
        for _ in range(turns):
            self.clock.advance(0)

    def assertNoStreamsLeft(self):
        self.assertEqual(len(self.a.relayed_streams), 0)
        self.assertEqual(len(self.b.remote_tunnels), 0)
        self.assertEqual(self.connection.streams.streams, {})

    def open(self, head=None, fin=True):
        """
        Open a stream from a visitor on B.

        @return: the visitor's L{Recorder} (its C{stream} set).
        """
        remote = self.successResultOf(self.b.remote_tunnel(CLIENT))
        self.assertIsInstance(remote, RemoteTunnel)
        visitor = Recorder()
        visitor.stream = remote.streams.open(
            visitor, head or {"method": "GET", "url": "/x", "headers": {}}, fin=fin)
        return visitor


class HolderTests(RemoteStreamTestCase):

    def test_a_tunnel_that_speaks_streams_is_held_with_the_suffix(self):
        """The directory names A's streams holder for a connection with a stream session; a v1 one under the bare id."""
        holder = self.successResultOf(self.directory.lookup(CLIENT))
        self.assertEqual(holder, "a" + STREAMS_HOLDER_SUFFIX)
        self.assertEqual(parse_holder(holder), ("a", True))
        other = "e" * 52
        self.successResultOf(self.a.attach(other, FakeConnection()))
        self.assertEqual(self.successResultOf(self.directory.lookup(other)), "a")
        self.assertIsNone(self.successResultOf(self.b.remote_tunnel(other)))
        self.assertTrue(self.successResultOf(self.b.tunnel_known(other)))

    def test_the_streams_holder_channel_reaches_the_instance(self):
        """An instance that does not know the suffix still reaches A through the holder's channel."""
        receivers = self.successResultOf(self.bus.publish(
            instance_channel("a" + STREAMS_HOLDER_SUFFIX), envelope.encode(envelope.Probe())))
        self.assertEqual(receivers, 1)
        self.pump()

    def test_own_tunnels_are_not_remote(self):
        """The instance holding the tunnel never streams to itself over the bus."""
        self.assertIsNone(self.successResultOf(self.a.remote_tunnel(CLIENT)))

    def test_unknown_tunnel_is_not_remote(self):
        self.assertIsNone(self.successResultOf(self.b.remote_tunnel("f" * 52)))

    def test_unreachable_directory_is_not_remote(self):
        """With the directory down the buffered path answers (its 503)."""
        self.b._directory = _DownDirectory()
        self.assertIsNone(self.successResultOf(self.b.remote_tunnel(CLIENT)))

    def test_release_and_renew_use_the_holder(self):
        """Renewing and detaching work on the entry as claimed (with the suffix)."""
        self.a.renew_all()
        self.assertEqual(self.successResultOf(self.directory.lookup(CLIENT)),
                         "a" + STREAMS_HOLDER_SUFFIX)
        self.a.detach(CLIENT, self.connection)
        self.assertIsNone(self.successResultOf(self.directory.lookup(CLIENT)))


class _DownDirectory:
    def lookup(self, client_id):
        return fail(BusUnavailable("down"))


class RelayTests(RemoteStreamTestCase):

    def test_request_and_answer_cross_the_bus(self):
        """A GET from B reaches the client with its head; the answer's head, body and end come back; nothing is left."""
        visitor = self.open({"method": "GET", "url": "/a%2Fb", "headers": {"x": ["1", "2"]}})
        self.pump()
        [served] = self.connection.accepted
        self.assertEqual(served.heads, [{"method": "GET", "url": "/a%2Fb",
                                         "headers": {"x": ["1", "2"]}}])
        self.assertTrue(served.ended)
        served.stream.send_head({"status": 200, "headers": {}, "length": 5})
        served.stream.write(b"hello", fin=True)
        self.pump()
        self.assertEqual(visitor.heads, [{"status": 200, "headers": {}, "length": 5}])
        self.assertEqual(visitor.body, b"hello")
        self.assertTrue(visitor.ended)
        self.assertEqual(visitor.resets, [])

    def test_stream_ids_are_rewritten(self):
        """The tunnel sees A's stream ids, B its own: two visitors on B get distinct streams on the tunnel."""
        first, second = self.open(), self.open()
        self.pump()
        ids = sorted(recorder.stream.id for recorder in self.connection.accepted)
        self.assertEqual(len(set(ids)), 2)
        for recorder in self.connection.accepted:
            recorder.stream.send_head({"status": 204, "headers": {}}, fin=True)
        self.pump()
        self.assertEqual([len(first.heads), len(second.heads)], [1, 1])

    def test_upload_is_flow_controlled_end_to_end(self):
        """A visitor on B uploading to a client that does not read has at most one window in flight; reading lets the rest through."""
        visitor = self.open({"method": "POST", "url": "/up", "headers": {}}, fin=False)
        self.pump()
        [served] = self.connection.accepted
        served.consuming = False
        body = bytes(range(256)) * 4096 * 2  # 2 MiB
        visitor.stream.write(body, fin=True)
        self.pump()
        self.assertEqual(visitor.paused, 1)
        self.assertLessEqual(len(served.body), INITIAL_WINDOW)
        self.assertGreater(visitor.stream.queued, len(body) - INITIAL_WINDOW - 1)
        while not served.ended:
            served.consume_held()
            self.pump()
        self.assertEqual(served.body, body)
        self.assertEqual(visitor.stream.queued, 0)
        served.stream.send_head({"status": 201, "headers": {}}, fin=True)
        self.pump()
        self.assertEqual(visitor.heads[0]["status"], 201)

    def test_download_to_a_slow_visitor_holds_one_window(self):
        """The client's answer to a visitor on B that does not read stops after one window: memory on A, B and the bus stays bounded."""
        visitor = self.open()
        visitor.consuming = False
        self.pump()
        [served] = self.connection.accepted
        served.stream.send_head({"status": 200, "headers": {}})
        body = b"x" * (4 * 1024 * 1024)
        served.stream.write(body, fin=True)
        self.pump()
        self.assertEqual(served.paused, 1)
        self.assertLessEqual(len(visitor.body), INITIAL_WINDOW)
        while not visitor.ended:
            visitor.consume_held()
            self.pump()
        self.assertEqual(len(visitor.body), len(body))

    def test_websocket_messages_and_close_cross_the_bus(self):
        """Websocket frames (text and binary, in order) and a close code cross both ways."""
        visitor = self.open({"kind": "ws", "url": "/chat", "headers": {}}, fin=False)
        self.pump()
        [served] = self.connection.accepted
        served.stream.send_head({"ok": True})
        self.pump()
        visitor.stream.write_ws(b"hello", True)
        visitor.stream.write_ws(b"\x00\xff", False)
        served.stream.write_ws(b"back", True)
        self.pump()
        self.assertEqual(served.messages, [(b"hello", True), (b"\x00\xff", False)])
        self.assertEqual(visitor.messages, [(b"back", True)])
        visitor.stream.close_ws(4001, "bye")
        self.pump()
        self.assertEqual(served.closed, (4001, "bye"))
        served.stream.close_ws(4001, "bye")
        self.pump()
        self.assertEqual(visitor.closed, (4001, "bye"))

    def test_head_adapted_for_a_client_without_raw_paths(self):
        """A tunnel whose connection lacks raw paths and multi-valued headers gets the head as the instance holding it would have encoded it."""
        other = "g" * 52
        connection = StreamingConnection(self.clock,
                                         features=frozenset([STREAMS]))
        self.successResultOf(self.a.attach(other, connection))
        remote = self.successResultOf(self.b.remote_tunnel(other))
        visitor = Recorder()
        visitor.stream = remote.streams.open(
            visitor, {"method": "GET", "url": "/a%20b", "headers": {"x": ["1", "2"]}},
            fin=True)
        self.pump()
        [served] = connection.accepted
        self.assertEqual(served.heads[0]["url"], "/a b")
        self.assertEqual(served.heads[0]["headers"], {"x": "1, 2"})
        served.stream.reset("done")
        self.pump()
        self.assertEqual(visitor.resets, ["done"])
        self.assertEqual(connection.streams.streams, {})


class EndingTests(RemoteStreamTestCase):

    def test_visitor_reset_reaches_the_client(self):
        """A visitor on B going away resets the client's stream through A; A forgets the relay."""
        visitor = self.open(fin=False)
        self.pump()
        visitor.stream.reset("the visitor went away")
        self.pump()
        [served] = self.connection.accepted
        self.assertEqual(served.resets, ["the visitor went away"])

    def test_tunnel_connection_lost_resets_the_visitor(self):
        """The tunnel's connection dropping on A resets the visitor's stream on B with the connection's reason."""
        visitor = self.open()
        self.pump()
        self.connection.lose()
        self.pump()
        self.assertEqual(visitor.resets, [CONNECTION_LOST])

    def test_tunnel_not_held_any_more(self):
        """A stream opened for a tunnel A no longer holds is reset with that reason."""
        remote = self.successResultOf(self.b.remote_tunnel(CLIENT))
        self.a.detach(CLIENT, self.connection)
        visitor = Recorder()
        visitor.stream = remote.streams.open(visitor, {"method": "GET"}, fin=True)
        self.pump()
        self.assertEqual(visitor.resets, ["tunnel is not connected here"])
        self.assertEqual(self.connection.accepted, [])

    def test_instance_gone(self):
        """When nobody listens for A any more, the visitor's stream ends as for an offline tunnel and A's stale entry is dropped."""
        for channel in self.a._channels:
            self.bus.unsubscribe(channel, self.a._bus_received)
        visitor = self.open()
        self.pump()
        self.assertEqual(visitor.resets, [INSTANCE_GONE])
        self.assertIsNone(self.successResultOf(self.directory.lookup(CLIENT)))
        self.hubs.remove(self.a)

    def test_probe_finds_a_vanished_instance(self):
        """An idle stream to an instance that died is reset by the periodic probe."""
        visitor = self.open(fin=False)
        self.pump()
        [served] = self.connection.accepted
        served.stream.send_head({"status": 200, "headers": {}})
        self.pump()
        self.b.probe_remote()
        self.pump()
        self.assertEqual(visitor.resets, [])
        for channel in self.a._channels:
            self.bus.unsubscribe(channel, self.a._bus_received)
        self.a.relayed_streams.clear()
        self.connection.lose()
        self.b.probe_remote()
        self.pump()
        self.assertEqual(visitor.resets, [INSTANCE_GONE])
        self.hubs.remove(self.a)

    def test_bus_failure_resets(self):
        """A frame the bus cannot deliver breaks the stream: it is reset, never continued with a gap."""
        visitor = self.open(fin=False)
        self.pump()
        publish = self.bus.publish
        self.bus.publish = lambda channel, payload: fail(BusUnavailable("down"))
        visitor.stream.write(b"lost")
        self.pump()
        self.bus.publish = publish
        self.assertEqual(len(visitor.resets), 1)
        self.assertIn("the bus is unavailable", visitor.resets[0])
        # A still relays: its idle timeout ends it.
        self.clock.advance(self.a.relayed_streams.idle_timeout)
        self.pump()
        [served] = self.connection.accepted
        self.assertEqual(served.resets, ["idle"])

    def test_lost_bus_messages_on_the_visitors_instance_reset_both_ways(self):
        """
        When B's subscriber connection drops, frames to B may be lost (an
        echo, an answer's next chunk): B resets its visitors' streams at once
        rather than leave them waiting, and tells A, which resets the client's.
        """
        visitor = self.open(fin=False)
        self.pump()
        self.b.bus_interrupted()
        self.pump()
        [served] = self.connection.accepted
        reason = "the bus lost messages to this proxy instance"
        self.assertEqual(visitor.resets, [reason])
        self.assertEqual(served.resets, [reason])

    def test_lost_bus_messages_on_the_tunnels_instance_reset_both_ways(self):
        """
        When A's subscriber connection drops, frames from B's visitors may be
        lost: A resets the relayed streams toward the client and the visitor.
        """
        visitor = self.open(fin=False)
        self.pump()
        self.a.bus_interrupted()
        self.pump()
        [served] = self.connection.accepted
        reason = "the bus lost messages to this proxy instance"
        self.assertEqual(served.resets, [reason])
        self.assertEqual(visitor.resets, [reason])

    def test_idle_relay_is_reset_both_ways(self):
        """A relayed stream with no traffic for the idle timeout is reset toward the client and the visitor."""
        visitor = self.open(fin=False)
        self.pump()
        self.clock.advance(self.a.relayed_streams.idle_timeout / 2)
        visitor.stream.write(b"x")
        self.pump()
        self.clock.advance(self.a.relayed_streams.idle_timeout / 2 + 1)
        self.pump()
        self.assertEqual(visitor.resets, [])
        self.clock.advance(self.a.relayed_streams.idle_timeout)
        self.pump()
        [served] = self.connection.accepted
        self.assertEqual(served.resets, ["idle"])
        self.assertEqual(visitor.resets, ["idle"])

    def test_frames_of_unknown_streams_are_answered_with_reset(self):
        """A data frame for a stream A does not relay (or B no longer has) is answered with RESET; RESET and WINDOW_UPDATE are not."""
        sent = []
        original = self.bus.publish

        def recording(channel, payload):
            sent.append((channel, envelope.decode(payload)))
            return original(channel, payload)

        self.bus.publish = recording
        self.a._bus_received(envelope.encode(envelope.TunnelFrame(
            CLIENT, "b", frames.encode(frames.DATA, 0, 7, b"?"))))
        self.a._bus_received(envelope.encode(envelope.TunnelFrame(
            CLIENT, "b", frames.window_update(8, 10))))
        self.b._bus_received(envelope.encode(envelope.VisitorFrame(
            CLIENT, "a", frames.encode(frames.DATA, 0, 9, b"?"))))
        self.b._bus_received(envelope.encode(envelope.VisitorFrame(
            CLIENT, "a", frames.encode(frames.RESET, 0, 10, b""))))
        self.pump()
        resets = [(channel, frames.decode(e.frame)[:3]) for channel, e in sent]
        self.assertEqual(resets, [
            (instance_channel("b"), (frames.RESET, 0, 7)),
            (instance_channel("a"), (frames.RESET, 0, 9)),
        ])

    def test_malformed_frames_are_ignored(self):
        """Bytes that are not a frame, from another instance, are logged and dropped."""
        self.a._bus_received(envelope.encode(envelope.TunnelFrame(CLIENT, "b", b"junk")))
        self.b._bus_received(envelope.encode(envelope.VisitorFrame(CLIENT, "a", b"junk")))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_stopping_resets_everything(self):
        """Stopping B resets its visitors' streams; stopping A resets the relays toward the client."""
        visitor = self.open(fin=False)
        self.pump()
        self.successResultOf(self.a.stop())
        self.pump()
        [served] = self.connection.accepted
        self.assertEqual(served.resets, ["the proxy is stopping"])
        self.assertEqual(visitor.resets, ["the proxy is stopping"])
        self.hubs.remove(self.a)


class EnvelopeTests(RemoteStreamTestCase):

    def test_frames_keep_every_byte(self):
        """TunnelFrame and VisitorFrame carry any bytes, newlines included."""
        frame = frames.encode(frames.DATA, 0, 1, b"a\nb\r\n\x00")
        for kind in (envelope.TunnelFrame, envelope.VisitorFrame):
            value = kind(CLIENT, "b", frame)
            self.assertEqual(envelope.decode(envelope.encode(value)), value)

    def test_features_of_a_remote_tunnel(self):
        """Visitors encode for a remote tunnel with every extension; A adapts."""
        remote = self.successResultOf(self.b.remote_tunnel(CLIENT))
        self.assertTrue(remote.features >= MESSAGE_FEATURES | {STREAMS})
        self.assertIn(RAW_PATH, remote.features)


class RelayProbeTests(RemoteStreamTestCase):

    def test_relay_of_a_vanished_visitor_instance_ends_at_the_probe(self):
        """A relayed stream whose visitor's instance died (no frame since) is reset toward the client by A's probe, not at the idle timeout."""
        self.open(fin=False)
        self.pump()
        [served] = self.connection.accepted
        self.a.probe_remote()
        self.pump()
        self.assertEqual(served.resets, [])  # B still listens
        for channel in self.b._channels:
            self.bus.unsubscribe(channel, self.b._bus_received)
        self.hubs.remove(self.b)
        self.b.remote_tunnels._streams.clear()
        self.a.probe_remote()
        self.pump()
        self.assertEqual(served.resets, ["the visitor's proxy instance is gone"])


class LateAcceptTests(HubTestCase):

    def test_websocket_accepted_after_nobody_waits_is_closed(self):
        """A ws-response accepting a websocket nobody waits for any more gets a ws-teardown, so the client closes its local websocket."""
        from brickchain_proxy.messages import WSResponse, WSTeardown, decode, encode

        hub = self.make_hub("a")
        connection = FakeConnection()
        self.successResultOf(hub.attach(CLIENT, connection))
        raw = encode(WSResponse(id="late-one", ok=True))
        self.assertFalse(hub.reply(connection, decode(raw), raw))
        [sent] = connection.sent
        self.assertEqual(type(decode(sent)), WSTeardown)
        self.assertEqual(decode(sent).id, "late-one")
        refused = encode(WSResponse(id="late-two", ok=False, error="no"))
        hub.reply(connection, decode(refused), refused)
        self.assertEqual(len(connection.sent), 1)


class OwedResetTests(RemoteStreamTestCase):

    def test_a_reset_the_bus_could_not_take_is_sent_once_it_is_back(self):
        """A's frame to B's visitor cannot be published: the relay ends toward the client at once, and the visitor's reset goes out when the bus is back, so the visitor does not wait for a timeout."""
        visitor = self.open(fin=False)
        self.pump()
        [served] = self.connection.accepted
        publish = self.bus.publish
        self.bus.publish = lambda channel, payload: fail(BusUnavailable("down"))
        served.stream.send_head({"status": 200, "headers": {}})
        self.pump()
        self.assertEqual(served.resets, ["the bus is unavailable"])
        self.assertEqual(visitor.resets, [])
        self.bus.publish = publish
        self.a.relayed_streams.pay_resets()
        self.pump()
        self.assertEqual(visitor.resets, ["the bus is unavailable"])
        self.a.relayed_streams.pay_resets()  # paid once
        self.pump()
        self.assertEqual(visitor.resets, ["the bus is unavailable"])
