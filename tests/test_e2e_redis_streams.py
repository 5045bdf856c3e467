"""
Streams across instances, end to end over a real Redis: a visitor on
instance B reaches a tunnel held by instance A on the stream layer (the
tunnel speaks streams), so bodies of any size, live answers and flow
control work through the other instance exactly as through the one holding
the tunnel.
"""

import hashlib

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss

from tests.support import pseudo_random_bytes, start_local_service, wait_until
from tests.support_ws import LocalWebSocketService, connect_visitor
from tests.test_e2e_redis import _RedisCluster
from tests.test_e2e_streams import StreamingService, _Collect, _read, _StreamingUpload


class CrossInstanceStreamTests(_RedisCluster, TestCase):
    """
    Through B, on streams, to a client connected to A.
    """

    async def _set_up(self):
        await _RedisCluster._set_up(self)
        self.streaming = StreamingService()
        self.streaming_url = start_local_service(self, self.streaming)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)
        self.a, self.b = await self.two_instances()
        self.addCleanup(self.assert_nothing_left)
        _, self.client_id = await self.tunnel_on(self.a, local_url=self.streaming_url)

    def url(self, path):
        return self.b.tunnel_url(self.client_id, path).encode("ascii")

    def assert_nothing_left(self):
        def empty():
            return all(not len(i.proxy.hub.relayed_streams)
                       and not len(i.proxy.hub.remote_tunnels)
                       and not i.proxy.public.in_flight for i in (self.a, self.b))

        return wait_until(empty, what="no stream left on either instance")

    async def test_large_download_through_b_arrives_byte_exact(self):
        """A 20 MB download through B, far over --max-body, arrives whole with its length: it rode a stream relayed by A."""
        size = 20 * 1024 * 1024
        response = await self.agent.request(b"GET", self.url("/download/%d" % size))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.length, size)
        body = _Collect()
        response.deliverBody(body)
        reason = await body.done
        self.assertTrue(reason.check(ResponseDone), reason)
        self.assertEqual(hashlib.sha256(b"".join(body.chunks)).hexdigest(),
                         hashlib.sha256(pseudo_random_bytes(size, 1)).hexdigest())

    async def test_large_upload_through_b_arrives_byte_exact(self):
        """A 20 MB upload through B reaches the local service whole, with its length."""
        size = 20 * 1024 * 1024
        response = await self.agent.request(b"POST", self.url("/upload"), None,
                                            _StreamingUpload(size))
        body = await _read(response)
        self.assertEqual(body, b"%d %s length" % (
            size, hashlib.sha256(pseudo_random_bytes(size, 3)).hexdigest().encode()))

    async def test_events_through_b_arrive_as_they_are_written(self):
        """Each server-sent event reaches the visitor on B before the next is written."""
        response = await self.agent.request(b"GET", self.url("/events"))
        body = _Collect()
        arrived = body.next_data()
        response.deliverBody(body)
        self.assertEqual(await arrived, b": open\n\n")
        self.assertEqual(len(self.a.proxy.hub.relayed_streams), 1)
        for n in range(3):
            arrived = body.next_data()
            self.streaming.send_event(b"event %d" % n)
            seen = await arrived
            self.assertTrue(seen.endswith(b"data: event %d\n\n" % n), seen)
        self.streaming.end_events()
        reason = await body.done
        self.assertTrue(reason.check(ResponseDone), reason)

    async def test_slow_visitor_on_b_holds_a_bounded_amount_and_neighbours_flow(self):
        """A visitor on B not reading a huge download pauses the local service behind A; another request through B is answered meanwhile."""
        size = 200 * 1024 * 1024
        response = await self.agent.request(b"GET", self.url("/download/%d" % size))
        reader = _Collect()
        response.deliverBody(reader)
        reader.transport.pauseProducing()
        await wait_until(lambda: self.streaming.producers and self.streaming.producers[0].pauses,
                         what="the local service paused")
        producer = self.streaming.producers[0]
        other = await self.http.get(self.b.tunnel_url(self.client_id, "/download/1000"))
        self.assertEqual(len(await other.content()), 1000)
        await wait_until(lambda: producer._paused, what="the local service held back")
        # Windows and socket buffers, not the body's size: nothing piles
        # up in A, in Redis or in B.
        self.assertLess(producer._sent, 16 * 1024 * 1024)
        reader.transport.stopProducing()
        await reader.done

    async def test_visitor_on_b_hanging_up_ends_the_local_request(self):
        """A visitor on B hanging up mid-download has the local request behind A closed at once."""
        response = await self.agent.request(b"GET", self.url("/download/%d" % (200 * 1024 * 1024)))
        body = _Collect()
        arrived = body.next_data()
        response.deliverBody(body)
        await arrived
        body.transport.stopProducing()
        await wait_until(lambda: self.streaming.lost, what="the local request closed")

    async def test_local_service_dying_aborts_the_visitor_on_b(self):
        """A local service dying mid-body leaves the visitor on B with a broken response, never a complete-looking one."""
        response = await self.agent.request(b"GET", self.url("/die/100000"))
        self.assertEqual(response.length, 200000)
        body = _Collect()
        arrived = body.next_data()
        response.deliverBody(body)
        await arrived
        self.streaming.die()
        reason = await body.done
        self.assertFalse(reason.check(ResponseDone), reason)
        self.assertTrue(reason.check(ResponseFailed, PotentialDataLoss), reason)

    async def test_small_requests_interleave_with_a_large_one(self):
        """Small requests through B are answered while a large download through B is in flight (no head-of-line blocking)."""
        response = await self.agent.request(b"GET", self.url("/download/%d" % (200 * 1024 * 1024)))
        big = _Collect()
        arrived = big.next_data()
        response.deliverBody(big)
        await arrived
        for _ in range(5):
            small = await self.http.get(self.b.tunnel_url(self.client_id, "/download/100"))
            self.assertEqual(len(await small.content()), 100)
        self.assertFalse(big.done.called)
        big.transport.stopProducing()
        await big.done


class CrossInstanceStreamedWebSocketTests(_RedisCluster, TestCase):
    """
    A visitor websocket through B rides a stream relayed by A.
    """

    async def _set_up(self):
        await _RedisCluster._set_up(self)
        self.ws_service = LocalWebSocketService()
        self.ws_url = self.ws_service.start(self)

    async def test_messages_ride_a_relayed_stream(self):
        """Text and binary messages through B echo in order on a stream A relays; closing leaves nothing behind."""
        a, b = await self.two_instances()
        _, client_id = await self.tunnel_on(a, local_url=self.ws_url)
        url = "ws://127.0.0.1:{}/proxy/request/{}/echo".format(b.port, client_id)
        ws = await connect_visitor(self, url)
        self.assertEqual(len(a.proxy.hub.relayed_streams), 1)
        self.assertEqual(len(b.proxy.hub.remote_tunnels), 1)
        self.assertEqual(len(a.proxy.hub.relays), 0)  # no v1 relay
        payload = bytes(range(256)) * 1024
        echoed, is_binary = await ws.echo(payload, is_binary=True)
        self.assertEqual((echoed, is_binary), (payload, True))
        for n in range(20):
            echoed, is_binary = await ws.echo(b"message %d" % n)
            self.assertEqual((echoed, is_binary), (b"message %d" % n, False))
        ws.sendClose(1000)
        await wait_until(lambda: not len(a.proxy.hub.relayed_streams)
                         and not len(b.proxy.hub.remote_tunnels)
                         and not b.proxy.hub.streams,
                         what="the stream gone on both instances")

