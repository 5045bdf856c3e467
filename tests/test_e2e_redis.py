"""
End-to-end tests of several proxy instances sharing tunnels over Redis.

Two L{ProxyService} instances, A and B, run in this process on one
throwaway C{redis-server} (L{tests.redis_server}); a real tunnel client
connects to one of them and forwards to a real local service.  Visitors
talk to either instance over real loopback sockets.
"""

import os
import signal
import sys
import time

import attr
from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, TestCase

from brickchain_proxy.bus import BusUnavailable
from brickchain_proxy.client.service import TunnelClientService
from brickchain_proxy.identity import ClientKey
from brickchain_proxy.messages import RegistrationRequest
from brickchain_proxy.proxy.hub import instance_channel, parse_holder
from tests.redis_server import (
    LoadBalancer,
    ProcessWatcher,
    RedisServer,
    command_calls,
    end_process,
    free_port,
    track_child,
    wait_for_instance,
    wait_for_port,
)
from tests.support import (
    RecordingResource,
    pseudo_random_bytes,
    raw_headers,
    start_client,
    start_local_service,
    start_proxy,
    stop_client,
    visitor,
    wait_until,
)
from tests.support_ws import (
    LocalWebSocketService,
    connect_raw_tunnel,
    connect_visitor,
)

#: How long recovery (a Redis reconnect with backoff, a client reconnect)
#: may take before a test gives up.
RECOVERY = 25.0


@attr.s
class Instance:
    """
    One running proxy instance.
    """

    name = attr.ib()
    proxy = attr.ib()
    port = attr.ib()
    transports = attr.ib()

    @property
    def url(self):
        return "http://127.0.0.1:{}".format(self.port)

    @property
    def instance_id(self):
        return self.proxy.hub.instance_id

    def tunnel_url(self, client_id, path="/"):
        """
        The path-routed URL of C{path} through tunnel C{client_id} on this
        instance.
        """
        return "{}/proxy/request/{}{}".format(self.url, client_id, path)


class _RedisCluster:
    """
    A Redis server and helpers to start proxy instances on it, tunnel
    clients, and send requests.
    """

    timeout = 60

    def setUp(self):
        return defer.ensureDeferred(self._set_up())

    async def _set_up(self):
        self.redis = await RedisServer.for_test(self)
        self.http = visitor(self)
        self.local = RecordingResource()
        self.local_url = start_local_service(self, self.local)

    async def instance(self, name, **proxy_kwargs):
        """
        Start a proxy instance on the shared Redis and wait until it is
        really on the bus (Redis counts its subscription).
        """
        proxy_kwargs.setdefault("rate_limit", (100000, 300.0))
        proxy, port, transports = await start_proxy(
            self, bus_url=self.redis.url, **proxy_kwargs)
        await wait_for_instance(proxy)
        return Instance(name, proxy, port, transports)

    async def two_instances(self, **proxy_kwargs):
        a = await self.instance("A", **proxy_kwargs)
        b = await self.instance("B", **proxy_kwargs)
        return a, b

    async def owner(self, instance, client_id):
        """
        The instance id the directory names for C{client_id}, asked
        through C{instance}'s connection.
        """
        holder = await instance.proxy.backend.directory.lookup(client_id)
        return None if holder is None else parse_holder(holder)[0]

    async def wait_for_owner(self, instance, client_id, owner_id,
                             timeout=RECOVERY):
        deadline = time.monotonic() + timeout
        while True:
            try:
                current = await self.owner(instance, client_id)
            except Exception:
                current = None
            if current == owner_id:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    "directory names {!r} for {}, not {!r}, after {:g} s".format(
                        current, client_id, owner_id, timeout))
            await _sleep(0.02)

    async def tunnel_on(self, instance, local_url=None, proxy_url=None,
                        **client_kwargs):
        """
        Start a tunnel client connected to C{instance} (or to C{proxy_url})
        and wait until it is registered and the directory knows it.

        @return: C{(client, client_id)}.
        """
        client = start_client(self, proxy_url or instance.url,
                              local_url or self.local_url, **client_kwargs)
        registration = await client.when_registered()
        client_id = registration.key_id
        await self.wait_for_owner(instance, client_id, instance.instance_id)
        return client, client_id

    async def fetch(self, url, method="GET", **kwargs):
        """
        Send a request and read the whole answer.

        @return: C{(response, body)}.
        """
        response = await self.http.request(method, url, **kwargs)
        body = await response.content()
        return response, body

    async def get_ok(self, url, **kwargs):
        response, body = await self.fetch(url, **kwargs)
        self.assertEqual(response.code, 200, body)
        return body

    async def poll_until_ok(self, url, timeout=RECOVERY):
        """
        Request C{url} until it answers 200.

        @return: the other status codes seen before.
        """
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            response, body = await self.fetch(url)
            if response.code == 200:
                return seen
            seen.append(response.code)
            if time.monotonic() > deadline:
                raise AssertionError(
                    "{} still answers {} ({!r}) after {:g} s; seen {}".format(
                        url, response.code, body, timeout, sorted(set(seen))))
            await _sleep(0.05)


