"""
The Redis backend (L{brickchain_proxy.bus.redis}) against a real,
throwaway C{redis-server} (L{tests.redis_server}): the same bus and
directory contracts as the in-memory backend, plus what only a networked
backend has to get right -- TTLs, Redis restarts, failing fast while Redis
is down, and a rate limit shared by several instances.
"""

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase

from brickchain_proxy.bus import BusUnavailable, open_backend
from brickchain_proxy.bus.redis import RedisBackend
from brickchain_proxy.bus.redis_state import RedisRateLimiter
from brickchain_proxy.ratelimit import TokenBucketLimiter
from tests.redis_server import RedisServer, bus_ready, wait_for_bus
from tests.support import wait_until
from tests.support_bus import (
    BusContractMixin,
    Collector,
    DirectoryContractMixin,
    unique,
)


class _RedisFixture:
    """
    A fresh redis-server per test and backends connected to it.
    """

    timeout = 30

    async def redis(self):
        if getattr(self, "_redis", None) is None:
            self._redis = await RedisServer.for_test(self)
        return self._redis

    async def backend(self, **kwargs):
        """
        A started L{RedisBackend} on this test's server, connected (both
        connections), and stopped by a cleanup.
        """
        server = await self.redis()
        backend = open_backend(server.url, reactor, **kwargs)
        self.assertIsInstance(backend, RedisBackend)
        backend.start()
        self.addCleanup(backend.stop)
        await wait_for_bus(backend)
        await wait_until(lambda: backend.listening,
                         what="subscriber connection ready")
        return backend


class RedisBusContractTests(_RedisFixture, BusContractMixin, TestCase):
    """
    The L{IBus} contract for L{RedisBus}.
    """

    def make_bus(self):
        return defer.ensureDeferred(self.backend()).addCallback(lambda b: b.bus)

    def active_channels(self, bus):
        return defer.succeed(bus.channels())

    @defer.inlineCallbacks
    def test_publish_counts_the_receiving_connections(self):
        """
        C{publish} fires with the number of subscribed connections that got
        the message: 0 when nobody listens, one per backend (not per
        handler) otherwise.
        """
        first = yield self.backend()
        second = yield self.backend()
        channel = unique("count")

        self.assertEqual((yield first.bus.publish(channel, b"nobody")), 0)

        yield first.bus.subscribe(channel, Collector())
        yield first.bus.subscribe(channel, Collector())
        self.assertEqual((yield second.bus.publish(channel, b"one")), 1)

        yield second.bus.subscribe(channel, Collector())
        self.assertEqual((yield second.bus.publish(channel, b"two")), 2)

    @defer.inlineCallbacks
    def test_messages_cross_between_backends(self):
        """
        What one backend (one proxy instance) publishes reaches another's
        handlers, in order and byte for byte.
        """
        sender = yield self.backend()
        receiver = yield self.backend()
        channel, handler = unique("cross"), Collector()
        yield receiver.bus.subscribe(channel, handler)
        payloads = [b"%d\n\x00\xff" % (i,) for i in range(50)]

        for payload in payloads:
            sender.bus.publish(channel, payload)

        self.assertEqual((yield handler.wait_for(50)), payloads)

    @defer.inlineCallbacks
    def test_unsubscribe_tells_redis(self):
        """
        Dropping a channel's last handler unsubscribes the connection:
        publishing there reaches nobody.
        """
        bus = (yield self.backend()).bus
        channel, handler = unique("gone"), Collector()
        yield bus.subscribe(channel, handler)
        self.assertEqual((yield bus.publish(channel, b"here")), 1)
        yield handler.wait_for(1)

        yield bus.unsubscribe(channel, handler)

        self.assertEqual((yield bus.publish(channel, b"gone")), 0)
        self.assertEqual(handler.received, [b"here"])


