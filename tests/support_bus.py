"""
The contracts of the message bus (L{IBus}) and the tunnel directory
(L{ITunnelDirectory}), as test mixins every backend's test case uses
(L{tests.test_bus} for the in-memory backend, L{tests.test_redis_bus} for
Redis), and what they need: unique names and a handler that records.

A backend's test case mixes them into a trial L{TestCase} and supplies the
factories (C{make_bus}, C{active_channels}, C{make_directory}); every test
returns a Deferred and waits for delivery rather than for time, so a
networked backend (Redis) can reuse them as they are.  Channel names and
client ids are unique per test so tests sharing one server cannot see each
other's messages.
"""

import uuid

from twisted.internet import defer
from zope.interface.verify import verifyObject

from brickchain_proxy.bus import IBus, ITunnelDirectory


def unique(prefix):
    """
    A name no other test uses.
    """
    return "test:{}:{}".format(prefix, uuid.uuid4().hex)


class Collector:
    """
    A bus handler that records payloads and lets a test wait for them.
    """

    def __init__(self):
        self.received = []
        self._waiting = []

    def __call__(self, payload):
        self.received.append(payload)
        still_waiting = []
        for count, d in self._waiting:
            if len(self.received) >= count:
                d.callback(list(self.received))
            else:
                still_waiting.append((count, d))
        self._waiting = still_waiting

    def wait_for(self, count):
        """
        @return: a Deferred firing with the payloads once C{count} arrived.
        """
        if len(self.received) >= count:
            return defer.succeed(list(self.received))
        d = defer.Deferred()
        self._waiting.append((count, d))
        return d


class HandlerBroke(Exception):
    """
    Raised by a bus handler on purpose.
    """


