"""
Client pools (the negotiated C{pool} feature): several clients registering
the same clientID share its requests, and the hostname keeps answering when
one of them dies; v1 clients (and ours without --pool) keep newest-wins.
"""

import os

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web import server
from twisted.web.resource import Resource

from brickchain_proxy.client.service import TunnelClientService
from brickchain_proxy.correlation import TunnelGone
from brickchain_proxy.features import (
    CLIENT_DEFAULT,
    MESSAGE_FEATURES,
    POOL,
    STREAMS,
    SUPPORTED,
    negotiate,
)
from tests.support import start_local_service, start_proxy, stop_client, visitor, wait_until
from tests.support_hub import CLIENT, FakeConnection, HubTestCase, http_request

POOLED = MESSAGE_FEATURES | {STREAMS, POOL}


class NegotiationTests(HubTestCase):

    def test_pool_needs_streams(self):
        """A client offering pool without streams gets neither pool nor newest-wins changes."""
        self.assertEqual(negotiate(["pool", "binary-ws"]), frozenset(["binary-ws"]))
        self.assertEqual(negotiate(["pool", "streams"]), frozenset([POOL, STREAMS]))

    def test_our_client_offers_no_pool_by_default(self):
        self.assertNotIn(POOL, CLIENT_DEFAULT)
        self.assertIn(POOL, SUPPORTED)


class HubPoolTests(HubTestCase):

    def setUp(self):
        HubTestCase.setUp(self)
        self.hub = self.make_hub("a")
        self.first = FakeConnection(POOLED)
        self.second = FakeConnection(POOLED)
        self.successResultOf(self.hub.attach(CLIENT, self.first))
        self.successResultOf(self.hub.attach(CLIENT, self.second))

    def test_members_share_the_requests(self):
        """Both members stay; requests go to each in turn."""
        self.assertEqual((self.first.taken_over, self.second.taken_over), ([], []))
        self.assertEqual(self.hub.pools[CLIENT], [self.first, self.second])
        waiting = []
        for _ in range(4):
            message_id, raw = http_request()
            waiting.append(self.hub.request(CLIENT, message_id, raw))
        self.assertEqual((len(self.first.sent), len(self.second.sent)), (2, 2))
        for connection in (self.first, self.second):
            for raw in connection.sent:
                connection.answer(self.hub, raw)
        for d in waiting:
            self.assertEqual(self.successResultOf(d).status, 200)

    def test_a_member_dying_fails_its_requests_at_once_and_the_rest_go_on(self):
        """The requests in flight on a member that dies fail at once; the other member's are answered and take every new request."""
        on_first = self.hub.request(CLIENT, *http_request())
        on_second = self.hub.request(CLIENT, *http_request())
        self.hub.connection_lost(self.first)
        self.failureResultOf(on_first, TunnelGone)
        self.assertNoResult(on_second)
        self.second.answer(self.hub, self.second.sent[0])
        self.assertEqual(self.successResultOf(on_second).status, 200)
        self.assertNotIn(CLIENT, self.hub.pools)
        self.assertIs(self.hub.local[CLIENT], self.second)
        later = [self.hub.request(CLIENT, *http_request()) for _ in range(3)]
        self.assertEqual(len(self.second.sent), 4)
        for raw in self.second.sent[1:]:
            self.second.answer(self.hub, raw)
        for d in later:
            self.successResultOf(d)
        # The tunnel is still here as far as the directory knows.
        self.assertEqual(self.successResultOf(self.directory.lookup(CLIENT)), "a")

    def test_stopping_fails_what_waits_on_every_member(self):
        """Stopping the hub fails the requests waiting on every member, not only the one in C{local}."""
        waiting = [self.hub.request(CLIENT, *http_request()) for _ in range(2)]
        self.successResultOf(self.hub.stop())
        for d in waiting:
            self.failureResultOf(d, TunnelGone)
        self.assertEqual((self.hub.local, self.hub.pools), ({}, {}))
        self.hubs.remove(self.hub)

    def test_last_member_leaving_releases_the_tunnel(self):
        self.hub.connection_lost(self.first)
        self.hub.connection_lost(self.second)
        self.assertEqual(self.hub.local, {})
        self.assertIsNone(self.successResultOf(self.directory.lookup(CLIENT)))

    def test_a_registration_without_pool_takes_over_every_member(self):
        """Newest wins over a pool too: a client that did not ask for one closes every member."""
        newest = FakeConnection(MESSAGE_FEATURES | {STREAMS})
        self.successResultOf(self.hub.attach(CLIENT, newest))
        self.assertEqual((self.first.taken_over, self.second.taken_over),
                         ([CLIENT], [CLIENT]))
        self.assertIs(self.hub.pick(CLIENT), newest)
        self.assertNotIn(CLIENT, self.hub.pools)

    def test_v1_newest_wins_is_unchanged(self):
        """Without the feature, a second registration closes the first, as before."""
        other = "e" * 52
        old, new = FakeConnection(), FakeConnection()
        self.successResultOf(self.hub.attach(other, old))
        self.successResultOf(self.hub.attach(other, new))
        self.assertEqual(old.taken_over, [other])
        self.assertNotIn(other, self.hub.pools)

    def test_another_instance_s_member_does_not_take_the_tunnel(self):
        """A pool member registering on B while A holds the pool leaves A's members alone; each instance serves its own, and B takes the entry once A has none."""
        b = self.make_hub("b")
        remote_member = FakeConnection(POOLED)
        self.successResultOf(b.attach(CLIENT, remote_member))
        self.clock.advance(0)
        self.assertEqual((self.first.taken_over, self.second.taken_over), ([], []))
        self.assertEqual(self.successResultOf(self.directory.lookup(CLIENT)), "a")
        self.assertIs(b.pick(CLIENT), remote_member)
        b.renew_all()
        self.assertEqual(remote_member.taken_over, [])
        self.hub.connection_lost(self.first)
        self.hub.connection_lost(self.second)
        b.renew_all()
        self.assertEqual(self.successResultOf(self.directory.lookup(CLIENT)), "b")