class RedisDirectoryContractTests(_RedisFixture, DirectoryContractMixin,
                                  TestCase):
    """
    The L{ITunnelDirectory} contract for L{RedisDirectory}, plus TTLs.
    """

    def make_directory(self):
        return defer.ensureDeferred(self.backend()).addCallback(
            lambda b: b.directory)

    @defer.inlineCallbacks
    def test_renew_after_release_reports_the_loss(self):
        """
        Unlike the in-memory directory, Redis cannot tell an entry that was
        released from one Redis forgot (a restart without persistence), so
        renewing a vanished entry takes it back: an instance that still
        holds the tunnel must get it back after a Redis restart, which
        matters more.  (The hub never renews a tunnel it released: it
        forgets the tunnel first.)  The entry is taken back with a TTL.
        """
        directory = yield self.directory()
        client = unique("client")
        yield directory.claim(client, "a")
        yield directory.release(client, "a")

        self.assertTrue((yield directory.renew(client, "a")))
        self.assertEqual((yield directory.lookup(client)), "a")

    async def ttl_of(self, backend, client_id):
        key = backend.prefix + "tunnel:" + client_id
        return int((await backend.command("TTL", key)))

    async def test_claim_sets_the_ttl(self):
        """
        A claimed entry expires after the directory's TTL unless renewed.
        """
        backend = await self.backend(directory_ttl=60)
        client = unique("client")

        await backend.directory.claim(client, "a")

        self.assertEqual(backend.directory.ttl, 60)
        self.assertTrue(55 <= (await self.ttl_of(backend, client)) <= 60)

    async def test_renew_restores_the_full_ttl(self):
        """
        Renewing resets the remaining lifetime to the full TTL.
        """
        backend = await self.backend(directory_ttl=60)
        client = unique("client")
        await backend.directory.claim(client, "a")
        key = backend.prefix + "tunnel:" + client
        await backend.command("EXPIRE", key, 5)

        self.assertTrue(await backend.directory.renew(client, "a"))

        self.assertTrue(55 <= (await self.ttl_of(backend, client)) <= 60)

    async def test_renew_takes_back_an_entry_redis_forgot(self):
        """
        After Redis lost an entry (restart, eviction), the instance that
        still holds the tunnel gets it back on renewal, with a TTL.
        """
        backend = await self.backend(directory_ttl=60)
        client = unique("client")
        await backend.directory.claim(client, "a")
        await backend.command("DEL", backend.prefix + "tunnel:" + client)

        self.assertTrue(await backend.directory.renew(client, "a"))

        self.assertEqual(await backend.directory.lookup(client), "a")
        self.assertTrue(55 <= (await self.ttl_of(backend, client)) <= 60)

    async def test_refused_renewal_leaves_the_new_owner_ttl_alone(self):
        """
        A refused renewal changes neither the owner nor its entry's TTL.
        """
        backend = await self.backend(directory_ttl=60)
        client = unique("client")
        await backend.directory.claim(client, "b")
        await backend.command("EXPIRE", backend.prefix + "tunnel:" + client, 30)

        self.assertFalse(await backend.directory.renew(client, "a"))

        self.assertEqual(await backend.directory.lookup(client), "b")
        self.assertLessEqual(await self.ttl_of(backend, client), 30)

    async def test_entry_expires_after_its_ttl(self):
        """
        An entry nobody renews disappears once its TTL has passed (an
        instance that died without releasing its tunnels).
        """
        backend = await self.backend(directory_ttl=1)
        client = unique("client")
        await backend.directory.claim(client, "dead")
        self.assertEqual(await backend.directory.lookup(client), "dead")
        self.assertEqual(await self.ttl_of(backend, client), 1)

        while (await backend.directory.lookup(client)) is not None:
            await deferLater(reactor, 0.05, lambda: None)


