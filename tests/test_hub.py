"""
Tests for L{brickchain_proxy.proxy.hub}: routing requests to tunnels held
by this instance (the fast path) and, over a shared L{MemoryBus} and
L{MemoryDirectory}, to tunnels held by another instance.

Every test ends with nothing waiting: no pending request and no timer on
the clock (each relayed request holds a timer, so this also proves no relay
is left behind).
"""

from twisted.internet.defer import CancelledError, TimeoutError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from brickchain_proxy.correlation import TunnelGone
from brickchain_proxy.features import SUPPORTED
from brickchain_proxy.messages import HttpResponse
from brickchain_proxy.proxy.interfaces import ITunnelConnection
from brickchain_proxy.proxy.hub import RemoteFailure, TunnelOffline
from tests.support_hub import (
    CLIENT,
    OTHER_CLIENT,
    TIMEOUT,
    FakeConnection,
    HubTestCase,
    http_request,
)


class LocalTunnelTests(HubTestCase):
    """
    A tunnel held by this instance: a dict lookup, no bus.
    """

    def setUp(self):
        HubTestCase.setUp(self)
        self.hub = self.make_hub("a")

    def test_request_is_sent_on_the_connection_and_the_reply_resolves(self):
        """
        The request's bytes go straight to the connection; its reply fires
        the Deferred with the decoded response.
        """
        connection = FakeConnection()
        self.hub.attach(CLIENT, connection)
        message_id, raw = http_request()

        d = self.hub.request(CLIENT, message_id, raw)

        self.assertEqual(connection.sent, [raw])
        self.assertNoResult(d)
        self.assertTrue(connection.answer(self.hub, raw, status=201))
        response = self.successResultOf(d)
        self.assertIsInstance(response, HttpResponse)
        self.assertEqual((response.id, response.status), (message_id, 201))

    def test_local_requests_do_not_use_the_bus(self):
        """
        The fast path publishes nothing: no delivery is scheduled.
        """
        connection = FakeConnection()
        self.hub.attach(CLIENT, connection)
        message_id, raw = http_request()

        d = self.hub.request(CLIENT, message_id, raw)

        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the timeout
        connection.answer(self.hub, raw)
        self.successResultOf(d)

    def test_reply_from_another_connection_is_refused(self):
        """
        A connection cannot answer a request sent to another tunnel's
        connection.
        """
        mine, intruder = FakeConnection(), FakeConnection()
        self.hub.attach(CLIENT, mine)
        self.hub.attach(OTHER_CLIENT, intruder)
        message_id, raw = http_request()
        d = self.hub.request(CLIENT, message_id, raw)

        self.assertFalse(intruder.answer(self.hub, raw))

        self.assertNoResult(d)
        self.assertTrue(mine.answer(self.hub, raw))
        self.successResultOf(d)

    def test_reply_nobody_waits_for_is_not_wanted(self):
        """
        An unsolicited reply is refused.
        """
        connection = FakeConnection()
        self.hub.attach(CLIENT, connection)
        _, raw = http_request()

        self.assertFalse(connection.answer(self.hub, raw))

    def test_unanswered_request_times_out(self):
        """
        Without a reply, the request fails with L{TimeoutError} after the
        request timeout.
        """
        self.hub.attach(CLIENT, FakeConnection())
        message_id, raw = http_request()
        d = self.hub.request(CLIENT, message_id, raw)

        self.clock.advance(TIMEOUT - 1)
        self.assertNoResult(d)
        self.clock.advance(1)

        self.failureResultOf(d, TimeoutError)

    def test_cancelled_request_is_forgotten(self):
        """
        Cancelling the request (the visitor left) removes it; a late reply
        is then not wanted.
        """
        connection = FakeConnection()
        self.hub.attach(CLIENT, connection)
        message_id, raw = http_request()
        d = self.hub.request(CLIENT, message_id, raw)

        d.cancel()

        self.failureResultOf(d, CancelledError)
        self.assertFalse(connection.answer(self.hub, raw))

    def test_connection_lost_fails_pending_at_once_and_forgets_tunnels(self):
        """
        When a connection goes, its requests fail with L{TunnelGone}
        without waiting for the timeout, and its tunnels are offline.
        """
        connection = FakeConnection()
        self.hub.attach(CLIENT, connection)
        self.hub.attach(OTHER_CLIENT, connection)
        first = self.hub.request(CLIENT, *http_request())
        second = self.hub.request(OTHER_CLIENT, *http_request())

        self.assertEqual(self.hub.connection_lost(connection), 2)

        self.failureResultOf(first, TunnelGone)
        self.failureResultOf(second, TunnelGone)
        self.assertEqual(self.hub.local, {})
        self.assertIsNone(self.successResultOf(self.directory.lookup(CLIENT)))

    def test_connection_lost_leaves_other_connections_alone(self):
        """
        Losing one connection does not fail requests on another.
        """
        lost, alive = FakeConnection(), FakeConnection()
        self.hub.attach(CLIENT, lost)
        self.hub.attach(OTHER_CLIENT, alive)
        message_id, raw = http_request()
        d = self.hub.request(OTHER_CLIENT, message_id, raw)

        self.hub.connection_lost(lost)

        self.assertNoResult(d)
        self.assertEqual(list(self.hub.local), [OTHER_CLIENT])
        alive.answer(self.hub, raw)
        self.successResultOf(d)

    def test_newest_registration_wins(self):
        """
        Attaching a clientID that another connection holds tells the older
        connection to go; requests then reach the newest.
        """
        older, newer = FakeConnection(), FakeConnection()
        self.hub.attach(CLIENT, older)

        self.hub.attach(CLIENT, newer)

        self.assertEqual(older.taken_over, [CLIENT])
        self.assertEqual(newer.taken_over, [])
        self.assertIs(self.hub.local[CLIENT], newer)
        message_id, raw = http_request()
        d = self.hub.request(CLIENT, message_id, raw)
        self.assertEqual((older.sent, newer.sent), ([], [raw]))
        newer.answer(self.hub, raw)
        self.successResultOf(d)

    def test_older_connection_closing_keeps_the_newer_tunnel(self):
        """
        The replaced connection going away later does not take the tunnel
        offline.
        """
        older, newer = FakeConnection(), FakeConnection()
        self.hub.attach(CLIENT, older)
        self.hub.attach(CLIENT, newer)

        self.hub.connection_lost(older)

        self.assertIs(self.hub.local[CLIENT], newer)
        self.assertEqual(self.successResultOf(self.directory.lookup(CLIENT)), "a")

    def test_same_connection_registering_again_is_not_told_to_go(self):
        """
        A connection registering the same clientID again keeps it.
        """
        connection = FakeConnection()
        self.hub.attach(CLIENT, connection)

        self.hub.attach(CLIENT, connection)

        self.assertEqual(connection.taken_over, [])
        self.assertIs(self.hub.local[CLIENT], connection)

    def test_unknown_tunnel_is_offline_at_once(self):
        """
        A request for a tunnel nobody holds fails with L{TunnelOffline}
        without waiting.
        """
        d = self.hub.request(CLIENT, *http_request())

        self.failureResultOf(d, TunnelOffline)

    def test_detached_tunnel_is_offline(self):
        """
        After C{detach}, the tunnel is offline here and in the directory.
        """
        connection = FakeConnection()
        self.hub.attach(CLIENT, connection)

        self.hub.detach(CLIENT, connection)

        self.failureResultOf(self.hub.request(CLIENT, *http_request()),
                             TunnelOffline)
        self.assertIsNone(self.successResultOf(self.directory.lookup(CLIENT)))

    def test_encoding_features_of_a_local_tunnel(self):
        """
        Requests for a tunnel held here are encoded with exactly the
        features its connection negotiated.
        """
        self.hub.attach(CLIENT, FakeConnection(frozenset(["binary-ws"])))

        self.assertEqual(self.hub.encoding_features(CLIENT), frozenset(["binary-ws"]))

    def test_stop_fails_everything_and_unsubscribes(self):
        """
        Stopping the hub fails its pending requests with L{TunnelGone} and
        leaves the bus.
        """
        connection = FakeConnection()
        self.hub.attach(CLIENT, connection)
        d = self.hub.request(CLIENT, *http_request())

        self.successResultOf(self.hub.stop())

        self.failureResultOf(d, TunnelGone)
        self.assertEqual(self.hub.local, {})
        self.assertEqual(self.bus.channels(), set())


