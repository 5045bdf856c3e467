"""
The message flow of tunnelled websockets without sockets: the proxy's
L{TunnelHub} streams with fake visitors and fake tunnel connections on a
L{Clock} (one instance, and two instances sharing a L{MemoryBus}), and the
client's L{LocalWebSockets} against a real Autobahn local service wired in
memory (L{twisted.test.iosim}).

Every test ends with nothing waiting: no stream, no pending request and no
timer on the clock.
"""

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, TimeoutError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import connect, makeFakeClient, makeFakeServer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from brickchain_proxy.client.local_ws import LocalWebSockets
from brickchain_proxy.correlation import TunnelGone
from brickchain_proxy.features import BINARY_WS, WS_CLOSE, WS_SUBPROTOCOL
from brickchain_proxy.messages import (
    WSMessage,
    WSRequest,
    WSResponse,
    WSTeardown,
    decode,
    encode,
)
from brickchain_proxy.proxy.interfaces import IStreamVisitor, ITunnelConnection
from tests.support_hub import CLIENT, TIMEOUT, FakeVisitor, HubTestCase


@implementer(ITunnelConnection)
class FakeConnection:
    """
    Stands in for a L{TunnelServerProtocol} (verified against its
    interface in L{FakeConnectionContractTests}): records the messages the hub
    sends it, decoded.
    """

    features = frozenset()

    def __init__(self):
        self.sent = []

    def send_raw(self, data):
        self.sent.append(decode(data))

    def send_frame(self, stream_id, data, last=False):
        self.send_raw(data)

    backpressure = None

    def tunnel_taken_over(self, client_id):
        pass

    def answer(self, hub, message):
        """
        Send C{message} to the hub as the tunnel client would.
        """
        raw = encode(message)
        decoded = decode(raw)
        if type(decoded) is WSResponse:
            return hub.reply(self, decoded, raw)
        return hub.websockets.from_tunnel(self, decoded, raw)


def ws_request(path="/chat"):
    """
    @return: C{(stream_id, raw)} of a new ws-request.
    """
    message = WSRequest(url=path)
    return message.id, encode(message)


def text(stream_id, body):
    return WSMessage(id=stream_id, message_type=1, body=body)


class _HubFlowTestCase(HubTestCase):
    """
    L{HubTestCase}, and no stream or relay may be left behind either.
    """

    def pump(self):
        """
        Let the bus deliver (one reactor turn per hop).
        """
        for _ in range(4):
            self.clock.advance(0)

    def assertNothingLeft(self):
        for hub in self.hubs:
            self.assertEqual(hub.streams, {}, hub.instance_id)
            self.assertEqual(len(hub.relays), 0, hub.instance_id)
        HubTestCase.assertNothingLeft(self)