class BusContractMixin:
    """
    What every L{IBus} backend does.  Mix into a trial L{TestCase}.
    """

    def make_bus(self):
        """
        @return: a started L{IBus} provider (or a Deferred of one), cleaned
            up by the implementation through C{self.addCleanup}.
        """
        raise NotImplementedError()

    def active_channels(self, bus):
        """
        @return: a Deferred firing with the set of channels C{bus} currently
            has subscriptions for.
        """
        raise NotImplementedError()

    @defer.inlineCallbacks
    def bus(self):
        bus = yield defer.maybeDeferred(self.make_bus)
        return bus

    @defer.inlineCallbacks
    def test_provides_the_interface(self):
        """
        The bus provides L{IBus}.
        """
        bus = yield self.bus()
        self.assertTrue(verifyObject(IBus, bus))

    @defer.inlineCallbacks
    def test_delivery_is_asynchronous(self):
        """
        A handler is never called inside C{publish}, but later.
        """
        bus = yield self.bus()
        channel, handler = unique("async"), Collector()
        yield bus.subscribe(channel, handler)

        published = bus.publish(channel, b"hello")
        self.assertEqual(handler.received, [])

        yield published
        self.assertEqual((yield handler.wait_for(1)), [b"hello"])

    @defer.inlineCallbacks
    def test_delivery_is_in_publish_order(self):
        """
        Messages on one channel arrive in the order they were published.
        """
        bus = yield self.bus()
        channel, handler = unique("order"), Collector()
        yield bus.subscribe(channel, handler)
        payloads = [b"message %d" % (i,) for i in range(20)]

        yield defer.gatherResults([bus.publish(channel, p) for p in payloads])

        self.assertEqual((yield handler.wait_for(20)), payloads)

    @defer.inlineCallbacks
    def test_payloads_arrive_byte_exact(self):
        """
        A payload is opaque bytes: newlines, NULs and non-UTF-8 survive.
        """
        bus = yield self.bus()
        channel, handler = unique("bytes"), Collector()
        yield bus.subscribe(channel, handler)
        payload = b"R\nline\x00\xff\xfe" + bytes(range(256))

        yield bus.publish(channel, payload)

        self.assertEqual((yield handler.wait_for(1)), [payload])

    @defer.inlineCallbacks
    def test_every_handler_of_a_channel_gets_each_message(self):
        """
        A channel may have several handlers; each receives every message.
        """
        bus = yield self.bus()
        channel, first, second = unique("fanout"), Collector(), Collector()
        yield bus.subscribe(channel, first)
        yield bus.subscribe(channel, second)

        yield bus.publish(channel, b"one")
        yield bus.publish(channel, b"two")

        self.assertEqual((yield first.wait_for(2)), [b"one", b"two"])
        self.assertEqual((yield second.wait_for(2)), [b"one", b"two"])

    @defer.inlineCallbacks
    def test_messages_stay_on_their_channel(self):
        """
        A handler receives only what is published on its own channel.
        """
        bus = yield self.bus()
        mine, theirs = unique("mine"), unique("theirs")
        handler, other = Collector(), Collector()
        yield bus.subscribe(mine, handler)
        yield bus.subscribe(theirs, other)

        yield bus.publish(theirs, b"not for you")
        yield bus.publish(mine, b"for you")

        self.assertEqual((yield handler.wait_for(1)), [b"for you"])
        self.assertEqual((yield other.wait_for(1)), [b"not for you"])

    @defer.inlineCallbacks
    def test_unsubscribe_stops_delivery_to_that_handler(self):
        """
        After C{unsubscribe}, a handler gets nothing more while the
        channel's other handlers still do.
        """
        bus = yield self.bus()
        channel, leaving, staying = unique("unsub"), Collector(), Collector()
        yield bus.subscribe(channel, leaving)
        yield bus.subscribe(channel, staying)

        yield bus.unsubscribe(channel, leaving)
        yield bus.publish(channel, b"after")

        self.assertEqual((yield staying.wait_for(1)), [b"after"])
        self.assertEqual(leaving.received, [])

    @defer.inlineCallbacks
    def test_unsubscribing_the_last_handler_drops_the_channel(self):
        """
        A channel without handlers is dropped, and a later subscriber gets
        only what is published after it subscribed.
        """
        bus = yield self.bus()
        channel, first, later = unique("drop"), Collector(), Collector()
        yield bus.subscribe(channel, first)
        self.assertIn(channel, (yield self.active_channels(bus)))

        yield bus.unsubscribe(channel, first)

        self.assertNotIn(channel, (yield self.active_channels(bus)))
        yield bus.subscribe(channel, later)
        yield bus.publish(channel, b"again")
        self.assertEqual((yield later.wait_for(1)), [b"again"])
        self.assertEqual(first.received, [])

    @defer.inlineCallbacks
    def test_unsubscribing_an_unknown_handler_is_harmless(self):
        """
        Unsubscribing something never subscribed changes nothing.
        """
        bus = yield self.bus()
        channel, handler = unique("unknown"), Collector()
        yield bus.subscribe(channel, handler)

        yield bus.unsubscribe(channel, Collector())
        yield bus.unsubscribe(unique("never"), handler)
        yield bus.publish(channel, b"still here")

        self.assertEqual((yield handler.wait_for(1)), [b"still here"])

    @defer.inlineCallbacks
    def test_publishing_to_a_channel_nobody_listens_on_is_harmless(self):
        """
        A message nobody subscribed to is dropped without error.
        """
        bus = yield self.bus()
        channel, handler = unique("after-void"), Collector()
        yield bus.subscribe(channel, handler)

        yield bus.publish(unique("void"), b"lost")
        yield bus.publish(channel, b"found")

        self.assertEqual((yield handler.wait_for(1)), [b"found"])

    @defer.inlineCallbacks
    def test_raising_handler_does_not_stop_the_others(self):
        """
        A handler that raises is logged; the other handlers still get that
        message and the ones after it.
        """
        bus = yield self.bus()
        channel, good = unique("raising"), Collector()

        def broken(payload):
            raise HandlerBroke(payload)

        yield bus.subscribe(channel, broken)
        yield bus.subscribe(channel, good)

        yield bus.publish(channel, b"one")
        yield bus.publish(channel, b"two")

        self.assertEqual((yield good.wait_for(2)), [b"one", b"two"])
        self.assertEqual(len(self.flushLoggedErrors(HandlerBroke)), 2)

    @defer.inlineCallbacks
    def test_handler_may_publish(self):
        """
        A handler publishing from inside delivery has its message delivered
        too (the hub answers requests that way).
        """
        bus = yield self.bus()
        requests, replies = unique("requests"), unique("replies")
        answers = Collector()

        def answer(payload):
            bus.publish(replies, b"re: " + payload)

        yield bus.subscribe(requests, answer)
        yield bus.subscribe(replies, answers)

        yield bus.publish(requests, b"question")

        self.assertEqual((yield answers.wait_for(1)), [b"re: question"])


