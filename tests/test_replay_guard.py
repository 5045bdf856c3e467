"""
The L{IReplayGuard} contract, run over both guards -- the in-memory one and
the one shared through a real redis-server started for the test -- and
what each must get right on its own: the memory guard's expiry, pruning
and bound on a L{Clock}; the Redis guard's sharing between instances, its
key TTLs and failing closed while Redis is down.
"""

import uuid

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from brickchain_proxy.bus import open_backend
from brickchain_proxy.bus.redis_state import RedisReplayGuard
from brickchain_proxy.replay import (
    IReplayGuard,
    MemoryReplayGuard,
    ReplayCheckUnavailable,
)
from tests.redis_server import RedisServer, wait_for_bus
from tests.support import events_like, wait_until

NOW = 1795000000.0


def _id():
    return uuid.uuid4().hex


class ReplayGuardContractMixin:
    """
    What every L{IReplayGuard} does; C{make_guard()} returns a Deferred of a
    guard whose clock reads about C{self.now()}.
    """

    @defer.inlineCallbacks
    def test_provides_the_interface(self):
        """The guard provides IReplayGuard."""
        guard = yield self.make_guard()
        self.assertTrue(verifyObject(IReplayGuard, guard))

    @defer.inlineCallbacks
    def test_first_use_is_true_then_false(self):
        """A token is new once; every later use is a replay."""
        guard = yield self.make_guard()
        token, expires = _id(), self.now() + 60
        first = guard.first_use(token, expires)
        self.assertIsInstance(first, defer.Deferred)
        self.assertIs((yield first), True)
        self.assertIs((yield guard.first_use(token, expires)), False)
        self.assertIs((yield guard.first_use(token, expires + 600)), False)

    @defer.inlineCallbacks
    def test_tokens_are_independent(self):
        """One token used leaves every other one new."""
        guard = yield self.make_guard()
        used = _id()
        yield guard.first_use(used, self.now() + 60)
        for _ in range(3):
            self.assertIs((yield guard.first_use(_id(), self.now() + 60)), True)

    @defer.inlineCallbacks
    def test_prune_returns_how_many_it_forgot(self):
        """prune() answers with a count."""
        guard = yield self.make_guard()
        yield guard.first_use(_id(), self.now() + 60)
        self.assertIsInstance(guard.prune(), int)


class MemoryGuardContractTests(ReplayGuardContractMixin, TestCase):
    """
    The contract for L{MemoryReplayGuard}.
    """

    def now(self):
        return NOW

    def make_guard(self):
        clock = Clock()
        clock.advance(NOW)
        return defer.succeed(MemoryReplayGuard(clock))


class RedisGuardContractTests(ReplayGuardContractMixin, TestCase):
    """
    The contract for L{RedisReplayGuard} on a real redis-server.
    """

    timeout = 30

    def now(self):
        return reactor.seconds()

    @defer.inlineCallbacks
    def make_guard(self):
        server = yield defer.ensureDeferred(RedisServer.for_test(self))
        backend = open_backend(server.url, reactor)
        backend.start()
        self.addCleanup(backend.stop)
        yield wait_for_bus(backend)
        return backend.replay_guard()