class LocalStreamTests(_HubFlowTestCase):
    """
    Streams over a tunnel held by this instance.
    """

    def setUp(self):
        _HubFlowTestCase.setUp(self)
        self.hub = self.make_hub("a")
        self.connection = FakeConnection()
        self.hub.attach(CLIENT, self.connection)
        self.visitor = FakeVisitor()

    def open(self):
        stream_id, raw = ws_request()
        d = self.hub.websockets.open(CLIENT, stream_id, raw, self.visitor)
        return stream_id, d

    def test_ws_request_goes_to_the_tunnel_and_ok_opens_the_stream(self):
        """The ws-request is sent on the connection; an ok ws-response fires the open with it."""
        stream_id, d = self.open()
        self.assertEqual([type(m) for m in self.connection.sent], [WSRequest])
        self.assertEqual(self.connection.sent[0].id, stream_id)
        self.connection.answer(self.hub, WSResponse(id=stream_id, ok=True))
        self.assertTrue(self.successResultOf(d).ok)
        self.assertIn(stream_id, self.hub.streams)
        self.hub.websockets.to_tunnel(stream_id, encode(WSTeardown(id=stream_id)), last=True)

    def test_frame_right_after_the_ws_response_reaches_the_visitor(self):
        """A ws-message that follows the ws-response at once is delivered, not lost."""
        stream_id, d = self.open()
        self.connection.answer(self.hub, WSResponse(id=stream_id, ok=True))
        self.connection.answer(self.hub, text(stream_id, "first"))
        self.assertEqual([m.body for m in self.visitor.delivered], ["first"])
        self.hub.websockets.forget(stream_id)

    def test_visitor_frames_and_teardown_go_to_the_tunnel(self):
        """Frames from the visitor go on the connection; its teardown ends the stream."""
        stream_id, d = self.open()
        self.connection.answer(self.hub, WSResponse(id=stream_id, ok=True))
        self.assertTrue(self.hub.websockets.to_tunnel(stream_id, encode(text(stream_id, "hi"))))
        self.assertTrue(self.hub.websockets.to_tunnel(
            stream_id, encode(WSTeardown(id=stream_id, code=4001)), last=True))
        self.assertEqual([type(m) for m in self.connection.sent[1:]],
                         [WSMessage, WSTeardown])
        self.assertEqual(self.connection.sent[2].code, 4001)
        self.assertNotIn(stream_id, self.hub.streams)
        self.assertFalse(self.hub.websockets.to_tunnel(stream_id, encode(text(stream_id, "late"))))

    def test_teardown_from_the_tunnel_removes_the_stream(self):
        """A ws-teardown from the tunnel is delivered to the visitor and forgets the stream."""
        stream_id, d = self.open()
        self.connection.answer(self.hub, WSResponse(id=stream_id, ok=True))
        self.connection.answer(self.hub, WSTeardown(id=stream_id, code=4002, reason="bye"))
        self.assertEqual([(m.code, m.reason) for m in self.visitor.delivered],
                         [(4002, "bye")])
        self.assertNotIn(stream_id, self.hub.streams)

    def test_frame_from_another_connection_is_not_delivered(self):
        """Only the connection carrying a stream may send frames on it."""
        stream_id, d = self.open()
        self.connection.answer(self.hub, WSResponse(id=stream_id, ok=True))
        FakeConnection().answer(self.hub, text(stream_id, "intruder"))
        self.assertEqual(self.visitor.delivered, [])
        self.hub.websockets.forget(stream_id)

    def test_frame_for_an_unknown_stream_is_ignored(self):
        """A ws-message for no known stream is dropped quietly."""
        self.connection.answer(self.hub, text("no-such-stream", "lost"))
        self.assertEqual(self.visitor.delivered, [])

    def test_refusal_forgets_the_stream_without_a_teardown(self):
        """A not-ok ws-response ends the stream; the client already knows, so no teardown is sent."""
        stream_id, d = self.open()
        self.connection.answer(self.hub, WSResponse(id=stream_id, ok=False, error="no"))
        self.assertFalse(self.successResultOf(d).ok)
        self.assertNotIn(stream_id, self.hub.streams)
        self.assertEqual([type(m) for m in self.connection.sent], [WSRequest])

    def test_visitor_cancelling_a_pending_open_sends_a_teardown(self):
        """A visitor leaving before the ws-response tells the client with a ws-teardown."""
        stream_id, d = self.open()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual([type(m) for m in self.connection.sent], [WSRequest, WSTeardown])
        self.assertEqual(self.connection.sent[1].id, stream_id)
        self.assertNotIn(stream_id, self.hub.streams)
        # The late answer is nobody's business any more.
        self.assertFalse(self.connection.answer(self.hub, WSResponse(id=stream_id, ok=True)))

    def test_unanswered_ws_request_times_out_and_sends_a_teardown(self):
        """No ws-response within request_timeout fails the open and tells the client to give up."""
        stream_id, d = self.open()
        self.clock.advance(TIMEOUT)
        self.failureResultOf(d, TimeoutError)
        self.assertEqual([type(m) for m in self.connection.sent], [WSRequest, WSTeardown])
        self.assertNotIn(stream_id, self.hub.streams)

    def test_connection_lost_closes_every_stream_and_fails_pending_opens(self):
        """When the tunnel's connection goes, open streams are lost and pending opens fail with TunnelGone."""
        open_visitors = [FakeVisitor() for _ in range(3)]
        for visitor in open_visitors:
            stream_id, raw = ws_request()
            self.hub.websockets.open(CLIENT, stream_id, raw, visitor)
            self.connection.answer(self.hub, WSResponse(id=stream_id, ok=True))
        stream_id, pending = self.open()
        self.hub.connection_lost(self.connection)
        self.assertEqual([len(v.lost) for v in open_visitors], [1, 1, 1])
        self.failureResultOf(pending, TunnelGone)
        self.assertEqual(self.hub.streams, {})


