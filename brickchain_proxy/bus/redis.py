"""
Redis bus, tunnel directory and shared rate limiter (C{--bus redis://...}),
on txredisapi.

One process keeps two connections: one for commands (PUBLISH, the
directory, the rate limiter) and one subscriber connection multiplexing
every channel this process listens on.  Both reconnect with backoff; the
subscriber re-subscribes every channel after a reconnect, and the backend
tells its listeners (the hub re-claims its tunnels, Redis may have lost
them).

While Redis is unreachable nothing waits for it: commands fail at once with
L{BusUnavailable}, so the proxy keeps serving the tunnels it holds and
answers 503 for the others.
"""

from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet import defer
from twisted.internet.interfaces import ITCPTransport
from twisted.logger import Logger
from zope.interface import implementer

from ..endpoints import client_endpoint, verifying_tls
from ..ratelimit import IRateLimiter
from .interface import BusUnavailable, IBackend, IBus, ITunnelDirectory


def parse_redis_url(url):
    """
    Parse C{redis://[[user]:password@]host[:port][/db]} (or C{rediss://} for
    TLS) into keyword arguments.

    @raise ValueError: with a message fit for a command line.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("not a redis:// or rediss:// URL: {!r}".format(url))
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("bad port in {!r}".format(url))
    path = parts.path.strip("/")
    try:
        db = int(path) if path else None
    except ValueError:
        raise ValueError("database must be a number in {!r}".format(url))
    return dict(
        host=parts.hostname or "localhost",
        port=port,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
    )


def _no_delay(transport):
    """
    Turn Nagle's algorithm off: commands are small and often several are in
    flight, and Nagle plus Redis's delayed ACKs would hold one back ~40 ms.
    """
    if ITCPTransport.providedBy(transport):
        transport.setTcpNoDelay(True)


class _Subscriber(txredisapi.SubscriberProtocol):
    """
    The subscriber connection: hands messages to the backend and
    re-subscribes after every (re)connect.
    """

    def connectionMade(self):
        _no_delay(self.transport)
        d = txredisapi.SubscriberProtocol.connectionMade(self)
        self.whenConnected().addCallback(self.factory.backend._subscriber_ready)
        return d

    def messageReceived(self, pattern, channel, message):
        self.factory.backend._message(channel, message)

    def connectionLost(self, reason):
        self.factory.backend._subscriber_lost(self)
        return txredisapi.SubscriberProtocol.connectionLost(self, reason)


class _Commands(txredisapi.RedisProtocol):
    def connectionMade(self):
        _no_delay(self.transport)
        d = txredisapi.RedisProtocol.connectionMade(self)
        self.whenConnected().addCallback(self.factory.backend._commands_ready)
        return d


@implementer(IBackend)
class RedisBackend:
    """
    The connections to one Redis server and what is built on them.

    @ivar bus: the L{RedisBus}.
    @ivar directory: the L{RedisDirectory}.
    """

    _log = Logger()

    def __init__(self, url, reactor, prefix="brickproxy:", reply_timeout=5.0,
                 directory_ttl=60):
        self._config = parse_redis_url(url)
        self._url_for_logs = "{}:{}".format(self._config["host"], self._config["port"])
        self._reactor = reactor
        self.prefix = prefix
        self._reply_timeout = reply_timeout
        self._commands_factory = None
        self._subscriber_factory = None
        self._subscriber = None
        self._listening = False  # subscribed to every channel we have
        self._commands = None  # the command connection's protocol, when ready
        self._handlers = {}  # channel bytes -> [handler]
        self._reconnect_listeners = []
        self._was_connected = False
        self.bus = RedisBus(self)
        self.directory = RedisDirectory(self, directory_ttl)

    # -- lifecycle ---------------------------------------------------------

    def start(self):
        """
        Start connecting (does not wait for Redis: the proxy starts even while
        Redis is down, and recovers when it comes).
        """
        config = self._config
        commands = txredisapi.RedisFactory(
            self._url_for_logs, config["db"], 1, isLazy=True, charset=None,
            password=config["password"], replyTimeout=self._reply_timeout,
            convertNumbers=False, username=config["username"],
        )
        commands.protocol = _Commands
        commands.backend = self
        commands.maxDelay = 5
        commands.startConnecting(self._endpoint())
        self._commands_factory = commands
        subscriber = txredisapi.RedisFactory(
            self._url_for_logs, config["db"], 1, isLazy=True, charset=None,
            password=config["password"], convertNumbers=False,
            username=config["username"],
        )
        subscriber.protocol = _Subscriber
        subscriber.backend = self
        subscriber.maxDelay = 5
        subscriber.startConnecting(self._endpoint())
        self._subscriber_factory = subscriber

    def _endpoint(self):
        config = self._config
        tls = verifying_tls(config["host"]) if config["tls"] else None
        return client_endpoint(self._reactor, config["host"], config["port"], tls,
                               timeout=5)

    def stop(self):
        """
        Close both connections.
        """
        ds = []
        for factory in (self._commands_factory, self._subscriber_factory):
            if factory is not None:
                ds.append(factory.disconnect())
        self._commands_factory = self._subscriber_factory = None
        self._subscriber = self._commands = None
        self._listening = False
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    def rate_limiter(self, local_limiter):
        """
        The shared limiter, falling back on C{local_limiter} without Redis.
        """
        return RedisRateLimiter(self, local_limiter.count, local_limiter.period,
                                local_limiter)

    def on_reconnect(self, listener):
        """
        Call C{listener()} whenever the command connection comes back after
        having been lost (Redis may have restarted and forgotten everything),
        and whenever the subscriber connection has subscribed again (while
        it was away, other instances saw PUBLISH reach nobody here and may
        have dropped this instance's directory entries as stale).
        """
        self._reconnect_listeners.append(listener)

    @property
    def listening(self):
        """
        Whether the subscriber connection is up and subscribed to every
        channel: messages published to this instance arrive.
        """
        return self._listening

    @property
    def connected(self):
        """
        Whether commands can be sent right now.
        """
        commands = self._commands
        return commands is not None and commands.connected

    # -- commands ----------------------------------------------------------

    def command(self, name, *args):
        """
        Run one Redis command; fails at once with L{BusUnavailable} while the
        connection is down.
        """
        if not self.connected:
            return defer.fail(BusUnavailable(
                "Redis at {} is not reachable".format(self._url_for_logs)))
        d = self._commands.execute_command(name, *args)
        d.addErrback(self._command_failed)
        return d

    def script(self, script, keys, args):
        """
        Run a Lua script (EVALSHA, loading it when Redis does not know it).
        """
        if not self.connected:
            return defer.fail(BusUnavailable(
                "Redis at {} is not reachable".format(self._url_for_logs)))
        d = self._commands.eval(script, keys, args)
        d.addErrback(self._command_failed)
        return d

    def _command_failed(self, failure):
        if failure.check(txredisapi.ConnectionError, txredisapi.TimeoutError,
                         defer.CancelledError):
            raise BusUnavailable(failure.getErrorMessage())
        return failure

    def _commands_ready(self, protocol):
        self._commands = protocol
        if self._was_connected:
            self._log.info("Redis at {redis} is back", redis=self._url_for_logs)
            self._tell_reconnect_listeners()
        else:
            self._log.info("connected to Redis at {redis}", redis=self._url_for_logs)
        self._was_connected = True
        protocol.whenDisconnected().addCallback(self._commands_lost)
        return protocol

    def _tell_reconnect_listeners(self):
        for listener in list(self._reconnect_listeners):
            try:
                listener()
            except Exception:
                self._log.failure("Redis reconnect listener failed")

    def _commands_lost(self, protocol):
        if self._commands is protocol:
            self._commands = None
        if self._commands_factory is not None:
            self._log.warn("lost the connection to Redis at {redis}; reconnecting",
                           redis=self._url_for_logs)

    # -- subscriptions -----------------------------------------------------

    def subscribe(self, channel, handler):
        key = channel.encode("utf-8")
        handlers = self._handlers.get(key)
        if handlers is not None:
            handlers.append(handler)
            return defer.succeed(None)
        self._handlers[key] = [handler]
        if self._subscriber is not None:
            return self._subscriber.subscribe([key]).addErrback(self._log_failure)
        return defer.succeed(None)  # subscribed once connected

    def unsubscribe(self, channel, handler):
        key = channel.encode("utf-8")
        handlers = self._handlers.get(key)
        if handlers is None or handler not in handlers:
            return defer.succeed(None)
        handlers.remove(handler)
        if handlers:
            return defer.succeed(None)
        del self._handlers[key]
        if self._subscriber is not None and self._subscriber.connected:
            return self._subscriber.unsubscribe([key]).addErrback(self._log_failure)
        return defer.succeed(None)

    def channels(self):
        return {key.decode("utf-8") for key in self._handlers}

    def _subscriber_ready(self, protocol):
        self._subscriber = protocol
        if self._handlers:
            d = protocol.subscribe(list(self._handlers))
            d.addCallback(self._resubscribed, protocol)
            d.addErrback(self._log_failure)
        else:
            self._listening = True
        return protocol

    def _resubscribed(self, _, protocol):
        if self._subscriber is protocol:
            self._listening = True
            if self.connected:
                self._tell_reconnect_listeners()

    def _subscriber_lost(self, protocol):
        if self._subscriber is protocol:
            self._subscriber = None
            self._listening = False

    def _message(self, channel, message):
        for handler in tuple(self._handlers.get(channel, ())):
            try:
                handler(message)
            except Exception:
                self._log.failure("bus handler for {channel} failed", channel=channel)

    def _log_failure(self, failure):
        self._log.failure("Redis subscription command failed", failure)


@implementer(IBus)
class RedisBus:
    """
    L{IBus} over Redis PUBLISH/SUBSCRIBE.  C{publish} fires with the number
    of subscribers that got the message (0: nobody listens on that channel).
    """

    def __init__(self, backend):
        self._backend = backend

    def publish(self, channel, payload):
        return self._backend.command("PUBLISH", channel, payload)

    def subscribe(self, channel, handler):
        return self._backend.subscribe(channel, handler)

    def unsubscribe(self, channel, handler):
        return self._backend.unsubscribe(channel, handler)

    def channels(self):
        return self._backend.channels()


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
