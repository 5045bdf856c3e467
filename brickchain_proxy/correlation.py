"""
Request/reply correlation by message id.

The one place that owns answers the proxy is waiting for: a public HTTP
request waiting for its http-response, a visitor websocket waiting for its
ws-response.  Each entry is a L{Deferred} stored *before* the request is
sent, with a canceller that removes it and a timeout on the reactor's clock.
Whatever happens -- answer, timeout, cancel (the visitor hung up), the
tunnel's connection dropping -- the entry leaves the table.
"""

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.logger import Logger


class TunnelGone(Exception):
    """
    The connection a request was sent on went away before it answered.
    """


class DuplicateRequestId(Exception):
    """
    A message id is already waiting for an answer.
    """


class _Pending:
    __slots__ = ("deferred", "owner", "timer")

    def __init__(self, deferred, owner, timer):
        self.deferred = deferred
        self.owner = owner
        self.timer = timer


class PendingRequests:
    """
    Deferreds waiting for a reply, keyed by message id.

    @param reactor: provides C{callLater} and C{seconds}; tests pass a
        L{twisted.internet.task.Clock}.
    """

    _log = Logger()

    def __init__(self, reactor):
        self._reactor = reactor
        self._entries = {}

    def __len__(self):
        return len(self._entries)

    def __contains__(self, message_id):
        return message_id in self._entries

    def expect(self, message_id, owner, timeout):
        """
        Start waiting for the reply to C{message_id}.

        @param owner: what the request was sent on (a connection, or a remote
            instance); L{fail_owner} fails every entry of one owner, and
            L{resolve} only accepts a reply from the same owner.
        @param timeout: seconds before the Deferred fails with
            L{TimeoutError}.
        @return: a L{Deferred} that fires with the reply; cancelling it
            removes the entry.
        """
        if message_id in self._entries:
            raise DuplicateRequestId(message_id)
        d = Deferred(lambda _: self._forget(message_id))
        timer = self._reactor.callLater(timeout, self._expire, message_id)
        self._entries[message_id] = _Pending(d, owner, timer)
        return d

    def resolve(self, message_id, reply, owner=None):
        """
        Deliver C{reply} to whoever waits for C{message_id}.

        @param owner: if given, the entry must have been registered with the
            same owner (a tunnel cannot answer another tunnel's request).
        @return: L{True} if someone was waiting, else L{False}.
        """
        entry = self._entries.get(message_id)
        if entry is None or (owner is not None and entry.owner != owner):
            return False
        del self._entries[message_id]
        entry.timer.cancel()
        entry.deferred.callback(reply)
        return True

    def fail(self, message_id, reason):
        """
        Fail one waiting entry with the exception C{reason}.

        @return: L{True} if there was such an entry.
        """
        entry = self._entries.pop(message_id, None)
        if entry is None:
            return False
        entry.timer.cancel()
        entry.deferred.errback(reason)
        return True

    def fail_owner(self, owner, reason):
        """
        Fail every entry sent on C{owner} with C{reason} (an exception
        instance), e.g. when that tunnel's connection is lost.

        @return: how many entries were failed.
        """
        ids = [mid for mid, e in self._entries.items() if e.owner == owner]
        for message_id in ids:
            self.fail(message_id, reason)
        return len(ids)

    def _expire(self, message_id):
        entry = self._entries.pop(message_id, None)
        if entry is not None:
            entry.deferred.errback(
                TimeoutError("no reply to {}".format(message_id))
            )

    def _forget(self, message_id):
        # The canceller: the waiter gave up (visitor hung up).
        entry = self._entries.pop(message_id, None)
        if entry is not None and entry.timer.active():
            entry.timer.cancel()


__all__ = ["PendingRequests", "TunnelGone", "DuplicateRequestId",
           "CancelledError", "TimeoutError"]