def not_connected(client_id):
    """
    The body of the 502 for a tunnel no instance holds.
    """
    return "tunnel {} is not connected\n".format(client_id).encode("ascii")


def _sleep(seconds):
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


async def kill_in_process(instance):
    """
    Make C{instance} disappear the way a SIGKILLed process does, without
    running any of its shutdown code: its Redis connections drop first
    (without releasing anything, and never come back), then its listening
    port closes and every connection it had (tunnels, visitors) is aborted.

    Its tunnel connections' C{onClose} still runs in this process and tries
    to release the directory entries, but with the Redis connections already
    gone that fails (L{BusUnavailable}, logged) exactly as if it had never
    been tried: the entries stay, stale, as a dead process leaves them.
    """
    proxy = instance.proxy
    backend = proxy.backend
    for factory in (backend._commands_factory, backend._subscriber_factory):
        factory.stopTrying()
    for connection in (backend._commands, backend._subscriber):
        if connection is not None:
            connection.transport.abortConnection()
    await wait_until(lambda: not backend.connected and not backend.listening,
                     what="instance's Redis connections gone")
    for port in await proxy.when_listening():
        await port.stopListening()
    for transport in instance.transports:
        if not transport.disconnected:
            transport.abortConnection()


class _DeadInstanceFixture(_RedisCluster):
    def flush_failed_releases(self):
        """
        Forget the failures dead A logged when its tunnel connections
        closed: releasing their directory entries failed, Redis being gone
        for it already (see L{kill_in_process}).
        """
        self.flushLoggedErrors(BusUnavailable)


