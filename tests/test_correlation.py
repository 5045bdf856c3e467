"""
Tests for L{brickchain_proxy.correlation}: every way an entry can leave the
table of pending requests -- answer, timeout, cancel, lost connection -- and
the replies that must be refused.
"""

from twisted.internet.defer import CancelledError, TimeoutError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from brickchain_proxy.correlation import (
    DuplicateRequestId,
    PendingRequests,
    TunnelGone,
)

TIMEOUT = 10.0


class PendingRequestsTests(SynchronousTestCase):
    """
    L{PendingRequests} on a L{Clock}.
    """

    def setUp(self):
        self.clock = Clock()
        self.pending = PendingRequests(self.clock)
        self.owner = object()
        self.addCleanup(self.assertNoTimersLeft)

    def assertNoTimersLeft(self):
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_resolve_delivers_the_reply_and_removes_the_entry(self):
        """
        C{resolve} fires the Deferred with the reply and forgets the id.
        """
        d = self.pending.expect("m1", self.owner, TIMEOUT)
        self.assertIn("m1", self.pending)

        self.assertTrue(self.pending.resolve("m1", "the reply", self.owner))

        self.assertEqual(self.successResultOf(d), "the reply")
        self.assertNotIn("m1", self.pending)
        self.assertEqual(len(self.pending), 0)

    def test_resolve_without_owner_accepts_any_sender(self):
        """
        C{resolve} with no owner given delivers whatever the entry's owner.
        """
        d = self.pending.expect("m1", self.owner, TIMEOUT)

        self.assertTrue(self.pending.resolve("m1", "reply"))

        self.assertEqual(self.successResultOf(d), "reply")

    def test_timeout_fires_exactly_at_the_deadline(self):
        """
        The Deferred fails with L{TimeoutError} when the timeout has passed,
        not a moment before, and the entry is gone.
        """
        d = self.pending.expect("m1", self.owner, TIMEOUT)

        self.clock.advance(TIMEOUT - 0.5)
        self.assertNoResult(d)
        self.assertIn("m1", self.pending)

        self.clock.advance(0.5)
        self.failureResultOf(d, TimeoutError)
        self.assertEqual(self.clock.seconds(), TIMEOUT)
        self.assertEqual(len(self.pending), 0)

    def test_cancel_removes_the_entry_and_its_timer(self):
        """
        Cancelling the Deferred (the visitor hung up) forgets the id and
        cancels its timeout.
        """
        d = self.pending.expect("m1", self.owner, TIMEOUT)

        d.cancel()

        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(self.pending), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fail_owner_fails_only_that_owners_entries(self):
        """
        C{fail_owner} fails every entry of one owner with the given
        L{TunnelGone} and leaves other owners' entries waiting.
        """
        other = object()
        mine1 = self.pending.expect("m1", self.owner, TIMEOUT)
        mine2 = self.pending.expect("m2", self.owner, TIMEOUT)
        theirs = self.pending.expect("m3", other, TIMEOUT)

        failed = self.pending.fail_owner(self.owner, TunnelGone("lost"))

        self.assertEqual(failed, 2)
        self.failureResultOf(mine1, TunnelGone)
        self.failureResultOf(mine2, TunnelGone)
        self.assertNoResult(theirs)
        self.assertEqual(len(self.pending), 1)
        self.assertIn("m3", self.pending)

        self.pending.resolve("m3", "reply", other)
        self.successResultOf(theirs)

    def test_fail_owner_with_nothing_pending_fails_nothing(self):
        """
        C{fail_owner} for an owner without entries reports zero.
        """
        self.assertEqual(self.pending.fail_owner(self.owner, TunnelGone()), 0)

    def test_reply_from_the_wrong_owner_is_refused(self):
        """
        A reply from another owner (another tunnel) does not resolve the
        entry, which keeps waiting for its own owner.
        """
        d = self.pending.expect("m1", self.owner, TIMEOUT)

        self.assertFalse(self.pending.resolve("m1", "forged", object()))

        self.assertNoResult(d)
        self.assertIn("m1", self.pending)
        self.assertTrue(self.pending.resolve("m1", "genuine", self.owner))
        self.assertEqual(self.successResultOf(d), "genuine")

    def test_duplicate_id_is_refused(self):
        """
        Waiting twice for the same id raises L{DuplicateRequestId} and keeps
        the first entry.
        """
        first = self.pending.expect("m1", self.owner, TIMEOUT)

        self.assertRaises(
            DuplicateRequestId, self.pending.expect, "m1", self.owner, TIMEOUT
        )

        self.assertEqual(len(self.pending), 1)
        self.pending.resolve("m1", "reply", self.owner)
        self.assertEqual(self.successResultOf(first), "reply")

    def test_late_reply_after_timeout_is_not_wanted(self):
        """
        A reply arriving after the timeout returns L{False} and changes
        nothing.
        """
        d = self.pending.expect("m1", self.owner, TIMEOUT)
        self.clock.advance(TIMEOUT)
        self.failureResultOf(d, TimeoutError)

        self.assertFalse(self.pending.resolve("m1", "late", self.owner))
        self.assertEqual(len(self.pending), 0)

    def test_reply_to_unknown_id_is_not_wanted(self):
        """
        A reply nobody waits for returns L{False}.
        """
        self.assertFalse(self.pending.resolve("nobody", "reply"))

    def test_fail_one_entry(self):
        """
        C{fail} fails one entry with the given exception and cancels its
        timer; failing it again reports L{False}.
        """
        d = self.pending.expect("m1", self.owner, TIMEOUT)

        self.assertTrue(self.pending.fail("m1", TunnelGone("bye")))
        self.assertFalse(self.pending.fail("m1", TunnelGone("bye")))

        self.failureResultOf(d, TunnelGone)
        self.assertEqual(len(self.pending), 0)
