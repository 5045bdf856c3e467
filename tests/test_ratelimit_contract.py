"""
The L{IRateLimiter} contract, run over both limiters: the in-memory token
bucket and the shared one in a real redis-server started for the test.
Every decision is a L{Deferred}; a burst of N passes, the next waits a
positive time no longer than one refill; keys do not share allowances.
"""

import uuid

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from brickchain_proxy.bus import open_backend
from brickchain_proxy.ratelimit import IRateLimiter, TokenBucketLimiter
from tests.redis_server import RedisServer, wait_for_bus

COUNT = 3
PERIOD = 30.0


class RateLimiterContractMixin:
    """
    What every L{IRateLimiter} does; C{make_limiter()} returns a Deferred of
    a limiter allowing bursts of L{COUNT} per L{PERIOD} seconds.
    """

    @defer.inlineCallbacks
    def test_provides_the_interface(self):
        """The limiter provides IRateLimiter."""
        limiter = yield self.make_limiter()
        self.assertTrue(verifyObject(IRateLimiter, limiter))

    @defer.inlineCallbacks
    def test_every_decision_is_a_deferred(self):
        """check() returns a Deferred, allowed or not."""
        limiter = yield self.make_limiter()
        key = uuid.uuid4().hex
        for _ in range(COUNT + 1):
            decision = limiter.check(key)
            self.assertIsInstance(decision, defer.Deferred)
            yield decision

    @defer.inlineCallbacks
    def test_a_burst_passes_then_the_next_waits_at_most_one_refill(self):
        """N requests pass; the next is told to wait, longer than 0 and at most PERIOD/N."""
        limiter = yield self.make_limiter()
        key = uuid.uuid4().hex
        for _ in range(COUNT):
            self.assertIsNone((yield limiter.check(key)))
        wait = yield limiter.check(key)
        self.assertGreater(wait, 0)
        self.assertLessEqual(wait, PERIOD / COUNT + 0.01)

    @defer.inlineCallbacks
    def test_keys_have_their_own_allowance(self):
        """One key spending its burst leaves another's untouched."""
        limiter = yield self.make_limiter()
        busy, quiet = uuid.uuid4().hex, uuid.uuid4().hex
        for _ in range(COUNT):
            yield limiter.check(busy)
        self.assertIsNotNone((yield limiter.check(busy)))
        self.assertIsNone((yield limiter.check(quiet)))

    @defer.inlineCallbacks
    def test_prune_returns_how_many_it_forgot(self):
        """prune() answers with a count."""
        limiter = yield self.make_limiter()
        yield limiter.check(uuid.uuid4().hex)
        self.assertIsInstance(limiter.prune(), int)


class MemoryLimiterContractTests(RateLimiterContractMixin, TestCase):
    """
    The contract for L{TokenBucketLimiter}.
    """

    def make_limiter(self):
        return defer.succeed(TokenBucketLimiter(reactor, COUNT, PERIOD))


class RedisLimiterContractTests(RateLimiterContractMixin, TestCase):
    """
    The contract for the shared limiter on a real redis-server.
    """

    timeout = 30

    @defer.inlineCallbacks
    def make_limiter(self):
        server = yield defer.ensureDeferred(RedisServer.for_test(self))
        backend = open_backend(server.url, reactor)
        backend.start()
        self.addCleanup(backend.stop)
        yield wait_for_bus(backend)
        return backend.rate_limiter(TokenBucketLimiter(reactor, COUNT, PERIOD))
