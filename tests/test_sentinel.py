"""
The Sentinel pieces of the Redis bus without a network: the URL, the
sentinels' reply, asking several sentinels at once, and the watch that
notices a moved master (on a L{Clock}).
"""

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from brickchain_proxy.bus import validate_bus_url
from brickchain_proxy.bus.interface import BusUnavailable
from brickchain_proxy.bus.sentinel import (
    _INCOMPLETE,
    MasterEndpoint,
    MasterWatch,
    Sentinels,
    parse_address_reply,
    parse_sentinel_url,
)


class URLTests(SynchronousTestCase):

    def test_full_url(self):
        self.assertEqual(
            parse_sentinel_url("redis+sentinel://user:p%40ss@s1:26379,10.0.0.2:26380/mymaster/2"),
            dict(sentinels=[("s1", 26379), ("10.0.0.2", 26380)], master="mymaster", db=2,
                 username="user", password="p@ss"))

    def test_password_only_and_ipv6(self):
        config = parse_sentinel_url("redis+sentinel://:secret@[::1]:26379/m")
        self.assertEqual((config["sentinels"], config["password"], config["username"],
                          config["db"]), ([("::1", 26379)], "secret", None, None))

    def test_bad_urls(self):
        for url in ("redis+sentinel://s1/mymaster",          # no port
                    "redis+sentinel://s1:x/mymaster",
                    "redis+sentinel://s1:0/mymaster",
                    "redis+sentinel://s1:26379",               # no master
                    "redis+sentinel://s1:26379/m/x",           # bad db
                    "redis+sentinel://s1:26379/m/1/extra"):
            self.assertRaises(ValueError, parse_sentinel_url, url)
            self.assertRaises(ValueError, validate_bus_url, url)

    def test_bus_option_accepts_it(self):
        url = "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster"
        self.assertEqual(validate_bus_url(url), url)