class CrossInstanceHttpTests(_RedisCluster, TestCase):
    """
    HTTP through B reaches a tunnel client connected to A.
    """

    async def test_binary_bodies_cross_instances_byte_exact(self):
        """
        A 300 KB random PUT body through B reaches the service behind A's
        client byte for byte, and a 256 KB binary response comes back the
        same way.
        """
        a, b = await self.two_instances()
        _, client_id = await self.tunnel_on(a)
        body = os.urandom(300 * 1024)

        echoed = await self.get_ok(b.tunnel_url(client_id, "/echo-body"),
                                   method="PUT", data=body)
        [seen] = self.local.requests
        self.assertEqual(seen.body, body)
        self.assertEqual(echoed, body)

        response, down = await self.fetch(
            b.tunnel_url(client_id, "/bytes/262144"))
        self.assertEqual(response.code, 200)
        self.assertEqual(down, pseudo_random_bytes(262144))
        self.assertEqual(raw_headers(response, "Content-Type"),
                         ["application/octet-stream"])

    async def test_query_and_headers_cross_instances(self):
        """
        The raw query and the request headers reach the service through B
        exactly as through A; response headers come back.
        """
        a, b = await self.two_instances()
        _, client_id = await self.tunnel_on(a)
        query = "a=1&b=two%20x&a=3&slash=%2F&e=%C3%A9&flag"
        headers = {"X-Custom": ["custom value"], "Cookie": ["k=v"],
                   "Authorization": ["Bearer t0ken"]}

        for instance in (a, b):
            await self.get_ok(instance.tunnel_url(client_id, "/echo?" + query),
                              headers=headers)
        response, _ = await self.fetch(b.tunnel_url(client_id, "/headers"))

        via_a, via_b = self.local.requests_to(b"/echo")
        self.assertEqual(via_b.uri, b"/echo?" + query.encode("ascii"))
        self.assertEqual(via_b.uri, via_a.uri)
        for name in ("X-Custom", "Cookie", "Authorization"):
            self.assertEqual(via_b.header(name), via_a.header(name))
            self.assertEqual(via_b.header(name), headers[name])
        self.assertEqual(raw_headers(response, "X-Kept"), ["yes"])
        self.assertEqual(raw_headers(response, "Set-Cookie"),
                         ["a=1; Path=/", "b=2; HttpOnly"])

    async def test_unknown_tunnel_through_b_gets_502_at_once(self):
        """
        A tunnel no instance holds gets 502 through B at once: the answer
        says it is not connected (not the 504 of a request_timeout).
        """
        _, b = await self.two_instances()

        unknown = "n" * 52
        response, body = await self.fetch(b.tunnel_url(unknown, "/"))

        self.assertEqual((response.code, body),
                         (502, b"tunnel %s is not connected\n" % unknown.encode()))

    async def test_same_instance_path_never_publishes(self):
        """
        Requests through the instance holding the tunnel never use the bus
        or the directory: A publishes nothing and Redis runs no PUBLISH and
        no GET during 50 requests (the shared rate limiter's script is the
        only Redis traffic on that path).  A request through B does publish
        (the check would see it).
        """
        a, b = await self.two_instances()
        _, client_id = await self.tunnel_on(a)
        published = []
        original = a.proxy.backend.bus.publish

        def counting_publish(channel, payload):
            published.append(channel)
            return original(channel, payload)

        a.proxy.backend.bus.publish = counting_publish
        before = await command_calls(a.proxy.backend, "publish", "get")

        for i in range(50):
            await self.get_ok(a.tunnel_url(client_id, "/echo?i=%d" % (i,)))

        after = await command_calls(a.proxy.backend, "publish", "get")
        self.assertEqual(published, [])
        self.assertEqual(after, before)

        await self.get_ok(b.tunnel_url(client_id, "/echo?via=b"))
        # A's answer to B: the frames of its stream (head, body, end).
        self.assertTrue(published)
        self.assertEqual(set(published), {instance_channel(b.instance_id)})
        crossed = await command_calls(a.proxy.backend, "publish", "get")
        # ... and B's one frame (a GET's head ends its side of the stream).
        self.assertEqual(crossed["publish"] - after["publish"], len(published) + 1)
        self.assertEqual(len(self.local.requests), 51)

    async def test_shared_rate_limit_holds_across_instances(self):
        """
        With rate_limit 5/300 on both instances, 5 requests spread over A
        and B pass; the 6th gets 429 with Retry-After whichever instance it
        goes through.
        """
        a, b = await self.two_instances(rate_limit=(5, 300.0))
        _, client_id = await self.tunnel_on(a)

        for instance in (a, b, a, b, b):
            await self.get_ok(instance.tunnel_url(client_id, "/echo"))
        for instance in (a, b):
            response, body = await self.fetch(
                instance.tunnel_url(client_id, "/echo"))
            self.assertEqual(response.code, 429, instance.name)
            [retry] = raw_headers(response, "Retry-After")
            self.assertTrue(1 <= int(retry) <= 61, retry)

        self.assertEqual(len(self.local.requests), 5)


