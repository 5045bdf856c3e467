"""
L{brickchain_proxy.gctuning}: the daemons' collector settings.
"""

import gc

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from brickchain_proxy import gctuning


class _Reactor:
    def __init__(self):
        self.when_running = []

    def callWhenRunning(self, f, *args):
        self.when_running.append((f, args))


class TuneTests(SynchronousTestCase):
    def setUp(self):
        threshold = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *threshold)

    def test_raises_the_young_threshold_and_freezes_once_running(self):
        reactor = _Reactor()
        before = gc.get_threshold()
        gctuning.tune(reactor)
        self.assertEqual(gc.get_threshold(), before)
        self.assertEqual(reactor.when_running, [(gctuning.apply, ())])
        self.addCleanup(gc.unfreeze)
        frozen = gc.get_freeze_count()
        gctuning.apply()
        self.assertEqual(gc.get_threshold(), (gctuning.YOUNG_THRESHOLD,) + before[1:])
        self.assertGreater(gc.get_freeze_count(), frozen)

    def test_a_clock_is_left_alone(self):
        """
        A reactor that cannot run (a test's clock) gets nothing.
        """
        gctuning.tune(object())

    def test_both_daemons_tune(self):
        """
        C{makeService} of the proxy and of the client applies the settings.
        """
        from brickchain_proxy.client import tap as client_tap
        from brickchain_proxy.proxy import tap as proxy_tap

        called = []
        self.patch(gctuning, "tune", called.append)
        for tap, argv in ((proxy_tap, ["--domain", "example.io"]),
                          (client_tap, ["--proxy", "http://127.0.0.1:1",
                                        "--local", "http://127.0.0.1:2",
                                        "--key", self.mktemp(), "--state", self.mktemp()])):
            config = tap.Options()
            config.parseOptions(argv)
            reactor = MemoryReactorClock()
            tap.makeService(config, reactor)
            self.assertIs(called[-1], reactor)
        self.assertEqual(len(called), 2)