class MemoryGuardTests(SynchronousTestCase):
    """
    L{MemoryReplayGuard}: each token until its expiry on the injected clock,
    expired ones pruned, and a bound on how many it holds.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.guard = MemoryReplayGuard(self.clock, max_entries=3)

    def use(self, token, expires_at):
        return self.successResultOf(self.guard.first_use(token, expires_at))

    def test_a_token_is_remembered_until_it_expires(self):
        """Up to its expiry a token is a replay; then it is forgotten."""
        self.assertTrue(self.use("t", NOW + 65))
        self.clock.advance(65)
        self.assertFalse(self.use("t", NOW + 65))
        self.clock.advance(0.001)
        self.assertEqual(self.guard.prune(), 1)
        self.assertEqual(len(self.guard), 0)

    def test_expired_tokens_are_pruned_on_use_and_on_prune(self):
        """Expired entries go at the next first_use, or at prune(), which counts them."""
        for number, expires in enumerate([10, 20, 30]):
            self.use("t%d" % number, NOW + expires)
        self.clock.advance(15)
        self.use("new", NOW + 100)
        self.assertEqual(len(self.guard), 3)
        self.clock.advance(10)
        self.assertEqual(self.guard.prune(), 1)
        self.assertEqual(len(self.guard), 2)
        self.clock.advance(1000)
        self.assertEqual(self.guard.prune(), 2)
        self.assertEqual(len(self.guard), 0)
        self.assertEqual(self.guard.prune(), 0)

    def test_a_full_guard_refuses_rather_than_forgets(self):
        """Past max_entries unexpired tokens, first_use fails closed; room returns as they expire."""
        for number in range(3):
            self.assertTrue(self.use("t%d" % number, NOW + 60))
        failure = self.failureResultOf(self.guard.first_use("t3", NOW + 60),
                                       ReplayCheckUnavailable)
        self.assertIn("3 recent registrations", failure.getErrorMessage())
        self.assertFalse(self.use("t0", NOW + 60))  # replays are still told apart
        self.clock.advance(61)
        self.assertTrue(self.use("t3", NOW + 120))
        self.assertEqual(len(self.guard), 1)

    def test_since_is_when_it_started(self):
        """A memory guard remembers from its creation on: since is that moment."""
        self.assertEqual(self.guard.since, NOW)
        self.clock.advance(100)
        self.assertEqual(MemoryReplayGuard(self.clock).since, NOW + 100)

    def test_an_already_expired_token_is_not_stored(self):
        """A token past its expiry (the verifier refuses it) takes no room."""
        self.assertTrue(self.use("old", NOW - 1))
        self.assertEqual(len(self.guard), 0)

    def test_many_tokens_leave_nothing_once_expired(self):
        """A thousand tokens over time: memory follows the recent ones only."""
        guard = MemoryReplayGuard(self.clock)
        for number in range(1000):
            self.successResultOf(guard.first_use(str(number), self.clock.seconds() + 65))
            self.clock.advance(1)
        self.assertLessEqual(len(guard), 66)
        self.clock.advance(66)
        guard.prune()
        self.assertEqual(len(guard), 0)


class RedisGuardTests(TestCase):
    """
    L{RedisReplayGuard}: one key per used token, shared by every instance
    on one Redis, expiring with the token; closed while Redis is down.
    """

    timeout = 30

    async def backend(self):
        if getattr(self, "_redis", None) is None:
            self._redis = await RedisServer.for_test(self)
        backend = open_backend(self._redis.url, reactor)
        backend.start()
        self.addCleanup(backend.stop)
        await wait_for_bus(backend)
        return backend

    async def test_a_token_used_on_one_instance_is_a_replay_on_another(self):
        """Two instances on one Redis: first use on A, a replay on B and on A."""
        a, b = await self.backend(), await self.backend()
        guard_a, guard_b = a.replay_guard(), b.replay_guard()
        self.assertIsInstance(guard_a, RedisReplayGuard)
        token = _id()
        self.assertTrue(await guard_a.first_use(token, reactor.seconds() + 60))
        self.assertFalse(await guard_b.first_use(token, reactor.seconds() + 60))
        self.assertFalse(await guard_a.first_use(token, reactor.seconds() + 60))

    async def test_the_key_lives_until_expiry_plus_the_margin(self):
        """The token's key has a PX TTL: its remaining lifetime plus 5 s."""
        backend = await self.backend()
        token = _id()
        await backend.replay_guard().first_use(token, reactor.seconds() + 60)
        ttl = await backend.command("PTTL", "brickproxy:token:" + token)
        self.assertGreater(int(ttl), 63000)
        self.assertLessEqual(int(ttl), 65000)

    async def test_an_expired_key_is_gone(self):
        """Past expiry (and margin) Redis has dropped the key: nothing is kept."""
        backend = await self.backend()
        guard = RedisReplayGuard(backend, reactor, margin=0.0)
        token = _id()
        await guard.first_use(token, reactor.seconds() + 0.05)
        key = "brickproxy:token:" + token
        self.assertEqual(int(await backend.command("EXISTS", key)), 1)
        for _ in range(200):
            if int(await backend.command("EXISTS", key)) == 0:
                break
            await deferLater(reactor, 0.01, lambda: None)
        else:
            self.fail("the key of an expired token is still in Redis")
        self.assertTrue(await guard.first_use(token, reactor.seconds() + 60))

    async def test_redis_down_fails_closed_and_says_so_once(self):
        """Unreachable Redis: ReplayCheckUnavailable each time, one warning; back, an info."""
        log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        backend = await self.backend()
        guard = backend.replay_guard()
        await self._redis.stop()
        await wait_until(lambda: not backend.connected, what="Redis gone")
        for _ in range(3):
            with self.assertRaises(ReplayCheckUnavailable):
                await guard.first_use(_id(), reactor.seconds() + 60)
        self.assertEqual(len(events_like(log, "refusing new registrations",
                                         LogLevel.warn)), 1)
        await self._redis.start()
        await wait_for_bus(backend)
        self.assertTrue(await guard.first_use(_id(), reactor.seconds() + 60))
        self.assertEqual(len(events_like(log, "the replay guard is back",
                                         LogLevel.info)), 1)

    async def test_its_memory_outlives_the_instance(self):
        """The Redis guard's since is None: a restarted instance still knows old tokens."""
        backend = await self.backend()
        token = _id()
        await backend.replay_guard().first_use(token, reactor.seconds() + 60)
        restarted = await self.backend()
        guard = restarted.replay_guard()
        self.assertIsNone(guard.since)
        self.assertFalse(await guard.first_use(token, reactor.seconds() + 60))

    async def test_prune_keeps_nothing_to_prune(self):
        """Redis expires the keys itself: prune() forgets nothing here."""
        backend = await self.backend()
        self.assertEqual(backend.replay_guard().prune(), 0)