class FeatureParityTests(_RedisCluster, TestCase):
    """
    A tunnel behaves the same through any instance: the extensions its
    connection negotiated (raw paths, repeated headers, ...) apply through
    B too, and a v1 tunnel gets pure v1 through B as through A.
    """

    async def requests_via_both(self, a, b, client_id):
        path = "/a%20b/c%2Fd"
        headers = {"X-Multi": ["one", "two"], "Cookie": ["a=1", "b=2"]}
        for instance in (a, b):
            await self.get_ok(instance.tunnel_url(client_id, path),
                              headers=headers)
        return self.local.requests

    async def test_extensions_apply_through_b(self):
        """
        For a client that negotiated every extension, the encoded path and
        repeated headers arrive through B exactly as through A: unchanged.
        """
        a, b = await self.two_instances()
        _, client_id = await self.tunnel_on(a)

        via_a, via_b = await self.requests_via_both(a, b, client_id)

        self.assertEqual(via_a.path, b"/a%20b/c%2Fd")
        self.assertEqual(via_b.path, via_a.path)
        self.assertEqual(via_a.header("X-Multi"), ["one", "two"])
        self.assertEqual(via_b.header("X-Multi"), via_a.header("X-Multi"))
        self.assertEqual(via_b.header("Cookie"), via_a.header("Cookie"))

    async def test_v1_tunnel_gets_v1_through_b(self):
        """
        For a tunnel without extensions (A negotiates none, as with a v1
        Go client), a request through B reaches it in the same v1 form as
        through A: decoded path, repeated headers joined.
        """
        a, b = await self.two_instances()
        a.proxy.tunnel_factory.features = frozenset()
        client, client_id = await self.tunnel_on(a)
        self.assertEqual(client.protocol.features, frozenset())

        via_a, via_b = await self.requests_via_both(a, b, client_id)

        self.assertEqual(via_a.path, b"/a%20b/c/d")
        self.assertEqual(via_b.path, via_a.path)
        self.assertEqual(via_a.header("X-Multi"), ["one, two"])
        self.assertEqual(via_b.header("X-Multi"), via_a.header("X-Multi"))
        self.assertEqual(via_b.header("Cookie"), via_a.header("Cookie"))


