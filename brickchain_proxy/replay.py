"""
The replay guard: each mandate token registers once.

Registration is "newest wins", so whoever replays a captured registration
within the token's lifetime would take the tunnel over.  Clients sign a new
token for every registration (ours in C{TunnelClientProtocol.onOpen}, Go's
in C{register()}), so a token seen twice is a replay.  A guard remembers
each verified token's signature id until the token expires anyway; the
backend (C{--bus}) chooses the guard, as it does the rate limiter:
L{MemoryReplayGuard} for one process, L{RedisReplayGuard} (in
L{brickchain_proxy.bus.redis_state}) shared by every instance on one Redis.

A guard that cannot decide fails with L{ReplayCheckUnavailable} and the
registration is refused (fail closed): tunnels already registered are not
affected, and clients retry with backoff.

A memory guard starts empty, so the tokens used on the process before a
restart are unknown to it: its L{IReplayGuard.since} is when it started,
and tokens made before then are refused (clients that reconnect sign new
ones).
"""

import heapq

from twisted.internet.defer import fail, succeed
from zope.interface import Attribute, Interface, implementer


class ReplayCheckUnavailable(Exception):
    """
    The guard cannot say whether a token is new (Redis unreachable, or this
    instance remembers as many tokens as it may).
    """


class IReplayGuard(Interface):
    """
    Remembers the tokens that have registered, until they expire.
    """

    since = Attribute(
        "Epoch seconds since when every token used is remembered: one made "
        "before may have registered unseen (it must be refused). None when "
        "the memory outlives this process (Redis).")

    def first_use(signature_id, expires_at):
        """
        Record that the token C{signature_id} (a L{str}) is used, and say
        whether it had been before.

        @param expires_at: epoch seconds after which the verifier refuses the
            token anyway; it need not be remembered longer.
        @return: a L{Deferred} firing with L{True} the first time, L{False}
            for a replay, or failing with L{ReplayCheckUnavailable}.
        """

    def prune():
        """
        Forget what this instance keeps for tokens that have expired.

        @return: how many were forgotten.
        """


@implementer(IReplayGuard)
class MemoryReplayGuard:
    """
    Used tokens in a dict, each until its expiry on the reactor's clock.

    Expired entries are dropped on every L{first_use} and L{prune}, so the
    dict holds the tokens of the last few minutes only; past C{max_entries}
    of them, new registrations are refused (L{ReplayCheckUnavailable})
    rather than an unexpired token forgotten.

    @ivar max_entries: the most tokens remembered at once.
    """

    def __init__(self, clock, max_entries=100000):
        self._clock = clock
        self.max_entries = max_entries
        self.since = clock.seconds()
        self._expiry = {}  # signature id -> expires_at
        self._queue = []  # heap of (expires_at, signature id)

    def first_use(self, signature_id, expires_at):
        now = self._clock.seconds()
        self._prune(now)
        if signature_id in self._expiry:
            return succeed(False)
        if expires_at < now:
            return succeed(True)  # expired: the verifier refuses it anyway
        if len(self._expiry) >= self.max_entries:
            return fail(ReplayCheckUnavailable(
                "this proxy remembers {} recent registrations, its limit"
                .format(self.max_entries)))
        self._expiry[signature_id] = expires_at
        heapq.heappush(self._queue, (expires_at, signature_id))
        return succeed(True)

    def prune(self):
        return self._prune(self._clock.seconds())

    def _prune(self, now):
        queue = self._queue
        forgotten = 0
        while queue and queue[0][0] < now:
            _, signature_id = heapq.heappop(queue)
            del self._expiry[signature_id]
            forgotten += 1
        return forgotten

    def __len__(self):
        return len(self._expiry)


__all__ = ["IReplayGuard", "MemoryReplayGuard", "ReplayCheckUnavailable"]
