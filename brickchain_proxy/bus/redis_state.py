"""
What proxy instances sharing one Redis keep in its keys: the tunnel
directory (which instance holds which tunnel, C{<prefix>tunnel:<clientID>}),
the per-tunnel rate-limit buckets (C{<prefix>rate:<key>}) and the mandate
tokens used to register (C{<prefix>token:<signature id>}), each updated
atomically by one command or Lua script.

All three send their commands through a L{brickchain_proxy.bus.redis.RedisBackend},
which builds them.
"""

import math

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ..ratelimit import IRateLimiter
from ..replay import IReplayGuard, ReplayCheckUnavailable
from .interface import BusUnavailable, ITunnelDirectory


# KEYS[1] = tunnel key; ARGV[1] = instance id; ARGV[2] = ttl.  Keep (or take
# back, after Redis forgot it) an entry that is ours; 0 if someone else has
# taken the tunnel over.
_RENEW = b"""
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] = tunnel key; ARGV[1] = instance id; ARGV[2] = ttl.  Take (or
# keep) the entry unless another instance holds it; return the holder.
_CLAIM_IF_FREE = b"""
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return ARGV[1]
end
return owner
"""

_RELEASE = b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@implementer(ITunnelDirectory)
class RedisDirectory:
    """
    Tunnel directory in Redis: key C{<prefix>tunnel:<clientID>} holds the
    instance id, with a TTL renewed while the connection lives.
    """

    def __init__(self, backend, ttl=60):
        self._backend = backend
        self.ttl = ttl

    def _key(self, client_id):
        return (self._backend.prefix + "tunnel:" + client_id).encode("utf-8")

    def claim(self, client_id, instance_id):
        d = self._backend.command(
            "SET", self._key(client_id), instance_id, "EX", self.ttl, "GET")
        d.addCallback(_text)
        return d

    def renew(self, client_id, instance_id):
        d = self._backend.script(
            _RENEW, [self._key(client_id)], [instance_id, self.ttl])
        d.addCallback(lambda result: bool(int(result)))
        return d

    def claim_if_free(self, client_id, instance_id):
        d = self._backend.script(
            _CLAIM_IF_FREE, [self._key(client_id)], [instance_id, self.ttl])
        d.addCallback(_text)
        return d

    def release(self, client_id, instance_id):
        d = self._backend.script(
            _RELEASE, [self._key(client_id)], [instance_id])
        d.addCallback(lambda _: None)
        return d

    def lookup(self, client_id):
        if not self._backend.listening:
            # A lookup starts a request to another instance, whose answer
            # comes back over our subscription: without it, fail now
            # rather than wait for an answer that cannot arrive.
            return defer.fail(BusUnavailable(
                "not subscribed to Redis at {}: answers from other "
                "instances cannot arrive".format(self._backend._url_for_logs)))
        d = self._backend.command("GET", self._key(client_id))
        d.addCallback(_text)
        return d


def _text(value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


# Token bucket.  KEYS[1] = bucket key; ARGV = capacity, rate (tokens per
# second), ttl (seconds).  Returns "0" if allowed, else the seconds to wait.
_TOKEN_BUCKET = b"""
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(bucket[1])
local at = tonumber(bucket[2])
if tokens == nil then
  tokens = capacity
  at = now
end
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return tostring(wait)
"""


@implementer(IRateLimiter)
class RedisRateLimiter:
    """
    The per-tunnel token bucket kept in Redis, so the limit holds across
    proxy instances.  While Redis is unreachable (or slow), this instance's
    in-memory limiter decides instead, with a warning in the log -- traffic
    is never blocked or refused because Redis is down.
    """

    _log = Logger()

    def __init__(self, backend, count, period, fallback):
        self._backend = backend
        self._capacity = count
        self._rate = count / period
        self._ttl = max(1, int(period) + 1)
        self._fallback = fallback
        self._degraded = False

    def check(self, key):
        if not self._backend.connected:
            return self._fall_back(key)
        d = self._backend.script(
            _TOKEN_BUCKET,
            [(self._backend.prefix + "rate:" + key).encode("utf-8")],
            [self._capacity, repr(self._rate), self._ttl],
        )
        d.addCallbacks(self._decided, self._failed, errbackArgs=(key,))
        return d

    def _decided(self, wait):
        if self._degraded:
            self._degraded = False
            self._log.info("shared rate limiter is back on Redis")
        wait = float(wait)
        return wait if wait > 0 else None

    def _failed(self, failure, key):
        self._log.warn("shared rate limiter failed ({error}); using this "
                       "instance's limiter", error=failure.getErrorMessage())
        return self._fallback.wait(key)

    def _fall_back(self, key):
        if not self._degraded:
            self._degraded = True
            self._log.warn("Redis is unreachable: rate limiting per instance "
                           "until it is back")
        return self._fallback.check(key)

    def prune(self):
        return self._fallback.prune()


@implementer(IReplayGuard)
class RedisReplayGuard:
    """
    Used mandate tokens in Redis, one key per token
    (C{SET <prefix>token:<signature id> 1 NX PX <ms>}), so a token that
    registered on one instance is refused on every other.  Each key lives
    until the token's expiry plus C{margin} seconds, for the clocks of the
    instances to disagree by that much.

    While Redis is unreachable, L{first_use} fails with
    L{ReplayCheckUnavailable}: new registrations are refused (fail closed),
    tunnels already registered keep working.
    """

    _log = Logger()
    #: Redis outlives this process: what it remembers is not bounded by
    #: when this instance started.
    since = None

    def __init__(self, backend, clock, margin=5.0):
        self._backend = backend
        self._clock = clock
        self._margin = margin
        self._degraded = False

    def first_use(self, signature_id, expires_at):
        ms = int(math.ceil((expires_at + self._margin - self._clock.seconds()) * 1000))
        d = self._backend.command(
            "SET", (self._backend.prefix + "token:" + signature_id).encode("utf-8"),
            b"1", "NX", "PX", max(1, ms))
        d.addCallbacks(self._decided, self._failed)
        return d

    def _decided(self, result):
        if self._degraded:
            self._degraded = False
            self._log.info("the replay guard is back on Redis: registrations "
                           "are accepted again")
        return result is not None  # None: NX found the key, a replay

    def _failed(self, failure):
        if not self._degraded:
            self._degraded = True
            self._log.warn(
                "cannot check mandate tokens for replay in Redis ({error}): "
                "refusing new registrations until it is back; registered "
                "tunnels keep working", error=failure.getErrorMessage())
        raise ReplayCheckUnavailable("Redis is unreachable")

    def prune(self):
        return 0  # Redis expires the keys itself