class CrossInstanceWebSocketTests(_RedisCluster, TestCase):
    """
    Websockets through B reach a tunnel client connected to A.
    """

    async def _set_up(self):
        await _RedisCluster._set_up(self)
        self.ws_service = LocalWebSocketService()
        self.ws_url = self.ws_service.start(self)

    async def ws_tunnel(self):
        a, b = await self.two_instances()
        self.addCleanup(self.assert_nothing_left, a, b)
        _, client_id = await self.tunnel_on(a, local_url=self.ws_url)
        url = "ws://127.0.0.1:{}/proxy/request/{}/echo".format(b.port, client_id)
        return await connect_visitor(self, url)

    def assert_nothing_left(self, *instances):
        """
        Once the visitors are gone no instance keeps a stream, a relay or a
        pending request.
        """

        def empty():
            return all(not i.proxy.hub.streams and not len(i.proxy.hub.pending)
                       and not len(i.proxy.hub.relays)
                       and not len(i.proxy.hub.relayed_streams)
                       and not len(i.proxy.hub.remote_tunnels) for i in instances)

        return wait_until(empty, what="hubs empty")

    async def test_binary_message_echoes_byte_exact(self):
        """
        A 100 KB random binary message through B comes back byte for byte,
        as binary.
        """
        ws = await self.ws_tunnel()
        payload = os.urandom(100 * 1024)

        echoed, is_binary = await ws.echo(payload, is_binary=True)

        self.assertTrue(is_binary)
        self.assertEqual(echoed, payload)

    async def test_subprotocol_and_close_code_cross_instances(self):
        """
        Through B, the visitor gets the subprotocol the local service chose,
        and the visitor's close code reaches the local service.
        """
        a, b = await self.two_instances()
        self.addCleanup(self.assert_nothing_left, a, b)
        _, client_id = await self.tunnel_on(a, local_url=self.ws_url)
        url = "ws://127.0.0.1:{}/proxy/request/{}/record".format(b.port, client_id)

        ws = await connect_visitor(self, url, protocols=["chat", "superchat"])
        self.assertEqual(ws.chosen_protocol, "superchat")
        ws.sendClose(4001, "done")

        [local] = self.ws_service.on("record")
        self.assertEqual(await local.closed, (4001, "done"))

    async def test_v1_tunnel_binary_message_through_b(self):
        """
        For a tunnel without the binary-ws extension, a binary message
        through B is handled as v1 does it (as through A): not base64,
        bytes that are not UTF-8 replaced.
        """
        a, b = await self.two_instances()
        self.addCleanup(self.assert_nothing_left, a, b)
        a.proxy.tunnel_factory.features = frozenset()
        _, client_id = await self.tunnel_on(a, local_url=self.ws_url)
        payload = b"ok \xff\xfe end"
        echoed = []
        for instance in (a, b):
            url = "ws://127.0.0.1:{}/proxy/request/{}/echo".format(
                instance.port, client_id)
            ws = await connect_visitor(self, url)
            echoed.append((await ws.echo(payload, is_binary=True)))

        self.assertEqual(echoed[1], echoed[0])
        self.assertEqual(echoed[0][0], "ok \ufffd\ufffd end".encode("utf-8"))

    async def test_text_messages_echo_in_order(self):
        """
        200 text messages sent back to back through B come back in order.
        """
        ws = await self.ws_tunnel()
        sent = ["message {} ✓".format(i).encode("utf-8") for i in range(200)]

        for payload in sent:
            ws.sendMessage(payload, False)
        received = [await ws.messages.get() for _ in sent]

        self.assertEqual([p for p, _ in received], sent)
        self.assertEqual({binary for _, binary in received}, {False})

    async def test_lost_subscription_closes_websockets_across_instances(self):
        """
        When B's subscriber connection drops, an echo on its way back to B
        may be lost: the visitor's websocket through B is closed (1001) at
        once, not left open waiting for a message that will never come.
        """
        a, b = await self.two_instances()
        self.addCleanup(self.assert_nothing_left, a, b)
        _, client_id = await self.tunnel_on(a, local_url=self.ws_url)
        ws = await connect_visitor(self, "ws://127.0.0.1:{}/proxy/request/{}/echo".format(
            b.port, client_id))
        self.assertEqual((await ws.echo(b"before"))[0], b"before")

        subscriber = b.proxy.backend._subscriber.transport.getHost()
        await b.proxy.backend.command(
            "CLIENT", "KILL", "ADDR", "127.0.0.1:{}".format(subscriber.port))

        code, _ = await ws.closed
        self.assertEqual(code, 1001)