class CrossInstanceTests(HubTestCase):
    """
    Two hubs, A and B, sharing one bus and one directory: a request arriving
    on B for a tunnel whose connection is on A.
    """

    def setUp(self):
        HubTestCase.setUp(self)
        self.a = self.make_hub("a")
        self.b = self.make_hub("b")
        self.connection = FakeConnection()
        self.a.attach(CLIENT, self.connection)

    def test_request_is_relayed_and_the_reply_travels_back(self):
        """
        B's request reaches A's connection as the very same bytes; the reply
        given to A resolves the request on B.
        """
        message_id, raw = http_request("/over/there")

        d = self.b.request(CLIENT, message_id, raw)
        self.deliver()

        self.assertEqual(self.connection.sent, [raw])
        self.assertNoResult(d)
        self.assertTrue(self.connection.answer(self.a, raw, status=203,
                                               body=b"from A"))
        self.deliver()
        response = self.successResultOf(d)
        self.assertEqual((response.id, response.status, response.body),
                         (message_id, 203, b"from A"))

    def test_relayed_request_is_not_delivered_inside_request(self):
        """
        Crossing the bus is asynchronous: A's connection gets the request
        only when the bus delivers.
        """
        d = self.b.request(CLIENT, *http_request())

        self.assertEqual(self.connection.sent, [])
        self.deliver()
        self.assertEqual(len(self.connection.sent), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(TIMEOUT + 5)  # A's relay entry expires

    def test_reply_from_another_connection_on_a_is_refused(self):
        """
        Only the connection the request was relayed to can answer it.
        """
        intruder = FakeConnection()
        self.a.attach(OTHER_CLIENT, intruder)
        message_id, raw = http_request()
        d = self.b.request(CLIENT, message_id, raw)
        self.deliver()

        self.assertFalse(intruder.answer(self.a, raw))
        self.deliver()

        self.assertNoResult(d)
        self.connection.answer(self.a, raw)
        self.deliver()
        self.successResultOf(d)

    def test_unanswered_request_times_out_on_b(self):
        """
        Without a reply, B's request fails with L{TimeoutError} after the
        request timeout; A forgets its relay a little later, and a late
        reply is then not wanted.
        """
        message_id, raw = http_request()
        d = self.b.request(CLIENT, message_id, raw)
        self.deliver()

        self.clock.advance(TIMEOUT - 1)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.failureResultOf(d, TimeoutError)

        self.clock.advance(5)
        self.assertFalse(self.connection.answer(self.a, raw))

    def test_connection_lost_on_a_fails_b_at_once(self):
        """
        When A loses the tunnel's connection, B's request fails with
        L{RemoteFailure} as soon as the bus delivers, not at the timeout.
        """
        d = self.b.request(CLIENT, *http_request())
        self.deliver()

        self.a.connection_lost(self.connection)
        self.deliver()

        failure = self.failureResultOf(d, RemoteFailure)
        self.assertIn("lost", failure.getErrorMessage())
        self.assertEqual(self.clock.seconds(), 0)

    def test_tunnel_gone_from_a_before_the_request_arrives(self):
        """
        If A no longer holds the tunnel when the relayed request arrives, B's
        request fails with L{RemoteFailure} at once.
        """
        self.directory.claim(OTHER_CLIENT, "a")  # stale entry: A has no such tunnel
        d = self.b.request(OTHER_CLIENT, *http_request())
        self.deliver()

        self.failureResultOf(d, RemoteFailure)
        self.directory.release(OTHER_CLIENT, "a")

    def test_cancelled_remote_request_is_forgotten_on_b(self):
        """
        Cancelling on B removes B's pending entry; A's late reply is then
        dropped on B.
        """
        message_id, raw = http_request()
        d = self.b.request(CLIENT, message_id, raw)
        self.deliver()

        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(self.b.pending), 0)

        self.assertTrue(self.connection.answer(self.a, raw))  # A still relays
        self.deliver()
        self.assertEqual(len(self.b.pending), 0)

    def test_claim_on_b_makes_a_close_its_connection(self):
        """
        The tunnel registering on B takes it over: A's older connection is
        told to go, and requests then go to B's connection.
        """
        newer = FakeConnection()

        self.b.attach(CLIENT, newer)
        self.deliver()

        self.assertEqual(self.connection.taken_over, [CLIENT])
        self.assertNotIn(CLIENT, self.a.local)
        self.assertEqual(self.successResultOf(self.directory.lookup(CLIENT)), "b")

        message_id, raw = http_request()
        d = self.a.request(CLIENT, message_id, raw)
        self.deliver()
        self.assertEqual((self.connection.sent, newer.sent), ([], [raw]))
        newer.answer(self.b, raw)
        self.deliver()
        self.successResultOf(d)

    def test_old_connection_closing_after_takeover_keeps_the_tunnel_on_b(self):
        """
        A's replaced connection going away later does not remove B's entry.
        """
        self.b.attach(CLIENT, FakeConnection())
        self.deliver()

        self.a.connection_lost(self.connection)

        self.assertEqual(self.successResultOf(self.directory.lookup(CLIENT)), "b")

    def test_renewal_on_a_after_takeover_closes_its_connection(self):
        """
        If A renews after B claimed the tunnel (the takeover message lost),
        A drops the tunnel and closes its connection.
        """
        self.directory.claim(CLIENT, "b")  # B's claim, without the message

        self.a.renew_all()

        self.assertEqual(self.connection.taken_over, [CLIENT])
        self.assertNotIn(CLIENT, self.a.local)

    def test_unknown_tunnel_is_offline_on_every_instance(self):
        """
        A tunnel no instance holds fails with L{TunnelOffline} at once.
        """
        d = self.b.request(OTHER_CLIENT, *http_request())

        self.failureResultOf(d, TunnelOffline)

    def test_encoding_features_of_a_remote_tunnel_are_all(self):
        """
        B does not know what A's connection negotiated: it encodes with every
        extension, losslessly, and A adapts the message to its connection.
        """
        self.assertEqual(self.b.encoding_features(CLIENT), SUPPORTED)

    def test_malformed_envelope_is_logged_and_ignored(self):
        """
        Garbage on an instance's channel is logged; the hub keeps working.
        """
        self.bus.publish("brickproxy:instance:a", b"Z\nnonsense")
        self.bus.publish("brickproxy:instance:a", b"A\nnot json")
        self.deliver()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)

        message_id, raw = http_request()
        d = self.b.request(CLIENT, message_id, raw)
        self.deliver()
        self.connection.answer(self.a, raw)
        self.deliver()
        self.successResultOf(d)


class FakeConnectionContractTests(SynchronousTestCase):
    def test_fake_connection_provides_the_interface(self):
        """The stand-in provides ITunnelConnection, as the real connection does."""
        self.assertTrue(verifyObject(ITunnelConnection, FakeConnection()))
