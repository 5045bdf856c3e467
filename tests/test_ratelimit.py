"""
Tests for L{brickchain_proxy.ratelimit}: the per-tunnel token bucket and
the C{N/SECONDS} option parser.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from brickchain_proxy.ratelimit import IRateLimiter, TokenBucketLimiter, parse_rate


class TokenBucketLimiterTests(SynchronousTestCase):
    """
    L{TokenBucketLimiter} on a L{Clock}: 4 requests per 8 seconds, so a burst
    of 4 and then one token every 2 seconds.
    """

    def setUp(self):
        self.clock = Clock()
        self.limiter = TokenBucketLimiter(self.clock, 4, 8)

    def decide(self, key):
        return self.successResultOf(self.limiter.check(key))

    def take_burst(self, key, count=4):
        for _ in range(count):
            self.assertIsNone(self.decide(key))

    def test_provides_the_interface(self):
        """
        The limiter provides L{IRateLimiter}.
        """
        self.assertTrue(verifyObject(IRateLimiter, self.limiter))

    def test_burst_is_allowed_then_refused_with_the_wait(self):
        """
        N requests pass at once; the next is refused with the seconds until a
        token is back.
        """
        self.take_burst("a")

        self.assertEqual(self.decide("a"), 2.0)

    def test_refused_requests_do_not_spend_tokens(self):
        """
        Being refused does not push the next allowed request further away.
        """
        self.take_burst("a")
        self.assertEqual(self.decide("a"), 2.0)
        self.assertEqual(self.decide("a"), 2.0)

        self.clock.advance(2)

        self.assertIsNone(self.decide("a"))

    def test_tokens_refill_over_time(self):
        """
        Tokens come back at N/SECONDS per second; the wait shrinks as they do.
        """
        self.take_burst("a")

        self.clock.advance(1)
        self.assertEqual(self.decide("a"), 1.0)

        self.clock.advance(1)
        self.assertIsNone(self.decide("a"))
        self.assertEqual(self.decide("a"), 2.0)

    def test_bucket_never_holds_more_than_the_burst(self):
        """
        However long a tunnel is idle, it gets at most N requests at once.
        """
        self.take_burst("a")

        self.clock.advance(1000)

        self.take_burst("a")
        self.assertEqual(self.decide("a"), 2.0)

    def test_tunnels_have_separate_buckets(self):
        """
        One tunnel using up its burst does not limit another.
        """
        self.take_burst("a")

        self.take_burst("b")
        self.assertIsNotNone(self.decide("a"))

    def test_prune_drops_full_buckets_only(self):
        """
        C{prune} forgets buckets that have refilled completely and keeps
        those still being paid back.
        """
        self.take_burst("busy")
        self.assertIsNone(self.decide("light"))
        self.assertEqual(len(self.limiter), 2)

        self.clock.advance(2)  # "light" is full again, "busy" has one token

        self.assertEqual(self.limiter.prune(), 1)
        self.assertEqual(len(self.limiter), 1)
        self.assertIsNone(self.decide("busy"))
        self.assertEqual(self.decide("busy"), 2.0)

    def test_pruned_tunnel_starts_with_a_full_burst(self):
        """
        A tunnel whose bucket was pruned gets its whole burst again.
        """
        self.assertIsNone(self.decide("a"))
        self.clock.advance(2)
        self.limiter.prune()
        self.assertEqual(len(self.limiter), 0)

        self.take_burst("a")
        self.assertIsNotNone(self.decide("a"))


class ParseRateTests(SynchronousTestCase):
    """
    L{parse_rate} reads the C{--rate-limit} option.
    """

    def test_count_and_seconds(self):
        """
        C{N/SECONDS} gives the integer count and the float period.
        """
        self.assertEqual(parse_rate("500/300"), (500, 300.0))

    def test_fractional_seconds(self):
        """
        The period may be fractional.
        """
        self.assertEqual(parse_rate("1/0.5"), (1, 0.5))

    def test_malformed_values_are_refused(self):
        """
        Anything not shaped like N/SECONDS raises L{ValueError} naming the
        expected form.
        """
        for text in ["", "500", "500/", "/300", "abc/300", "500/abc",
                     "1.5/300", "5/10/3"]:
            with self.subTest(text=text):
                e = self.assertRaises(ValueError, parse_rate, text)
                self.assertIn("N/SECONDS", str(e))

    def test_non_positive_or_infinite_values_are_refused(self):
        """
        A count or period that is zero, negative, infinite or NaN raises
        L{ValueError}.
        """
        for text in ["0/300", "-1/300", "5/0", "5/-1", "5/inf", "5/nan"]:
            with self.subTest(text=text):
                e = self.assertRaises(ValueError, parse_rate, text)
                self.assertIn("N > 0", str(e))