class RedisOutageTests(_RedisCluster, TestCase):
    """
    Redis going away and coming back.
    """

    async def test_redis_restart_mid_test(self):
        """
        While Redis is down, A keeps serving its own tunnel and B answers
        503 at once with a clear message; once Redis is back (empty), A
        claims its tunnel again and B reaches it, without restarting
        anything.
        """
        a, b = await self.two_instances()
        client, client_id = await self.tunnel_on(a)
        await self.get_ok(b.tunnel_url(client_id, "/echo?before"))

        await self.redis.stop()
        await wait_until(lambda: not a.proxy.backend.connected
                         and not b.proxy.backend.connected,
                         what="both instances notice Redis is down")

        for i in range(5):
            await self.get_ok(a.tunnel_url(client_id, "/echo?down=%d" % (i,)))
        response, body = await self.fetch(
            b.tunnel_url(client_id, "/echo?down"))
        self.assertEqual(
            (response.code, body),
            (503, b"the tunnel cannot be reached: the bus between proxy "
                  b"instances is unavailable right now\n"))

        await self.redis.start()
        await self.poll_until_ok(b.tunnel_url(client_id, "/echo?after"))

        await self.get_ok(a.tunnel_url(client_id, "/echo?after"))
        self.assertEqual(await self.owner(b, client_id), a.instance_id)
        self.assertIsNotNone(client.protocol)

    async def test_lost_subscription_recovers(self):
        """
        When only A's subscriber connection is cut (CLIENT KILL), B may
        take A for dead and drop its directory entry; once
        A's subscriber is back, A claims its tunnel again and B reaches it
        within a bounded time -- not only at the next housekeeping round.
        """
        a, b = await self.two_instances()
        _, client_id = await self.tunnel_on(a)
        await self.get_ok(b.tunnel_url(client_id, "/echo?before"))

        subscriber = a.proxy.backend._subscriber.transport.getHost()
        await b.proxy.backend.command(
            "CLIENT", "KILL", "ADDR", "127.0.0.1:{}".format(subscriber.port))
        # Right now A is not listening: to B, PUBLISH reaching nobody means
        # A is gone, so it answers 502 and drops A's entry.
        response, body = await self.fetch(
            b.tunnel_url(client_id, "/echo?during"))
        self.assertEqual(response.code, 502, body)

        await wait_for_instance(a.proxy)
        await self.poll_until_ok(b.tunnel_url(client_id, "/echo?after"),
                                 timeout=5.0)
        self.assertEqual(await self.owner(b, client_id), a.instance_id)


class DeadInstanceTests(_DeadInstanceFixture, TestCase):
    """
    An instance dying without any shutdown.
    """

    async def test_killed_instance_clients_move_to_another(self):
        """
        A dies abruptly (in-process simulation of SIGKILL, see
        L{kill_in_process}).  B answers 502 at once for its tunnel (PUBLISH
        to dead A reaches nobody), and the client -- which connects through
        a load balancer in front of A and B, as in a real deployment --
        reconnects, lands on B, and traffic through B reaches it again.
        """
        a, b = await self.two_instances()
        balancer = LoadBalancer([a.port, b.port])
        lb_url = balancer.start(self)
        for instance in (a, b):
            instance.proxy.set_base(lb_url)
        client = start_client(self, lb_url, self.local_url)
        client_id = (await client.when_registered()).key_id
        await self.wait_for_owner(b, client_id, a.instance_id)
        await self.get_ok(b.tunnel_url(client_id, "/echo?before"))

        await kill_in_process(a)
        self.assertEqual(await self.owner(b, client_id), a.instance_id)

        response, body = await self.fetch(
            b.tunnel_url(client_id, "/echo?dead"))
        self.assertEqual((response.code, body), (502, not_connected(client_id)))

        await self.wait_for_owner(b, client_id, b.instance_id)
        await self.get_ok(b.tunnel_url(client_id, "/echo?after"))
        await self.get_ok(lb_url + "/proxy/request/{}/echo?lb".format(client_id))
        self.assertEqual(
            [r.query for r in self.local.requests],
            [b"before", b"after", b"lb"])
        self.flush_failed_releases()

    async def test_stale_entry_expires_with_its_ttl(self):
        """
        The directory entry a dead instance leaves behind carries a TTL and
        disappears with it, with nobody cleaning up; B then answers 502 at
        once.  (The client keeps retrying dead A: it is connected to A
        directly, without a load balancer.)
        """
        a, b = await self.two_instances()
        a.proxy.backend.directory.ttl = 2
        _, client_id = await self.tunnel_on(a)

        await kill_in_process(a)
        key = b.proxy.backend.prefix + "tunnel:" + client_id
        ttl = int(await b.proxy.backend.command("TTL", key))
        self.assertTrue(0 < ttl <= 2, ttl)

        await self.wait_for_owner(b, client_id, None)

        response, body = await self.fetch(
            b.tunnel_url(client_id, "/echo"))
        self.assertEqual((response.code, body), (502, not_connected(client_id)))
        self.flush_failed_releases()

    async def test_stale_entry_gets_502_at_once_before_it_expires(self):
        """
        Before the stale entry of a dead instance expires, B answers 502
        at once for it (PUBLISH reaches no subscriber), and drops the entry.
        """
        a, b = await self.two_instances()
        _, client_id = await self.tunnel_on(a)
        await kill_in_process(a)
        self.assertEqual(await self.owner(b, client_id), a.instance_id)

        response, body = await self.fetch(
            b.tunnel_url(client_id, "/echo"))

        self.assertEqual((response.code, body), (502, not_connected(client_id)))
        # B dropped it before answering, on the connection it asks on.
        self.assertIsNone(await self.owner(b, client_id))
        self.flush_failed_releases()