class DirectoryContractMixin:
    """
    What every L{ITunnelDirectory} backend does.  Mix into a trial
    L{TestCase}.
    """

    def make_directory(self):
        """
        @return: an L{ITunnelDirectory} provider (or a Deferred of one),
            cleaned up by the implementation through C{self.addCleanup}.
        """
        raise NotImplementedError()

    @defer.inlineCallbacks
    def directory(self):
        directory = yield defer.maybeDeferred(self.make_directory)
        return directory

    @defer.inlineCallbacks
    def test_provides_the_interface(self):
        """
        The directory provides L{ITunnelDirectory}, C{ttl} included.
        """
        directory = yield self.directory()
        self.assertTrue(verifyObject(ITunnelDirectory, directory))

    @defer.inlineCallbacks
    def test_unknown_tunnel_is_offline(self):
        """
        Nobody holds a tunnel never claimed.
        """
        directory = yield self.directory()
        self.assertIsNone((yield directory.lookup(unique("client"))))

    @defer.inlineCallbacks
    def test_first_claim_has_no_previous_owner(self):
        """
        Claiming a free tunnel returns L{None} and records the claimant.
        """
        directory = yield self.directory()
        client = unique("client")

        self.assertIsNone((yield directory.claim(client, "a")))
        self.assertEqual((yield directory.lookup(client)), "a")

    @defer.inlineCallbacks
    def test_claim_returns_the_previous_owner_and_newest_wins(self):
        """
        A second instance claiming a tunnel takes it over and learns who
        held it.
        """
        directory = yield self.directory()
        client = unique("client")
        yield directory.claim(client, "a")

        self.assertEqual((yield directory.claim(client, "b")), "a")
        self.assertEqual((yield directory.lookup(client)), "b")

    @defer.inlineCallbacks
    def test_claim_again_by_the_same_owner(self):
        """
        Re-claiming one's own tunnel returns oneself as previous owner.
        """
        directory = yield self.directory()
        client = unique("client")
        yield directory.claim(client, "a")

        self.assertEqual((yield directory.claim(client, "a")), "a")
        self.assertEqual((yield directory.lookup(client)), "a")

    @defer.inlineCallbacks
    def test_release_by_the_owner_removes_the_entry(self):
        """
        The instance holding a tunnel can release it; it is then offline.
        """
        directory = yield self.directory()
        client = unique("client")
        yield directory.claim(client, "a")

        yield directory.release(client, "a")

        self.assertIsNone((yield directory.lookup(client)))

    @defer.inlineCallbacks
    def test_release_by_another_instance_is_ignored(self):
        """
        An instance that lost a tunnel cannot release the new owner's entry
        (its old connection closing late must not take the tunnel offline).
        """
        directory = yield self.directory()
        client = unique("client")
        yield directory.claim(client, "a")
        yield directory.claim(client, "b")

        yield directory.release(client, "a")

        self.assertEqual((yield directory.lookup(client)), "b")

    @defer.inlineCallbacks
    def test_release_of_an_unknown_tunnel_is_harmless(self):
        """
        Releasing a tunnel nobody holds does nothing.
        """
        directory = yield self.directory()
        yield directory.release(unique("client"), "a")

    @defer.inlineCallbacks
    def test_renew_by_the_owner_keeps_the_entry(self):
        """
        The owner renewing its entry is told it is still its own.
        """
        directory = yield self.directory()
        client = unique("client")
        yield directory.claim(client, "a")

        self.assertTrue((yield directory.renew(client, "a")))
        self.assertEqual((yield directory.lookup(client)), "a")

    @defer.inlineCallbacks
    def test_renew_after_takeover_reports_the_loss(self):
        """
        An instance whose tunnel was taken over learns it on renewal, and
        its renewal does not take the tunnel back.
        """
        directory = yield self.directory()
        client = unique("client")
        yield directory.claim(client, "a")
        yield directory.claim(client, "b")

        self.assertFalse((yield directory.renew(client, "a")))
        self.assertEqual((yield directory.lookup(client)), "b")

    @defer.inlineCallbacks
    def test_renew_after_release_reports_the_loss(self):
        """
        Renewing an entry that is gone reports L{False} and does not bring
        it back.
        """
        directory = yield self.directory()
        client = unique("client")
        yield directory.claim(client, "a")
        yield directory.release(client, "a")

        self.assertFalse((yield directory.renew(client, "a")))
        self.assertIsNone((yield directory.lookup(client)))


__all__ = ["unique", "Collector", "HandlerBroke", "BusContractMixin",
           "DirectoryContractMixin"]