# -- end to end -----------------------------------------------------------------


class _Local(Resource):
    """
    Answers C{/who} with its name, and holds C{/hang} until L{release}.
    """

    isLeaf = True

    def __init__(self, name):
        Resource.__init__(self)
        self.name = name
        self.hits = 0
        self.hanging = []

    def render_GET(self, request):
        self.hits += 1
        if request.path == b"/hang":
            self.hanging.append(request)
            request.notifyFinish().addErrback(lambda _: None)
            return server.NOT_DONE_YET
        return self.name

    def release(self):
        for request in self.hanging:
            if not request.finished and not request._disconnected:
                request.write(self.name)
                request.finish()
        self.hanging = []


class PoolEndToEndTests(TestCase):
    timeout = 60

    async def start_member(self, key_path, local_url, pool=True):
        client = TunnelClientService(reactor, self.proxy_url, local_url, key_path,
                                     pool=pool)
        client.startService()
        self.addCleanup(stop_client, client)
        registration = await client.when_registered()
        return client, registration

    def setUp(self):
        return defer.ensureDeferred(self._set_up())

    async def _set_up(self):
        self.proxy, port, _ = await start_proxy(self)
        self.proxy_url = "http://127.0.0.1:{}".format(port)
        self.http = visitor(self)
        key_dir = self.mktemp()
        os.makedirs(key_dir)
        self.key = os.path.join(key_dir, "shared.pem")
        self.locals = [_Local(b"one"), _Local(b"two")]
        self.members = []
        for local in self.locals:
            client, registration = await self.start_member(
                self.key, start_local_service(self, local))
            self.members.append(client)
            self.client_id = registration.client_id
        self.assertIn(POOL, registration.features)

    def url(self, path):
        return "{}/proxy/request/{}{}".format(self.proxy_url, self.client_id, path)

    async def get(self, path):
        response = await self.http.get(self.url(path))
        return response.code, await response.content()

    async def test_requests_are_spread_over_the_members(self):
        """Two clients with one key and --pool both serve the hostname: 20 requests are split 10/10."""
        answers = [await self.get("/who") for _ in range(20)]
        self.assertEqual({code for code, _ in answers}, {200})
        self.assertEqual([local.hits for local in self.locals], [10, 10])
        self.assertEqual(len(self.proxy.tunnel_factory.connections), 2)

    async def test_a_member_dying_gives_its_visitors_502_at_once_and_the_rest_flows(self):
        """A member that dies mid-request: its visitor gets 502 at once (not a hang), the other member's visitor its answer, and later requests all succeed."""
        hung = [self.http.get(self.url("/hang")) for _ in range(2)]
        await wait_until(lambda: all(local.hanging for local in self.locals),
                         what="one request hanging on each member")
        # The first member dies: its connection drops without a word.
        self.members[0].protocol.transport.abortConnection()
        first = await hung[0]
        self.assertEqual(first.code, 502)
        self.assertIn(b"connection was lost", await first.content())
        self.locals[1].release()
        second = await hung[1]
        self.assertEqual((second.code, await second.content()), (200, b"two"))
        # (It does not come back.)
        self.locals[0].release()
        await self.members[0].stopService()
        answers = [await self.get("/who") for _ in range(5)]
        self.assertEqual(answers, [(200, b"two")] * 5)

    async def test_a_client_without_pool_takes_the_hostname_over(self):
        """Newest wins against a pool: a client with the same key but no --pool closes both members."""
        newest = _Local(b"newest")
        await self.start_member(self.key, start_local_service(self, newest), pool=False)
        await wait_until(lambda: len(self.proxy.tunnel_factory.connections) == 1,
                         what="the members closed")
        self.assertEqual(await self.get("/who"), (200, b"newest"))
        for member in self.members:
            await member.stopService()