class RemoteStreamTests(_HubFlowTestCase):
    """
    A visitor on instance B, the tunnel on instance A: the stream crosses
    the bus.
    """

    def setUp(self):
        _HubFlowTestCase.setUp(self)
        self.a = self.make_hub("a")
        self.b = self.make_hub("b")
        self.connection = FakeConnection()
        self.a.attach(CLIENT, self.connection)
        self.visitor = FakeVisitor()

    def open(self):
        stream_id, raw = ws_request()
        d = self.b.websockets.open(CLIENT, stream_id, raw, self.visitor)
        self.pump()
        return stream_id, d

    def test_stream_flows_both_ways_across_instances(self):
        """The ws-request, ws-response, frames and teardowns cross the bus between B and A."""
        stream_id, d = self.open()
        self.assertEqual([type(m) for m in self.connection.sent], [WSRequest])
        self.connection.answer(self.a, WSResponse(id=stream_id, ok=True))
        self.connection.answer(self.a, text(stream_id, "from the tunnel"))
        self.pump()
        self.assertTrue(self.successResultOf(d).ok)
        self.assertEqual([m.body for m in self.visitor.delivered], ["from the tunnel"])
        self.b.websockets.to_tunnel(stream_id, encode(text(stream_id, "from the visitor")))
        self.b.websockets.to_tunnel(stream_id, encode(WSTeardown(id=stream_id)), last=True)
        self.pump()
        self.assertEqual([type(m) for m in self.connection.sent],
                         [WSRequest, WSMessage, WSTeardown])
        self.assertEqual(self.connection.sent[1].body, "from the visitor")

    def test_teardown_from_the_tunnel_reaches_the_visitor_on_the_other_instance(self):
        """A ws-teardown from the tunnel on A ends the stream on B and A's relay."""
        stream_id, d = self.open()
        self.connection.answer(self.a, WSResponse(id=stream_id, ok=True))
        self.connection.answer(self.a, WSTeardown(id=stream_id, code=4002))
        self.pump()
        self.assertEqual([type(m) for m in self.visitor.delivered], [WSTeardown])
        self.assertEqual(self.visitor.delivered[0].code, 4002)

    def test_visitor_cancelling_on_b_sends_a_teardown_through_a(self):
        """A visitor on B leaving before the ws-response reaches the client as a ws-teardown via A."""
        stream_id, d = self.open()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.pump()
        self.assertEqual([type(m) for m in self.connection.sent], [WSRequest, WSTeardown])
        self.assertEqual(self.connection.sent[1].id, stream_id)

    def test_idle_stream_of_a_vanished_instance_is_closed_by_the_probe(self):
        """B's periodic probe finds A gone and closes A's idle visitor websockets (1001)."""
        stream_id, d = self.open()
        self.connection.answer(self.a, WSResponse(id=stream_id, ok=True))
        self.pump()
        self.successResultOf(d)
        self.b.websockets.probe_remote()
        self.pump()
        self.assertEqual(self.visitor.lost, [])  # A still listens
        # A dies without a word: its subscription is simply gone.
        self.hubs.remove(self.a)
        for channel in self.a._channels:
            self.a._bus.unsubscribe(channel, self.a._bus_received)
        self.a.relays.clear()
        self.b.websockets.probe_remote()
        self.pump()
        self.assertEqual(self.visitor.lost, ["the tunnel's proxy instance is gone"])
        self.assertEqual(self.b.streams, {})


