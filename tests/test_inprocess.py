"""
The in-memory connections to a service inside the process
(L{brickchain_proxy.client.inprocess}), on a L{Clock}: delivery in a later
turn and in order, reading paused and writers' producers paused with it,
closing and aborting, and the endpoint.
"""

from twisted.internet import error
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from brickchain_proxy.client.inprocess import HIGH_WATER, InProcessEndpoint


class Recorder(Protocol):
    """
    Records what it receives and how its connection ended.
    """

    def __init__(self):
        self.received = []
        self.lost = None
        self.made = False
        self.in_receive = False

    def connectionMade(self):
        self.made = True

    def dataReceived(self, data):
        assert not self.in_receive, "reentrant dataReceived"
        self.in_receive = True
        self.received.append(data)
        self.in_receive = False

    def connectionLost(self, reason):
        self.lost = reason

    @property
    def data(self):
        return b"".join(self.received)


@implementer(IPushProducer)
class Producer:
    """
    Records pause/resume/stop calls.
    """

    def __init__(self):
        self.calls = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")

    def stopProducing(self):
        self.calls.append("stop")


class _Fixture:
    def setUp(self):
        self.clock = Clock()
        self.server = Recorder()
        self.client = Recorder()
        self.endpoint = InProcessEndpoint(
            self.clock, Factory.forProtocol(lambda: self.server))
        factory = Factory.forProtocol(lambda: self.client)
        self.assertIs(self.successResultOf(self.endpoint.connect(factory)),
                      self.client)

    def turn(self, times=5):
        for _ in range(times):
            self.clock.advance(0)


class DeliveryTests(_Fixture, SynchronousTestCase):
    """
    What is written arrives, later and in order.
    """

    def test_interfaces(self):
        """Both sides provide ITransport, IConsumer and IPushProducer."""
        for transport in (self.client.transport, self.server.transport):
            verifyObject(ITransport, transport)
            verifyObject(IConsumer, transport)
            verifyObject(IPushProducer, transport)
        verifyObject(IStreamClientEndpoint, self.endpoint)

    def test_both_sides_are_connected(self):
        """connect() makes both connections; the addresses are loopback."""
        self.assertTrue(self.server.made and self.client.made)
        self.assertEqual(self.client.transport.getPeer(),
                         self.server.transport.getHost())
        self.assertEqual(self.server.transport.getPeer().host, "127.0.0.1")
        self.assertEqual(self.server.transport.getHost().port, 80)

    def test_data_arrives_in_a_later_turn_in_order(self):
        """Writes are not delivered from inside write(), and keep their order."""
        self.client.transport.write(b"one ")
        self.client.transport.writeSequence([b"two ", b"three"])
        self.assertEqual(self.server.received, [])
        self.turn()
        self.assertEqual(self.server.data, b"one two three")
        self.server.transport.write(b"back")
        self.turn()
        self.assertEqual(self.client.data, b"back")

    def test_protocol_can_be_swapped(self):
        """Assigning transport.protocol (as WebSocketResource does) routes later data."""
        other = Recorder()
        self.server.transport.protocol = other
        self.client.transport.write(b"x")
        self.turn()
        self.assertEqual((self.server.data, other.data), (b"", b"x"))


