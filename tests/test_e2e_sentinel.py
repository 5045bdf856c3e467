"""
The bus through Redis Sentinel, end to end with real processes: a master,
a replica and three sentinels (Debian's redis-server in sentinel mode), two
proxy instances on C{--bus redis+sentinel://...}, a tunnel client on A and
visitors through B.  Killing the master makes the sentinels promote the
replica; the proxies find the new master by themselves, re-claim their
tunnels, and cross-instance traffic resumes without a restart.
"""

import signal
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from brickchain_proxy.bus import BusUnavailable
from tests.redis_server import SentinelCluster, redis_command
from tests.support import start_local_service, visitor
from tests.test_e2e_redis import RECOVERY, RecordingResource, _RedisCluster


async def _poll(predicate, what, timeout=RECOVERY):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("{} not within {:g} s".format(what, timeout))
        await deferLater(reactor, 0.05, lambda: None)


class SentinelFailoverTests(_RedisCluster, TestCase):
    timeout = 120

    async def _set_up(self):
        self.redis = await SentinelCluster.for_test(self)
        await _poll(self.redis.replica_synced, "the replica in sync")
        await _poll(self.redis.sentinels_see_the_replica, "the sentinels see the replica")
        self.http = visitor(self)
        self.local = RecordingResource()
        self.local_url = start_local_service(self, self.local)

    async def test_bus_follows_a_failover(self):
        """
        Through B to a client on A, before and after the master is killed:
        the sentinels promote the replica, both proxies reconnect to it by
        themselves and re-claim their tunnels, and the request through B is
        answered again.  (A request caught by the failover ends at the
        request timeout at worst: 5 s here.)
        """
        a, b = await self.two_instances(request_timeout=5.0)
        _, client_id = await self.tunnel_on(a)
        old_master = self.redis.master.port
        self.assertEqual(self.redis.master_port(), old_master)
        await self.get_ok(b.tunnel_url(client_id, "/echo?before"))

        await self.redis.master.stop(signal.SIGKILL)
        await _poll(lambda: self.redis.master_port() == self.redis.replica.port,
                    "the sentinels promote the replica")

        seen = await self.poll_until_ok(b.tunnel_url(client_id, "/echo?after"))
        # 504: a request B published to the new master before A had
        # subscribed there again (the docstring's request caught by it).
        self.assertTrue(set(seen) <= {502, 503, 504}, seen)
        await self.get_ok(a.tunnel_url(client_id, "/echo?through-a"))
        # The directory on the new master names A again.
        self.assertEqual(await self.owner(b, client_id), a.instance_id)
        for instance in (a, b):
            self.assertEqual(instance.proxy.backend._master_endpoint.address,
                             ("127.0.0.1", self.redis.replica.port))
        self.flushLoggedErrors(BusUnavailable)

    async def test_bus_follows_a_manual_failover(self):
        """
        SENTINEL FAILOVER leaves the old master running, demoted to a
        replica: the proxies notice the move from the sentinels (their
        watch), reconnect to the new master, and traffic through B resumes.
        """
        a, b = await self.two_instances(request_timeout=5.0)
        _, client_id = await self.tunnel_on(a)
        await self.get_ok(b.tunnel_url(client_id, "/echo?before"))

        reply = redis_command(self.redis.sentinels[0].port, "SENTINEL", "FAILOVER",
                              self.redis.master_name)
        self.assertEqual(reply, b"+OK\r\n")
        await _poll(lambda: self.redis.master_port() == self.redis.replica.port,
                    "the sentinels promote the replica")
        new_master = ("127.0.0.1", self.redis.replica.port)
        await _poll(lambda: all(i.proxy.backend._master_endpoint.address == new_master
                                and i.proxy.backend.connected for i in (a, b)),
                    "both proxies on the new master")
        await self.poll_until_ok(b.tunnel_url(client_id, "/echo?after"))
        self.assertEqual(await self.owner(b, client_id), a.instance_id)
        self.flushLoggedErrors(BusUnavailable)