class RestartTests(_RedisFixture, TestCase):
    """
    Redis restarts, and while it is down nothing waits for it.
    """

    async def test_subscriber_resubscribes_after_a_restart(self):
        """
        After Redis restarts (forgetting every subscription), the
        subscriber connection comes back and subscribes again: a message
        published then arrives.
        """
        server = await self.redis()
        backend = await self.backend()
        channel, handler = unique("restart"), Collector()
        await backend.bus.subscribe(channel, handler)
        await backend.bus.publish(channel, b"before")
        await handler.wait_for(1)

        await server.restart()
        await wait_for_bus(backend, channel)
        receivers = await backend.bus.publish(channel, b"after")

        self.assertEqual(receivers, 1)
        self.assertEqual(await handler.wait_for(2), [b"before", b"after"])

    async def test_reconnect_listeners_are_told_when_redis_is_back(self):
        """
        C{on_reconnect} listeners (the hub re-claims its tunnels there) run
        once the command connection is back after a loss, not on the first
        connection.
        """
        server = await self.redis()
        backend = await self.backend()
        calls = []
        backend.on_reconnect(lambda: calls.append(backend.connected))
        self.assertEqual(calls, [])

        await server.restart()
        await wait_until(lambda: calls, what="reconnect listener called")

        self.assertEqual(calls, [True])

    async def test_reconnect_listeners_are_told_when_subscriptions_are_back(self):
        """
        When only the subscriber connection was lost (Redis killed pub/sub
        clients), the listeners run once it has subscribed again: other
        instances may have taken this one for dead meanwhile.
        """
        backend = await self.backend()
        channel = unique("resubscribe")
        await backend.bus.subscribe(channel, Collector())
        calls = []
        backend.on_reconnect(lambda: calls.append(True))

        await backend.command("CLIENT", "KILL", "TYPE", "pubsub")
        await wait_until(lambda: calls, what="reconnect listener called")

        self.assertTrue(await bus_ready(backend, channel))
        self.assertTrue(backend.connected)

    async def test_interrupted_listeners_are_told_when_the_subscriber_drops(self):
        """
        C{on_interrupted} listeners (the hub resets its streams across
        instances there) run as soon as the subscriber connection drops --
        messages published to this process may be lost -- before it is
        back; C{stop} closing it tells nobody.
        """
        backend = await self.backend()
        channel = unique("interrupted")
        await backend.bus.subscribe(channel, Collector())
        calls = []
        backend.on_interrupted(lambda: calls.append(backend.listening))

        await backend.command("CLIENT", "KILL", "TYPE", "pubsub")
        await wait_until(lambda: calls, what="interrupted listener called")
        self.assertEqual(calls, [False])
        await wait_for_bus(backend, channel)
        self.assertEqual(calls, [False])

        await backend.stop()
        self.assertEqual(calls, [False])

    async def test_commands_fail_at_once_while_redis_is_down(self):
        """
        With Redis stopped, every bus and directory operation fails with
        L{BusUnavailable} at once -- the Deferred it returns has already
        failed: nothing waits for Redis.
        """
        server = await self.redis()
        backend = await self.backend()
        await server.stop()
        await wait_until(lambda: not backend.connected,
                         what="backend notices Redis is gone")

        operations = [
            lambda: backend.bus.publish(unique("down"), b"x"),
            lambda: backend.directory.claim(unique("client"), "a"),
            lambda: backend.directory.renew(unique("client"), "a"),
            lambda: backend.directory.release(unique("client"), "a"),
            lambda: backend.directory.lookup(unique("client")),
        ]
        for operation in operations:
            self.failureResultOf(operation(), BusUnavailable)

    async def test_command_in_flight_when_redis_dies_fails(self):
        """
        A command Redis never answers because it died fails with
        L{BusUnavailable} as soon as the connection drops.
        """
        server = await self.redis()
        backend = await self.backend()
        blocked = backend.command("BLPOP", unique("list"), 0)

        await server.stop(sig=9)

        await self.assertFailure(blocked, BusUnavailable)

    async def test_frozen_redis_fails_after_the_reply_timeout(self):
        """
        A Redis that keeps the connection open but stops answering (here:
        SIGSTOP) does not hang callers either: the command fails with
        L{BusUnavailable} saying the reply timeout passed (not with the
        cancellation of this test's own guard).
        """
        server = await self.redis()
        backend = RedisBackend(server.url, reactor, reply_timeout=0.5)
        backend.start()
        self.addCleanup(backend.stop)
        await wait_for_bus(backend)

        server.pause()
        self.addCleanup(server.resume)
        d = backend.directory.lookup(unique("client"))
        d.addTimeout(5, reactor)

        error = await self.assertFailure(d, BusUnavailable)
        self.assertEqual(str(error), "Not received Redis response in 0.5 seconds")

    async def test_stop_closes_both_connections(self):
        """
        C{stop} closes the command and the subscriber connection: Redis
        soon counts no client but the one asking, and nobody subscribed to
        the stopped backend's channel.
        """
        watcher = await self.backend()
        backend = await self.backend()
        channel = unique("stop")
        await backend.bus.subscribe(channel, Collector())

        await backend.stop()

        self.assertFalse(backend.connected)
        self.assertFalse(backend.listening)
        listing = None
        for _ in range(100):
            listing = await watcher.command("CLIENT", "LIST")
            # The watcher itself holds two connections.
            if len(listing.strip().splitlines()) == 2:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(listing.strip().splitlines()), 2, listing)
        self.assertEqual(await watcher.bus.publish(channel, b"x"), 0)


