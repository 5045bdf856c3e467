"""
Per-tunnel rate limiting: a token bucket per clientID.

C{N/SECONDS} means a tunnel may take a burst of N requests, refilled at
N/SECONDS requests per second (the original's 500/300 allows 500 at once,
then one every 0.6 s).
"""

import math

from twisted.internet.defer import succeed
from zope.interface import Interface, implementer


def parse_rate(text):
    """
    Parse C{"N/SECONDS"} into C{(N, seconds)}.

    @raise ValueError: with a message fit for a command line.
    """
    try:
        count, _, period = text.partition("/")
        count, period = int(count), float(period)
    except ValueError:
        raise ValueError(
            "rate limit must look like N/SECONDS, e.g. 500/300: {!r}".format(text)
        )
    if count <= 0 or not period > 0 or math.isinf(period):
        raise ValueError(
            "rate limit needs N > 0 and SECONDS > 0: {!r}".format(text)
        )
    return count, period


class IRateLimiter(Interface):
    """
    Decides whether a tunnel may take one more request.
    """

    def check(key):
        """
        Take one request from C{key}'s allowance.

        @return: a L{Deferred} firing with L{None} if allowed, else with how
            many seconds until it would be (a L{float} > 0), for
            C{Retry-After}.  It never fails: a limiter that cannot decide
            (Redis down) decides locally.
        """

    def prune():
        """
        Forget what this instance keeps for keys that are back to a full
        allowance.

        @return: how many were forgotten.
        """


@implementer(IRateLimiter)
class TokenBucketLimiter:
    """
    In-memory token buckets keyed by clientID, on the reactor's clock.

    Buckets that have refilled completely are dropped by L{prune}, so memory
    follows the number of recently active tunnels.
    """

    def __init__(self, clock, count, period):
        self._clock = clock
        self.count = count
        self.period = period
        self.capacity = float(count)
        self.rate = count / period  # tokens per second
        self._buckets = {}  # key -> [tokens, last_seconds]

    def check(self, key):
        return succeed(self.wait(key))

    def wait(self, key):
        """
        Take one request from C{key}'s allowance, synchronously.

        @return: L{None} if allowed, else the seconds until it would be.
        """
        now = self._clock.seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [self.capacity - 1.0, now]
            return None
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return None
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def prune(self):
        """
        Forget buckets that are full again.
        """
        now = self._clock.seconds()
        full = [
            key
            for key, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rate >= self.capacity
        ]
        for key in full:
            del self._buckets[key]
        return len(full)

    def __len__(self):
        return len(self._buckets)