class RelayLifetimeTests(_HubFlowTestCase):
    """
    A websocket A relays for a visitor on B lives as long as B listens:
    A's probe, and the result of publishing each of the tunnel's frames to
    B, find B gone, and A then ends the relay and tells the client (a
    ws-teardown, 1001 where the client takes close codes).
    """

    def setUp(self):
        _HubFlowTestCase.setUp(self)
        self.a = self.make_hub("a")
        self.b = self.make_hub("b")
        self.connection = FakeConnection()
        self.a.attach(CLIENT, self.connection)
        self.visitor = FakeVisitor()
        self.stream_id, raw = ws_request()
        self.opened = self.b.websockets.open(CLIENT, self.stream_id, raw, self.visitor)
        self.pump()

    def accept(self):
        self.connection.answer(self.a, WSResponse(id=self.stream_id, ok=True))
        self.pump()
        self.successResultOf(self.opened)
        self.assertEqual(len(self.a.relays), 1)

    def kill_b(self):
        """
        B dies without a word: its subscriptions are simply gone (and so
        is its visitor).
        """
        self.hubs.remove(self.b)
        for channel in self.b._channels:
            self.bus.unsubscribe(channel, self.b._bus_received)

    def assertTornDown(self):
        self.assertEqual(len(self.a.relays), 0)
        last = self.connection.sent[-1]
        self.assertEqual((type(last), last.id), (WSTeardown, self.stream_id))

    def test_the_probe_keeps_the_relay_of_a_listening_origin(self):
        """While B listens, A's probe changes nothing."""
        self.accept()
        self.a.probe_remote()
        self.pump()
        self.assertEqual(len(self.a.relays), 1)
        self.assertEqual([type(m) for m in self.connection.sent], [WSRequest])
        self.b.websockets.to_tunnel(self.stream_id, encode(WSTeardown(id=self.stream_id)),
                                    last=True)
        self.pump()

    def test_the_probe_ends_the_relay_of_a_vanished_origin(self):
        """A's periodic probe finds B gone: relay dropped, client told (idle websocket)."""
        self.accept()
        self.kill_b()
        self.a.probe_remote()
        self.pump()
        self.assertTornDown()

    def test_a_frame_nobody_receives_ends_the_relay(self):
        """A frame from the tunnel that reaches nobody on B's channel ends the relay."""
        self.accept()
        self.kill_b()
        self.connection.answer(self.a, text(self.stream_id, "anyone?"))
        self.pump()
        self.assertTornDown()
        self.assertEqual(self.visitor.delivered, [])

    def test_an_accepting_answer_nobody_receives_ends_the_relay(self):
        """The ws-response itself reaching nobody (B died while it opened) ends the relay."""
        self.kill_b()
        self.connection.answer(self.a, WSResponse(id=self.stream_id, ok=True))
        self.pump()
        self.assertTornDown()
        self.opened.cancel()  # what is left of B
        self.failureResultOf(self.opened, CancelledError)
        self.pump()

    def test_close_codes_reach_a_client_that_takes_them(self):
        """A client speaking ws-close is told 1001 and why."""
        self.connection.features = frozenset([WS_CLOSE])
        self.accept()
        self.kill_b()
        self.a.probe_remote()
        self.pump()
        self.assertTornDown()
        self.assertEqual(self.connection.sent[-1].code, 1001)
        self.assertIn("visitor's proxy instance is gone", self.connection.sent[-1].reason)

    def test_a_bus_that_is_down_proves_nothing(self):
        """A probe that cannot be published (bus down) keeps the relay."""
        self.accept()
        self.a.relay_published(None, self.stream_id, self.a.relays.find(self.stream_id))
        self.a._relay_origin_probed(None, "b")
        self.assertEqual(len(self.a.relays), 1)
        self.b.websockets.to_tunnel(self.stream_id, encode(WSTeardown(id=self.stream_id)),
                                    last=True)
        self.pump()


# -- the client's side ----------------------------------------------------------


class _LocalService(WebSocketServerProtocol):
    """
    Echoes every message; closes with 4002 when told "close".
    """

    def onConnect(self, request):
        self.factory.handshakes.append(request)
        if "superchat" in request.protocols:
            return "superchat"

    def onMessage(self, payload, isBinary):
        if payload == b"close":
            self.sendClose(4002, "bye")
        else:
            self.sendMessage(payload, isBinary)

    def onClose(self, wasClean, code, reason):
        self.factory.closes.append(code)


