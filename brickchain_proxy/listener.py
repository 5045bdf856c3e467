"""
A service that listens on one server endpoint while it runs: the proxy's
C{--listen} endpoints and both daemons' C{--metrics} endpoint.

Twisted's C{StreamServerEndpointService} would do, but it only logs a
listen that fails at once (the daemon would run deaf, or without the
metrics it was asked for) and does not say which port it got (tests listen
on port 0).
"""

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger


class Listener(service.Service):
    """
    Listens on one server endpoint while running.  A listen that fails at
    once (the port is taken) raises from L{startService}, so twistd exits
    with the reason instead of running deaf.
    """

    _log = Logger()

    def __init__(self, endpoint, factory, description):
        self._endpoint = endpoint
        self._factory = factory
        self.description = description
        self.port = None
        self._failure = None
        self._waiters = []

    def startService(self):
        service.Service.startService(self)
        failures = []
        d = self._endpoint.listen(self._factory)
        d.addCallbacks(self._listening, failures.append)
        if failures:
            failures[0].raiseException()
        d.addErrback(self._failed)

    def _listening(self, port):
        self.port = port
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(port)

    def _failed(self, failure):
        self._log.failure("cannot listen on {endpoint}", failure,
                          endpoint=self.description)
        self._failure = failure
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(failure)

    def when_listening(self):
        """
        @return: a L{Deferred} firing with the L{IListeningPort} once
            listening.
        """
        if self.port is not None:
            return defer.succeed(self.port)
        if self._failure is not None:
            return defer.fail(self._failure)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def stopService(self):
        service.Service.stopService(self)
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None