class TakeoverTests(_RedisCluster, TestCase):
    """
    The newest registration of a clientID wins, across instances.
    """

    async def test_registration_on_b_closes_the_older_connection_on_a(self):
        """
        A second client with the same key registering on B makes A close
        the first client's connection (1008); traffic through A and B then
        reaches the new client.  The old client is then stopped: left
        running, it would reconnect and take the tunnel back in turn (the
        newest registration always wins).
        """
        a, b = await self.two_instances()
        old, client_id = await self.tunnel_on(a)
        old_connection = old.protocol
        newer_local = RecordingResource()
        newer_url = start_local_service(self, newer_local)

        newer = TunnelClientService(reactor, b.url, newer_url, old._key_path)
        newer.startService()
        self.addCleanup(stop_client, newer)
        self.assertEqual((await newer.when_registered()).key_id, client_id)

        await wait_until(lambda: old_connection.state == old_connection.STATE_CLOSED,
                         what="older connection closed")
        await old.stopService()
        self.assertEqual(old_connection.remoteCloseCode, 1008)
        self.assertNotIn(client_id, a.proxy.hub.local)
        await self.wait_for_owner(a, client_id, b.instance_id)

        for instance in (a, b):
            await self.get_ok(instance.tunnel_url(client_id, "/echo?" + instance.name))
        self.assertEqual([r.query for r in newer_local.requests], [b"A", b"B"])
        self.assertEqual(self.local.requests, [])


class ReplayAcrossInstancesTests(_RedisCluster, TestCase):
    """
    A mandate token registers once across every instance on the Redis:
    replayed on another instance it is refused, and while Redis is
    unreachable new registrations are refused (fail closed) while the
    tunnels held keep working.
    """

    def record_tokens(self):
        tokens = []
        original = ClientKey.sign_mandate_token

        def recording(key, *args, **kwargs):
            token = original(key, *args, **kwargs)
            tokens.append(token)
            return token

        self.patch(ClientKey, "sign_mandate_token", recording)
        return tokens

    async def test_token_used_on_a_is_refused_on_b(self):
        """
        The client's token, replayed on B (which also accepts A's URL), is
        refused as already used; the tunnel stays on A and answers through
        both instances.
        """
        tokens = self.record_tokens()
        a = await self.instance("A")
        b = await self.instance("B", extra_bases=(a.url,))
        client, client_id = await self.tunnel_on(a)
        self.assertEqual(len(tokens), 1)

        attacker = await connect_raw_tunnel(self, b.port)
        attacker.send(RegistrationRequest(mandate_token=tokens[0]))
        await wait_until(lambda: attacker.gone, what="replay refused")

        self.assertEqual(attacker.close_code, 1008)
        self.assertEqual(attacker.messages, [
            b"token already used: sign a new token for every registration"])
        self.assertNotIn(client_id, b.proxy.hub.local)
        self.assertEqual(await self.owner(b, client_id), a.instance_id)
        for instance in (a, b):
            await self.get_ok(instance.tunnel_url(client_id, "/echo?" + instance.name))
        self.assertEqual([r.query for r in self.local.requests], [b"A", b"B"])

    async def test_redis_down_refuses_new_registrations_not_tunnels(self):
        """
        With Redis gone, a new registration is refused saying why, the
        tunnel A holds keeps answering on A; with Redis back, a new client
        registers.
        """
        a = await self.instance("A")
        client, client_id = await self.tunnel_on(a)
        await self.redis.stop()
        await wait_until(lambda: not a.proxy.backend.connected,
                         what="A notices Redis is down")

        attacker = await connect_raw_tunnel(self, a.port)
        attacker.register(ClientKey.generate(), a.url)
        await wait_until(lambda: attacker.gone, what="registration refused")
        self.assertEqual(attacker.close_code, 1008)
        self.assertEqual(attacker.messages, [
            b"cannot check the token for replay: Redis is unreachable; "
            b"try again later"])
        await self.get_ok(a.tunnel_url(client_id, "/echo?down"))

        await self.redis.start()
        await wait_until(lambda: a.proxy.backend.connected, tries=2500,
                         what="A back on Redis")
        newcomer = start_client(self, a.url, self.local_url)
        await newcomer.when_registered()


