"""
In-memory bus and directory: one process, no dependencies, reactor-native.

Several proxy hubs in one process may share one L{MemoryBus} and one
L{MemoryDirectory}; that is how the multi-instance paths are tested without
Redis.
"""

from collections import deque

from twisted.internet.defer import succeed
from twisted.logger import Logger
from zope.interface import implementer

from .interface import IBus, ITunnelDirectory


@implementer(IBus)
class MemoryBus:
    """
    Publish/subscribe inside one process.

    Messages are queued and delivered from the reactor in one batch per
    reactor turn, in publish order; a handler that raises is logged and does
    not stop delivery to the others.
    """

    _log = Logger()

    def __init__(self, reactor):
        self._reactor = reactor
        self._handlers = {}
        self._queue = deque()
        self._scheduled = None

    def publish(self, channel, payload):
        receivers = len(self._handlers.get(channel, ()))
        if receivers:
            self._queue.append((channel, payload))
            if self._scheduled is None:
                self._scheduled = self._reactor.callLater(0, self._deliver)
        return succeed(receivers)

    def subscribe(self, channel, handler):
        self._handlers.setdefault(channel, []).append(handler)
        return succeed(None)

    def unsubscribe(self, channel, handler):
        handlers = self._handlers.get(channel)
        if handlers is not None and handler in handlers:
            handlers.remove(handler)
            if not handlers:
                del self._handlers[channel]
        return succeed(None)

    def channels(self):
        """
        @return: the channels that have at least one handler (for tests and
            introspection).
        """
        return set(self._handlers)

    def close(self):
        """
        Drop undelivered messages and stop the delivery timer.
        """
        self._queue.clear()
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        return succeed(None)

    def _deliver(self):
        self._scheduled = None
        queue = self._queue
        # Deliver only what was queued before this turn: a handler that
        # publishes gets its message delivered on the next turn.
        for _ in range(len(queue)):
            channel, payload = queue.popleft()
            for handler in tuple(self._handlers.get(channel, ())):
                try:
                    handler(payload)
                except Exception:
                    self._log.failure(
                        "bus handler for {channel} failed", channel=channel
                    )


@implementer(ITunnelDirectory)
class MemoryDirectory:
    """
    Tunnel directory in a dict.  Entries live until released (no TTL: the
    process that holds the connection is the process that holds the dict).
    """

    ttl = None

    def __init__(self):
        self._owners = {}

    def claim(self, client_id, instance_id):
        previous = self._owners.get(client_id)
        self._owners[client_id] = instance_id
        return succeed(previous)

    def renew(self, client_id, instance_id):
        return succeed(self._owners.get(client_id) == instance_id)

    def claim_if_free(self, client_id, instance_id):
        return succeed(self._owners.setdefault(client_id, instance_id))

    def release(self, client_id, instance_id):
        if self._owners.get(client_id) == instance_id:
            del self._owners[client_id]
        return succeed(None)

    def lookup(self, client_id):
        return succeed(self._owners.get(client_id))

    def __len__(self):
        return len(self._owners)