class SharedRateLimitTests(_RedisFixture, TestCase):
    """
    L{RedisRateLimiter}: one token bucket for every instance sharing Redis.
    """

    def limiter(self, backend, count=5, period=300.0):
        local = TokenBucketLimiter(reactor, count, period)
        limiter = backend.rate_limiter(local)
        self.assertIsInstance(limiter, RedisRateLimiter)
        return limiter

    async def test_limit_holds_across_two_instances(self):
        """
        Two limiters on one Redis share the bucket: N requests in total
        pass, whichever instance takes them, then both answer with a wait.
        """
        first = self.limiter(await self.backend())
        second = self.limiter(await self.backend())
        key = unique("tunnel")

        decisions = []
        for i in range(5):
            limiter = first if i % 2 else second
            decisions.append(await limiter.check(key))
        self.assertEqual(decisions, [None] * 5)

        for limiter in (first, second):
            wait = await limiter.check(key)
            self.assertIsNotNone(wait)
            self.assertGreater(wait, 0)
            self.assertLessEqual(wait, 60.0 + 1)  # one token per 60 s

    async def test_other_keys_have_their_own_bucket(self):
        """
        One tunnel exhausting its allowance leaves the others alone.
        """
        limiter = self.limiter(await self.backend(), count=2)
        busy, quiet = unique("busy"), unique("quiet")
        for _ in range(2):
            self.assertIsNone(await limiter.check(busy))
        self.assertIsNotNone(await limiter.check(busy))

        self.assertIsNone(await limiter.check(quiet))

    async def test_bucket_key_expires(self):
        """
        The bucket in Redis has a TTL, so idle tunnels leave nothing behind.
        """
        backend = await self.backend()
        limiter = self.limiter(backend, count=5, period=300.0)
        key = unique("tunnel")

        await limiter.check(key)

        ttl = int(await backend.command("TTL", backend.prefix + "rate:" + key))
        self.assertTrue(0 < ttl <= 301, ttl)

    async def test_falls_back_to_the_local_limiter_while_redis_is_down(self):
        """
        With Redis down the instance's own in-memory limiter decides
        (synchronously, never blocking traffic), with a warning logged once;
        when Redis is back the shared bucket decides again.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        server = await self.redis()
        backend = await self.backend()
        local = TokenBucketLimiter(reactor, 3, 300.0)
        limiter = backend.rate_limiter(local)
        key = unique("tunnel")

        await server.stop()
        await wait_until(lambda: not backend.connected,
                         what="backend notices Redis is gone")

        decisions = [self.successResultOf(limiter.check(key)) for _ in range(4)]
        self.assertEqual(decisions[:3], [None] * 3)
        self.assertGreater(decisions[3], 0)
        warnings = [e for e in events
                    if e["log_level"] == LogLevel.warn
                    and "unreachable" in e["log_format"]]
        self.assertEqual(len(warnings), 1)

        await server.start()
        await wait_for_bus(backend, timeout=20)
        # Redis restarted empty: the shared bucket is full again.
        self.assertIsNone(await limiter.check(key))
        self.assertTrue([e for e in events
                         if "back on Redis" in e["log_format"]])

    async def test_a_failing_script_falls_back_too(self):
        """
        When Redis answers the limiter with an error instead of a decision,
        the local limiter decides and a warning says why.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        backend = await self.backend()
        limiter = self.limiter(backend, count=5)
        key = unique("tunnel")
        # The bucket key holds a string: HMGET on it is a WRONGTYPE error.
        await backend.command("SET", backend.prefix + "rate:" + key, "junk")

        self.assertIsNone(await limiter.check(key))

        self.assertTrue([e for e in events
                         if e["log_level"] == LogLevel.warn
                         and "shared rate limiter failed" in e["log_format"]])