class RealProcessTests(_RedisCluster, TestCase):
    """
    A proxy instance in its own C{twistd brickproxy} process, SIGKILLed.
    """

    def twistd(self):
        path = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(path):
            raise SkipTest("no twistd next to {}".format(sys.executable))
        return path

    async def spawn_proxy(self, base):
        """
        Run C{twistd -n brickproxy} on a free port, on the shared Redis.

        @return: C{(process, watcher, port)} once it listens.
        """
        port = free_port()
        log_dir = self.mktemp()
        os.makedirs(log_dir)
        log_path = os.path.join(log_dir, "proxy.log")
        args = [
            self.twistd(), "-n", "--pidfile=", "--logfile=" + log_path,
            "brickproxy", "--bus", self.redis.url,
            "--listen", "tcp:{}:interface=127.0.0.1".format(port),
            "--domain", "localhost", "--base", base,
        ]
        watcher = ProcessWatcher()
        process = reactor.spawnProcess(
            watcher, args[0], args, env=dict(os.environ),
            childFDs={0: "w", 1: "r", 2: "r"})
        track_child(process, watcher)
        self.addCleanup(end_process, process, watcher, 5.0, signal.SIGKILL)
        await wait_for_port(port, watcher, "twistd brickproxy", log_path,
                            timeout=30)
        return process, watcher, port

    async def test_sigkilled_process_clients_move_to_another(self):
        """
        A real C{twistd brickproxy} process holds the tunnel (its client
        connects through a load balancer in front of it and B); traffic
        through B reaches it.  After SIGKILL, B answers 502 at once, the
        client reconnects through the load balancer to B, and traffic
        through B reaches it again.
        """
        b = await self.instance("B")
        balancer = LoadBalancer([])
        lb_url = balancer.start(self)
        b.proxy.set_base(lb_url)
        process, watcher, port = await self.spawn_proxy(lb_url)
        balancer.backend_ports[:] = [port, b.port]

        client = start_client(self, lb_url, self.local_url)
        client_id = (await client.when_registered()).key_id
        for _ in range(500):
            owner = await self.owner(b, client_id)
            if owner is not None:
                break
            await _sleep(0.01)
        self.assertNotIn(owner, (None, b.instance_id))
        await self.get_ok(b.tunnel_url(client_id, "/echo?before"))

        await end_process(process, watcher, sig=signal.SIGKILL)
        self.assertEqual(await self.owner(b, client_id), owner)

        response, body = await self.fetch(
            b.tunnel_url(client_id, "/echo?dead"))
        self.assertEqual((response.code, body), (502, not_connected(client_id)))

        await self.wait_for_owner(b, client_id, b.instance_id)
        await self.get_ok(b.tunnel_url(client_id, "/echo?after"))
        self.assertEqual([r.query for r in self.local.requests],
                         [b"before", b"after"])
