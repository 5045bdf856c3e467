"""
Diagnostics that work: an unexpected failure is logged with its
traceback; a bus that cannot start stops the proxy, saying why; SIGHUP's
previous handler comes back when the proxy stops.
"""

import signal

from twisted.internet import defer
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from brickchain_proxy.proxy.service import ProxyService


def proxy_on(reactor, **kwargs):
    return ProxyService(reactor, ["tcp:0:interface=127.0.0.1"], "p.test",
                        "http://p.test", shutdown_grace=0, **kwargs)


class FailureLoggingTests(TestCase):
    def setUp(self):
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def failures_logged(self, text):
        return [e for e in self.events
                if text in e.get("log_format", "") and "log_failure" in e]

    def test_failure_answering_a_request_is_logged_with_its_traceback(self):
        """A bug while answering a tunnelled request is logged as a failure with its traceback."""
        import io

        from twisted.internet.task import Clock
        from twisted.web.test.requesthelper import DummyChannel

        from brickchain_proxy.proxy.public import PublicTunnel
        from brickchain_proxy.proxy.site import BoundedRequest
        from brickchain_proxy.ratelimit import TokenBucketLimiter

        class Hub:
            local = {}

            def tunnel_known(self, client_id):
                return defer.succeed(True)

            def pick(self, client_id):
                return None

            def remote_tunnel(self, client_id):
                return defer.succeed(None)

            def encoding_features(self, client_id):
                return frozenset()

            def request(self, client_id, message_id, raw):
                return defer.succeed(object())  # not an http-response: a bug

        clock = Clock()
        public = PublicTunnel(Hub(), TokenBucketLimiter(clock, 10, 10), 1000, 30,
                              clock=clock)
        request = BoundedRequest(DummyChannel())
        request.method, request.uri, request.clientproto = b"GET", b"/x", b"HTTP/1.1"
        request.content = io.BytesIO(b"")
        public.forward(request, "c" * 52, b"/x")
        [event] = self.failures_logged("answering a tunnelled request failed")
        self.assertIsInstance(event["log_failure"].value, AttributeError)
        self.assertIn("_respond", event["log_failure"].getTraceback())
        self.flushLoggedErrors(AttributeError)


class BusStartTests(TestCase):
    def setUp(self):
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_bus_that_cannot_start_stops_the_proxy_saying_why(self):
        """A failing bus start fails startService, logs why, and under twistd stops the reactor."""
        reactor = MemoryReactorClock()
        proxy = proxy_on(reactor, handle_signals=True)
        proxy.backend.start = lambda: defer.fail(ValueError("no such bus"))
        d = proxy.startService()
        self.addCleanup(proxy.stopService)
        failure = self.failureResultOf(d, ValueError)
        self.assertEqual(str(failure.value), "no such bus")
        [event] = [e for e in self.events
                   if "could not start" in e.get("log_format", "")]
        self.assertIsInstance(event["log_failure"].value, ValueError)
        reactor.run()  # runs the callWhenRunning calls, among them the stop
        self.assertTrue(reactor.hasStopped)
        self.flushLoggedErrors(ValueError)


class SignalTests(TestCase):
    @defer.inlineCallbacks
    def test_previous_sighup_handler_is_restored_on_stop(self):
        """The proxy installs its SIGHUP handler at start and puts the previous one back at stop."""
        def previous(signum, frame):
            pass

        original = signal.signal(signal.SIGHUP, previous)
        self.addCleanup(signal.signal, signal.SIGHUP, original)
        proxy = proxy_on(MemoryReactorClock(), handle_signals=True)
        yield proxy.startService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), proxy._sighup)
        yield proxy.stopService()
        self.assertIs(signal.getsignal(signal.SIGHUP), previous)