class FlowControlTests(_Fixture, SynchronousTestCase):
    """
    A reader that pauses holds the data, and the writer's producer is paused.
    """

    def test_paused_reader_gets_nothing_until_resumed(self):
        """pauseProducing stops delivery; resumeProducing delivers what waited."""
        self.server.transport.pauseProducing()
        self.client.transport.write(b"held")
        self.turn()
        self.assertEqual(self.server.data, b"")
        self.server.transport.resumeProducing()
        self.turn()
        self.assertEqual(self.server.data, b"held")

    def test_writer_producer_paused_past_high_water_then_resumed(self):
        """Past HIGH_WATER bytes unread, the writer's producer pauses; reading resumes it."""
        producer = Producer()
        self.client.transport.registerProducer(producer, True)
        self.server.transport.pauseProducing()
        self.client.transport.write(b"x" * HIGH_WATER)
        self.assertEqual(producer.calls, [])
        self.client.transport.write(b"x")
        self.assertEqual(producer.calls, ["pause"])
        self.client.transport.write(b"x")  # still paused: no second call
        self.assertEqual(producer.calls, ["pause"])
        self.server.transport.resumeProducing()
        self.turn()
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.assertEqual(len(self.server.data), HIGH_WATER + 2)

    def test_pull_producer_is_asked_for_more_when_drained(self):
        """A non-streaming producer is resumed once, then whenever its data is read."""
        producer = Producer()
        self.client.transport.registerProducer(producer, False)
        self.turn()
        self.assertEqual(producer.calls, ["resume"])
        self.client.transport.write(b"chunk")
        self.turn()
        self.assertEqual(producer.calls, ["resume", "resume"])

    def test_second_producer_is_refused(self):
        """Registering a producer over another raises, as TCP transports do."""
        self.client.transport.registerProducer(Producer(), True)
        self.assertRaises(RuntimeError, self.client.transport.registerProducer,
                          Producer(), True)
        self.client.transport.unregisterProducer()
        self.client.transport.registerProducer(Producer(), True)


class ClosingTests(_Fixture, SynchronousTestCase):
    """
    loseConnection after delivery; abortConnection at once.
    """

    def test_lose_connection_delivers_first(self):
        """What was written before loseConnection arrives, then both sides see ConnectionDone."""
        self.server.transport.write(b"answer")
        self.server.transport.loseConnection()
        self.server.transport.write(b"late")  # dropped
        self.turn()
        self.assertEqual(self.client.data, b"answer")
        self.assertTrue(self.client.lost.check(error.ConnectionDone))
        self.assertTrue(self.server.lost.check(error.ConnectionDone))
        self.assertEqual(self.endpoint.connections, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lose_connection_waits_for_a_paused_reader(self):
        """The close waits until the paused peer has read everything."""
        self.client.transport.pauseProducing()
        self.server.transport.write(b"answer")
        self.server.transport.loseConnection()
        self.turn()
        self.assertIsNone(self.client.lost)
        self.client.transport.resumeProducing()
        self.turn()
        self.assertEqual(self.client.data, b"answer")
        self.assertIsNotNone(self.client.lost)

    def test_both_closing_with_data_pending_still_closes(self):
        """Both sides closing while neither reads any more does not hang."""
        self.client.transport.write(b"a")
        self.server.transport.write(b"b")
        self.client.transport.loseConnection()
        self.server.transport.loseConnection()
        self.turn()
        self.assertIsNotNone(self.client.lost)
        self.assertIsNotNone(self.server.lost)

    def test_abort_drops_data_and_stops_producers(self):
        """abortConnection closes at once; registered producers are stopped."""
        producer = Producer()
        self.server.transport.registerProducer(producer, True)
        self.server.transport.write(b"never read")
        self.client.transport.abortConnection()
        self.assertTrue(self.client.lost.check(error.ConnectionAborted))
        self.assertTrue(self.server.lost.check(error.ConnectionLost))
        self.assertEqual(producer.calls, ["stop"])
        self.turn()
        self.assertEqual(self.client.data, b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_endpoint_close_aborts_open_connections(self):
        """close() aborts what is still open and stops the server factory."""
        stopped = []
        self.endpoint._server_factory.doStop = lambda: stopped.append(True)
        self.endpoint.close()
        self.assertTrue(self.client.lost.check(error.ConnectionAborted))
        self.assertEqual(stopped, [True])

    def test_refusing_factory_fails_the_connect(self):
        """A server factory that builds no protocol fails connect()."""
        endpoint = InProcessEndpoint(self.clock, Factory.forProtocol(lambda: None))
        endpoint._server_factory.buildProtocol = lambda addr: None
        self.failureResultOf(endpoint.connect(Factory.forProtocol(Recorder)),
                             error.ConnectionRefusedError)