class LocalWebSocketsTests(SynchronousTestCase):
    """
    L{LocalWebSockets} turns tunnel messages into a websocket to the local
    service and back, here over in-memory transports.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.sent = []
        self.local = LocalWebSockets(
            self.reactor, "http://127.0.0.1:8080", self.sent.append,
            frozenset([BINARY_WS, WS_CLOSE, WS_SUBPROTOCOL]),
        )
        self.service = WebSocketServerFactory(reactor=self.reactor)
        self.service.protocol = _LocalService
        self.service.handshakes = []
        self.service.closes = []
        self.service.setProtocolOptions(openHandshakeTimeout=0)
        global_timers = set(reactor.getDelayedCalls())
        self.addCleanup(
            lambda: self.assertEqual(
                (self.reactor.getDelayedCalls(),
                 set(reactor.getDelayedCalls()) - global_timers), ([], set())))

    def request(self, path="/chat", protocols=None):
        headers = {"X-Custom": "yes"}
        if protocols:
            headers["Sec-WebSocket-Protocol"] = ", ".join(protocols)
        message = WSRequest(url=path, query="a=1", headers=headers)
        self.local.open(message)
        return message.id

    def accept(self):
        """
        Complete the pending TCP connection to the local service in memory.

        @return: the L{IOPump} moving bytes between the two.
        """
        host, port, factory, timeout, bind = self.reactor.tcpClients[-1]
        client = factory.buildProtocol(None)
        server = self.service.buildProtocol(None)
        pump = connect(server, makeFakeServer(server), client, makeFakeClient(client),
                       greet=False)
        pump.flush()
        return pump

    def sent_types(self):
        return [type(m) for m in self.sent]

    def test_ws_request_opens_the_local_websocket_and_answers_ok(self):
        """A ws-request connects to the local service with path, query and headers, then answers ok with the chosen subprotocol."""
        stream_id = self.request(protocols=["chat", "superchat"])
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 8080))
        pump = self.accept()
        (handshake,) = self.service.handshakes
        self.assertEqual((handshake.path, handshake.params), ("/chat", {"a": ["1"]}))
        self.assertEqual(handshake.headers["x-custom"], "yes")
        (response,) = self.sent
        self.assertEqual((response.id, response.ok, response.protocol),
                         (stream_id, True, "superchat"))
        self.local.teardown(WSTeardown(id=stream_id))
        pump.flush()

    def test_frames_flow_both_ways(self):
        """A ws-message from the visitor reaches the local service; its answer goes back as a ws-message."""
        stream_id = self.request()
        pump = self.accept()
        self.local.deliver(WSMessage.from_payload(stream_id, b"\xff\x00", True, True))
        pump.flush()
        reply = self.sent[-1]
        self.assertEqual((type(reply), reply.id, reply.payload()),
                         (WSMessage, stream_id, b"\xff\x00"))
        self.local.teardown(WSTeardown(id=stream_id))
        pump.flush()

    def test_teardown_closes_the_local_websocket_with_its_code(self):
        """A ws-teardown with code 4001 closes the local websocket with 4001."""
        stream_id = self.request()
        pump = self.accept()
        self.local.teardown(WSTeardown(id=stream_id, code=4001, reason="done"))
        pump.flush()
        self.assertEqual(self.service.closes, [4001])
        self.assertEqual(self.local.streams, {})
        self.assertEqual(self.sent_types(), [WSResponse])

    def test_local_close_is_a_teardown_with_its_code(self):
        """The local service closing with 4002 sends a ws-teardown carrying 4002."""
        stream_id = self.request()
        pump = self.accept()
        self.local.deliver(WSMessage.from_payload(stream_id, b"close", False, True))
        pump.flush()
        teardown = self.sent[-1]
        self.assertEqual((type(teardown), teardown.code, teardown.reason),
                         (WSTeardown, 4002, "bye"))
        self.assertEqual(self.local.streams, {})

    def test_teardown_while_connecting_gives_up_without_answering(self):
        """A ws-teardown before the local handshake completes cancels it, and no ws-response is sent."""
        stream_id = self.request()
        self.local.teardown(WSTeardown(id=stream_id))
        self.assertEqual(self.local.streams, {})
        self.assertEqual(self.sent, [])

    def test_teardown_after_tcp_connect_closes_the_websocket_once_open(self):
        """A ws-teardown after the TCP connect but before the handshake: the local websocket is closed (1001) as it opens."""
        stream_id = self.request()
        host, port, factory, timeout, bind = self.reactor.tcpClients[-1]
        client = factory.buildProtocol(None)
        server = self.service.buildProtocol(None)
        # TCP connected, the handshake written but not delivered yet.
        pump = connect(server, makeFakeServer(server), client, makeFakeClient(client),
                       greet=False)
        self.local.teardown(WSTeardown(id=stream_id))
        pump.flush()
        self.assertEqual(self.service.closes, [1001])
        self.assertEqual(self.sent, [])

    def test_unreachable_local_service_answers_not_ok(self):
        """A refused TCP connection answers the ws-request with ok false and the reason."""
        stream_id = self.request()
        host, port, factory, timeout, bind = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.reactor.advance(1)
        (response,) = self.sent
        self.assertEqual((response.id, response.ok), (stream_id, False))
        self.assertIn("cannot reach the local service", response.error)
        self.assertEqual(self.local.streams, {})


class FakeConnectionContractTests(SynchronousTestCase):
    def test_fake_connection_provides_the_interface(self):
        """The stand-in provides ITunnelConnection, as the real connection does."""
        self.assertTrue(verifyObject(ITunnelConnection, FakeConnection()))

    def test_fake_visitor_provides_the_interface(self):
        """The stand-in visitor provides IStreamVisitor, as the real one does."""
        self.assertTrue(verifyObject(IStreamVisitor, FakeVisitor()))
