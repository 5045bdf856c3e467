"""
The Redis backend (C{--bus redis://...}), on txredisapi: its connections
and the bus over them.  The tunnel directory and the shared rate limiter it
builds on those connections are in L{brickchain_proxy.bus.redis_state}.

One process keeps two connections: one for commands (PUBLISH, the
directory, the rate limiter) and one subscriber connection multiplexing
every channel this process listens on.  Both reconnect with backoff; the
subscriber re-subscribes every channel after a reconnect, and the backend
tells its listeners (the hub re-claims its tunnels, Redis may have lost
them).  Pub/sub delivers at most once: when the subscriber connection
drops, messages published to this process meanwhile (or still in its
socket) are gone, and the backend tells its C{on_interrupted} listeners at
once (the hub resets its streams across instances, which would otherwise
wait for a frame that will never come).

While Redis is unreachable nothing waits for it: commands fail at once with
L{BusUnavailable}, so the proxy keeps serving the tunnels it holds and
answers 503 for the others.
"""

from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from zope.interface import implementer

from ..endpoints import client_endpoint
from ..tls import ClientTLSPolicy, tls_failure_reason
from .interface import BusUnavailable, IBackend, IBus
from .redis_state import RedisDirectory, RedisRateLimiter, RedisReplayGuard
from .sentinel import SCHEME as SENTINEL_SCHEME
from .sentinel import MasterWatch, parse_sentinel_url, sentinel_endpoint


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


class _VerifiedFirst:
    """
    Over TLS, hold txredisapi's C{connectionMade} (AUTH, SELECT, then
    "connected") until the handshake is done, so that nothing -- the
    password least of all -- is sent to a server whose certificate has not
    been verified yet, and a refused certificate is only a lost connection
    (txredisapi takes an AUTH that failed on a lost connection for a wrong
    password and would stop reconnecting for good).  The refusal is logged
    with its reason; the pool slot reconnects with backoff.
    """

    _waiting_for_tls = False

    def connectionMade(self):
        if self.factory.backend.tls is not None:
            self._waiting_for_tls = True
            return None
        return self._talk()

    def handshakeCompleted(self):
        if self._waiting_for_tls:
            self._waiting_for_tls = False
            self._talk()

    def _tls_failed(self, reason):
        if self._waiting_for_tls:
            self._waiting_for_tls = False
            self.factory.backend._tls_failed(reason)


@implementer(IHandshakeListener)
class _Subscriber(_VerifiedFirst, txredisapi.SubscriberProtocol):
    """
    The subscriber connection: hands messages to the backend and
    re-subscribes after every (re)connect.
    """

    def _talk(self):
        d = txredisapi.SubscriberProtocol.connectionMade(self)
        self.whenConnected().addCallback(self.factory.backend._subscriber_ready)
        return d

    def messageReceived(self, pattern, channel, message):
        self.factory.backend._message(channel, message)

    def connectionLost(self, reason):
        self._tls_failed(reason)
        self.factory.backend._subscriber_lost(self)
        return txredisapi.SubscriberProtocol.connectionLost(self, reason)


@implementer(IHandshakeListener)
class _Commands(_VerifiedFirst, txredisapi.RedisProtocol):
    def _talk(self):
        d = txredisapi.RedisProtocol.connectionMade(self)
        self.whenConnected().addCallback(self.factory.backend._commands_ready)
        return d

    def connectionLost(self, reason):
        self._tls_failed(reason)
        return txredisapi.RedisProtocol.connectionLost(self, reason)


@implementer(IBackend)
class RedisBackend:
    """
    The connections to one Redis server and what is built on them.

    @ivar bus: the L{RedisBus}.
    @ivar directory: the L{RedisDirectory}.
    """

    _log = Logger()

    def __init__(self, url, reactor, prefix="brickproxy:", reply_timeout=5.0,
                 directory_ttl=60, ca_cert=None):
        self._sentinels = self._master_endpoint = self._master_watch = None
        if url.startswith(SENTINEL_SCHEME + "://"):
            self._config = parse_sentinel_url(url)
            self._config["tls"] = False
            self._sentinels, self._master_endpoint = sentinel_endpoint(
                reactor, self._config)
            self._master_watch = MasterWatch(reactor, self._sentinels,
                                             self._master_endpoint, self._master_moved)
            self._url_for_logs = str(self._sentinels)
        else:
            self._config = parse_redis_url(url)
            self._url_for_logs = "{}:{}".format(self._config["host"], self._config["port"])
        #: how a rediss:// server is verified (L{ClientTLSPolicy}), or
        #: L{None} for plain redis:// (and sentinels)
        self.tls = ClientTLSPolicy(ca_cert) if self._config["tls"] else None
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
        self._interrupted_listeners = []
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
        if self._master_watch is not None:
            self._master_watch.start()

    def _endpoint(self):
        if self._master_endpoint is not None:
            return self._master_endpoint
        config = self._config
        tls = None if self.tls is None else self.tls.creator(config["host"])
        return client_endpoint(self._reactor, config["host"], config["port"], tls,
                               timeout=5)

    def _master_moved(self, address):
        # The sentinels name another master: drop both connections, which
        # reconnect to it through the master endpoint.
        for connection in (self._commands, self._subscriber):
            if connection is not None and connection.transport is not None:
                connection.transport.loseConnection()

    def _tls_failed(self, reason):
        why = tls_failure_reason(reason) or "connection lost during the TLS handshake"
        self._log.error(
            "TLS verification of Redis at {redis} failed: {error} (verified "
            "against {trust}: see --bus-ca-cert); retrying",
            redis=self._url_for_logs, error=why, trust=self.tls.describe())

    def stop(self):
        """
        Close both connections.
        """
        if self._master_watch is not None:
            self._master_watch.stop()
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

    def replay_guard(self):
        """
        The guard shared by every instance on this Redis: a token used on
        one is refused on all (and, while Redis is unreachable, new
        registrations are refused).
        """
        return RedisReplayGuard(self, self._reactor)

    def on_reconnect(self, listener):
        """
        Call C{listener()} whenever the command connection comes back after
        having been lost (Redis may have restarted and forgotten everything),
        and whenever the subscriber connection has subscribed again (while
        it was away, other instances saw PUBLISH reach nobody here and may
        have dropped this instance's directory entries as stale).
        """
        self._reconnect_listeners.append(listener)

    def on_interrupted(self, listener):
        """
        Call C{listener()} whenever the subscriber connection drops (but
        not when L{stop} closes it): messages published to this process
        may have been lost.
        """
        self._interrupted_listeners.append(listener)

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
        self._tell(self._reconnect_listeners, "reconnect")

    def _tell(self, listeners, what):
        for listener in list(listeners):
            try:
                listener()
            except Exception:
                self._log.failure("Redis {what} listener failed", what=what)

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
            if self._subscriber_factory is not None:  # not stopping
                self._log.warn("lost the subscriber connection to Redis at {redis}; "
                               "messages to this instance may have been lost",
                               redis=self._url_for_logs)
                self._tell(self._interrupted_listeners, "interrupted")

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