class ReplyTests(SynchronousTestCase):

    def test_address(self):
        self.assertEqual(parse_address_reply(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n"),
                         ("127.0.0.1", 6380))

    def test_unknown_master(self):
        self.assertIsNone(parse_address_reply(b"*-1\r\n"))

    def test_incomplete(self):
        for part in (b"", b"*2\r\n", b"*2\r\n$9\r\n127.0", b"*2\r\n$9\r\n127.0.0.1\r\n"):
            self.assertIs(parse_address_reply(part), _INCOMPLETE)

    def test_errors(self):
        for data in (b"-ERR no such master\r\n", b"+OK\r\n", b"*3\r\n", b"*2\r\n:1\r\n:2\r\n\r\n\r\n",
                     b"*2\r\n$1\r\nh\r\n$1\r\nx\r\n"):
            self.assertRaises(ValueError, parse_address_reply, data)


class _FakeEndpoint:
    """
    Connects a protocol to a L{StringTransport} and answers it with
    C{reply} (or fails with C{error}; or never answers).
    """

    def __init__(self, network, address):
        self._network = network
        self.address = address

    def connect(self, factory):
        self._network.connects.append(self.address)
        behaviour = self._network.behaviour.get(self.address, "silent")
        if isinstance(behaviour, Exception):
            return defer.fail(behaviour)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self._network.transports.append(transport)
        if isinstance(behaviour, bytes):
            protocol.dataReceived(behaviour)
        return defer.succeed(protocol)


class _Network:
    def __init__(self, **behaviour):
        self.behaviour = behaviour  # "host:port" -> reply bytes, or an error
        self.connects = []
        self.transports = []

    def connect_to(self, host, port):
        return _FakeEndpoint(self, "{}:{}".format(host, port))


def reply(port):
    return b"*2\r\n$9\r\n127.0.0.1\r\n$%d\r\n%d\r\n" % (len(str(port)), port)


class SentinelsTests(SynchronousTestCase):

    def sentinels(self, network, clock=None):
        return Sentinels(clock or Clock(), [("s", 1), ("s", 2), ("s", 3)], "mymaster",
                         network.connect_to)

    def test_asks_with_the_master_name(self):
        network = _Network(**{"s:1": reply(6380)})
        self.sentinels(network).master_address()
        self.assertEqual(network.transports[0].value(),
                         b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n"
                         b"$8\r\nmymaster\r\n")
        self.assertTrue(network.transports[0].disconnecting)

    def test_first_answer_wins(self):
        """A sentinel that is down or does not know the master does not stop the others'."""
        network = _Network(**{"s:1": ConnectionRefusedError(), "s:2": b"*-1\r\n",
                              "s:3": reply(6381)})
        address = self.successResultOf(self.sentinels(network).master_address())
        self.assertEqual(address, ("127.0.0.1", 6381))

    def test_no_sentinel_names_a_master(self):
        network = _Network(**{"s:1": ConnectionRefusedError(), "s:2": b"*-1\r\n",
                              "s:3": b"-ERR nope\r\n"})
        failure = self.failureResultOf(self.sentinels(network).master_address(),
                                       BusUnavailable)
        self.assertIn("no sentinel names master mymaster", str(failure.value))

    def test_silent_sentinels_time_out(self):
        clock = Clock()
        d = self.sentinels(_Network(), clock).master_address()
        self.assertNoResult(d)
        clock.advance(2)
        self.failureResultOf(d, BusUnavailable)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_endpoint_connects_to_the_master_named_now(self):
        network = _Network(**{"s:1": reply(6380), "s:2": reply(6380), "s:3": reply(6380),
                              "127.0.0.1:6380": b""})
        endpoint = MasterEndpoint(self.sentinels(network), network.connect_to)
        factory = _Factory()
        self.successResultOf(endpoint.connect(factory))
        self.assertEqual(endpoint.address, ("127.0.0.1", 6380))
        self.assertEqual(network.connects[-1], "127.0.0.1:6380")

    def test_endpoint_fails_without_a_master(self):
        network = _Network(**{"s:1": b"*-1\r\n", "s:2": b"*-1\r\n", "s:3": b"*-1\r\n"})
        endpoint = MasterEndpoint(self.sentinels(network), network.connect_to)
        self.failureResultOf(endpoint.connect(_Factory()), BusUnavailable)


class _Factory:
    def buildProtocol(self, addr):
        from twisted.internet.protocol import Protocol
        return Protocol()


class _StaticSentinels:
    master = "mymaster"

    def __init__(self, address):
        self.address = address
        self.asked = 0

    def master_address(self):
        self.asked += 1
        if isinstance(self.address, Exception):
            return defer.fail(self.address)
        return defer.succeed(self.address)


class _Endpoint:
    address = ("127.0.0.1", 6379)


class MasterWatchTests(SynchronousTestCase):

    def test_moved_master_is_reported(self):
        clock, moved = Clock(), []
        sentinels = _StaticSentinels(("127.0.0.1", 6379))
        watch = MasterWatch(clock, sentinels, _Endpoint(), moved.append, interval=2)
        watch.start()
        clock.advance(2)
        self.assertEqual((sentinels.asked, moved), (1, []))
        sentinels.address = ("127.0.0.1", 6380)
        clock.advance(2)
        self.assertEqual(moved, [("127.0.0.1", 6380)])
        watch.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_sentinels_down_keep_watching(self):
        clock, moved = Clock(), []
        sentinels = _StaticSentinels(BusUnavailable("down"))
        watch = MasterWatch(clock, sentinels, _Endpoint(), moved.append, interval=2)
        watch.start()
        clock.advance(2)
        clock.advance(2)
        self.assertEqual((sentinels.asked, moved), (2, []))
        watch.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_connection_yet_is_not_a_move(self):
        clock, moved = Clock(), []
        endpoint = _Endpoint()
        endpoint.address = None
        watch = MasterWatch(clock, _StaticSentinels(("h", 1)), endpoint, moved.append)
        watch.start()
        clock.advance(watch.interval)
        self.assertEqual(moved, [])
        watch.stop()
