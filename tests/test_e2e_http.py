"""
End-to-end tests of tunnelled HTTP: a visitor talks to a real proxy on a
loopback port, the proxy talks to a real tunnel client over a websocket, and
the client talks to a real local service that records what it receives.
"""

import json
import os

from twisted.internet import defer
from twisted.internet.defer import CancelledError
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseNeverReceived

import brickchain_proxy
from brickchain_proxy.features import MESSAGE_FEATURES
from tests.support import (
    RecordingResource,
    close_connections,
    pseudo_random_bytes,
    raw_headers,
    start_local_service,
    start_proxy,
    start_tunnel,
    stop_client,
    unused_local_url,
    visitor,
    wait_until,
)

class _TunnelFixture:
    """
    A recording local service, a visitor, and helpers to start a tunnel to
    the service and send requests through it.
    """

    timeout = 30

    def setUp(self):
        self.local = RecordingResource()
        self.local_url = start_local_service(self, self.local)
        self.http = visitor(self)

    def start_tunnel(self, local_url=None, **kwargs):
        return start_tunnel(self, local_url or self.local_url, **kwargs)

    def via_host(self, tunnel, method, path, headers=None, **kwargs):
        """
        Send a request routed by C{Host: <clientID>.localhost:<port>}.
        """
        headers = dict(headers or {})
        headers.setdefault("Host", [tunnel.host])
        kwargs.setdefault("allow_redirects", False)
        return self.http.request(method, tunnel.host_url(path), headers=headers,
                                 **kwargs)

    def via_path(self, tunnel, method, path, **kwargs):
        """
        Send a request routed by C{/proxy/request/<clientID>/...}.
        """
        kwargs.setdefault("allow_redirects", False)
        return self.http.request(method, tunnel.path_url(path), **kwargs)

    async def fetch(self, d):
        """
        Wait for the response C{d} and its whole body.
        """
        response = await d
        body = await response.content()
        return response, body


class BodyTests(_TunnelFixture, TestCase):
    """
    Bodies cross the tunnel byte for byte, both ways.
    """

    async def test_binary_request_body_reaches_service_byte_exact(self):
        """A 300 KB random binary PUT body reaches the local service byte for byte."""
        tunnel = await self.start_tunnel()
        body = os.urandom(300 * 1024)
        response, echoed = await self.fetch(
            self.via_host(tunnel, "PUT", "/echo-body", data=body)
        )
        self.assertEqual(response.code, 200)
        [seen] = self.local.requests
        self.assertEqual(seen.body, body)
        self.assertEqual(echoed, body)

    async def test_binary_response_body_reaches_visitor_byte_exact(self):
        """A 256 KB pseudo-random binary response reaches the visitor byte for byte."""
        tunnel = await self.start_tunnel()
        response, body = await self.fetch(
            self.via_host(tunnel, "GET", "/bytes/262144")
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(body, pseudo_random_bytes(262144))
        self.assertEqual(raw_headers(response, "Content-Type"),
                         ["application/octet-stream"])


class RequestLineTests(_TunnelFixture, TestCase):
    """
    The path and query reach the local service exactly as the visitor sent them.
    """

    async def test_raw_query_string_reaches_service_unchanged(self):
        """The raw query (repeated keys, %20, %2F, escaped UTF-8) arrives unchanged."""
        tunnel = await self.start_tunnel()
        query = "a=1&b=two%20x&a=3&slash=%2F&e=%C3%A9&lower=%e9%2f&plus=a+b&flag"
        for send in (self.via_host, self.via_path):
            await self.fetch(send(tunnel, "GET", "/echo?" + query))
        self.assertEqual(
            [r.uri for r in self.local.requests],
            [b"/echo?" + query.encode("ascii")] * 2,
        )

    async def test_encoded_path_reaches_service_unchanged(self):
        """A path with %20 and %2F reaches the local service exactly as sent."""
        tunnel = await self.start_tunnel()
        for send in (self.via_host, self.via_path):
            await self.fetch(send(tunnel, "GET", "/a%20b/c%2Fd"))
        self.assertEqual([r.uri for r in self.local.requests],
                         [b"/a%20b/c%2Fd"] * 2)


class HeaderTests(_TunnelFixture, TestCase):
    """
    End-to-end headers are forwarded both ways; hop-by-hop ones are not.
    """

    async def test_request_headers_are_forwarded(self):
        """Custom, Cookie and Authorization request headers reach the local service."""
        tunnel = await self.start_tunnel()
        await self.fetch(self.via_host(tunnel, "GET", "/echo", headers={
            "X-Custom": ["custom value"],
            "Cookie": ["session=abc; theme=dark"],
            "Authorization": ["Bearer token-123"],
        }))
        [seen] = self.local.requests
        self.assertEqual(seen.header("X-Custom"), ["custom value"])
        self.assertEqual(seen.header("Cookie"), ["session=abc; theme=dark"])
        self.assertEqual(seen.header("Authorization"), ["Bearer token-123"])

    async def test_visitor_host_is_replaced_by_forwarded_headers(self):
        """The local service sees its own Host, plus X-Forwarded-For/Proto/Host."""
        tunnel = await self.start_tunnel()
        await self.fetch(self.via_host(tunnel, "GET", "/echo"))
        [seen] = self.local.requests
        self.assertEqual(seen.header("Host"), [self.local_url[len("http://"):]])
        self.assertEqual(seen.header("X-Forwarded-Host"), [tunnel.host])
        self.assertEqual(seen.header("X-Forwarded-For"), ["127.0.0.1"])
        self.assertEqual(seen.header("X-Forwarded-Proto"), ["http"])

    async def test_hop_by_hop_request_headers_are_dropped(self):
        """Hop-by-hop request headers, and those named in Connection, stay at the proxy."""
        tunnel = await self.start_tunnel()
        await self.fetch(self.via_host(tunnel, "GET", "/echo", headers={
            "Connection": ["X-Secret"],
            "X-Secret": ["hidden"],
            "Keep-Alive": ["timeout=5"],
            "Proxy-Authorization": ["Basic cHJveHk6c2VjcmV0"],
            "TE": ["trailers"],
            "X-Visible": ["shown"],
        }))
        [seen] = self.local.requests
        for name in ("X-Secret", "Keep-Alive", "Proxy-Authorization", "TE"):
            self.assertEqual(seen.header(name), [], name)
        self.assertNotIn("x-secret", ",".join(seen.header("Connection")).lower())
        self.assertEqual(seen.header("X-Visible"), ["shown"])

    async def test_hop_by_hop_response_headers_are_dropped(self):
        """Hop-by-hop response headers (Connection, Keep-Alive) never reach the visitor."""
        tunnel = await self.start_tunnel()
        response, _ = await self.fetch(self.via_host(tunnel, "GET", "/headers"))
        self.assertEqual(raw_headers(response, "Keep-Alive"), [])
        self.assertNotIn("x-foo", ",".join(raw_headers(response, "Connection")).lower())
        self.assertEqual(raw_headers(response, "X-Kept"), ["yes"])

    async def test_response_headers_named_in_connection_are_dropped(self):
        """A response header the local service names in Connection never reaches the visitor."""
        tunnel = await self.start_tunnel()
        response, _ = await self.fetch(self.via_host(tunnel, "GET", "/headers"))
        self.assertEqual(raw_headers(response, "X-Foo"), [])

    async def test_multiple_set_cookie_values_survive(self):
        """Two Set-Cookie headers from the local service reach the visitor as two."""
        tunnel = await self.start_tunnel()
        response, _ = await self.fetch(self.via_host(tunnel, "GET", "/headers"))
        self.assertEqual(raw_headers(response, "Set-Cookie"),
                         ["a=1; Path=/", "b=2; HttpOnly"])


class StatusAndMethodTests(_TunnelFixture, TestCase):
    """
    Every method reaches the local service and every status comes back.
    """

    async def test_status_codes_pass_through(self):
        """201, 404 and 500 from the local service reach the visitor with their bodies."""
        tunnel = await self.start_tunnel()
        for code in (201, 404, 500):
            response, body = await self.fetch(
                self.via_host(tunnel, "GET", "/status/%d" % (code,))
            )
            self.assertEqual((response.code, body),
                             (code, b"status %d\n" % (code,)))

    async def test_no_content_passes_through_without_body(self):
        """204 reaches the visitor with no body and no Content-Length."""
        tunnel = await self.start_tunnel()
        response, body = await self.fetch(self.via_host(tunnel, "GET", "/status/204"))
        self.assertEqual((response.code, body), (204, b""))
        self.assertEqual(raw_headers(response, "Content-Length"), [])

    async def test_redirect_passes_through_unfollowed(self):
        """A 301 reaches the visitor with its Location; nobody follows it on the way."""
        tunnel = await self.start_tunnel()
        response, _ = await self.fetch(self.via_host(tunnel, "GET", "/status/301"))
        self.assertEqual(response.code, 301)
        self.assertEqual(raw_headers(response, "Location"), ["/elsewhere"])
        self.assertEqual([r.uri for r in self.local.requests], [b"/status/301"])

    async def test_every_method_is_forwarded(self):
        """GET POST PUT PATCH DELETE OPTIONS PROPFIND reach the service with their bodies."""
        tunnel = await self.start_tunnel()
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"]
        with_body = {"POST", "PUT", "PATCH", "PROPFIND"}
        for method in methods:
            data = method.encode("ascii") + b" body" if method in with_body else None
            response, body = await self.fetch(
                self.via_host(tunnel, method, "/echo-body", data=data)
            )
            self.assertEqual((method, response.code, body),
                             (method, 200, data or b""))
        self.assertEqual(
            [(r.method, r.body) for r in self.local.requests],
            [(m.encode("ascii"), m.encode("ascii") + b" body" if m in with_body else b"")
             for m in methods],
        )

    async def test_head_keeps_content_length_without_body(self):
        """HEAD is forwarded; the visitor gets the service's Content-Length and no body."""
        tunnel = await self.start_tunnel()
        response, body = await self.fetch(self.via_host(tunnel, "HEAD", "/bytes/1000"))
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"")
        self.assertEqual(raw_headers(response, "Content-Length"), ["1000"])
        self.assertEqual([r.method for r in self.local.requests], [b"HEAD"])


class RoutingTests(_TunnelFixture, TestCase):
    """
    Requests find their tunnel by path or by Host.
    """

    async def test_path_routing_strips_the_tunnel_prefix(self):
        """/proxy/request/<clientID>/some/where reaches the service as /some/where."""
        tunnel = await self.start_tunnel()
        response, _ = await self.fetch(self.via_path(tunnel, "GET", "/some/where?x=1"))
        self.assertEqual(response.code, 200)
        self.assertEqual([r.uri for r in self.local.requests], [b"/some/where?x=1"])

    async def test_host_routing_ignores_case_and_port(self):
        """Host <CLIENTID>.LOCALHOST:<port> routes to the tunnel."""
        tunnel = await self.start_tunnel()
        host = "{}.LOCALHOST:{}".format(tunnel.client_id.upper(), tunnel.port)
        response, _ = await self.fetch(
            self.via_host(tunnel, "GET", "/echo", headers={"Host": [host]})
        )
        self.assertEqual(response.code, 200)
        self.assertEqual([r.uri for r in self.local.requests], [b"/echo"])

    async def test_proxy_root_describes_itself(self):
        """GET / on the proxy itself answers JSON with the name and version."""
        tunnel = await self.start_tunnel()
        response, body = await self.fetch(self.http.get(tunnel.base_url + "/"))
        self.assertEqual(response.code, 200)
        info = json.loads(body)
        self.assertEqual(info["name"], "brickchain-proxy")
        self.assertEqual(info["version"], brickchain_proxy.__version__)


class ErrorStatusTests(_TunnelFixture, TestCase):
    """
    When a request cannot be answered faithfully, the visitor gets the documented status.
    (The 504 of a tunnel that does not answer within request_timeout is tested on a
    Clock, in L{tests.test_public}.)
    """

    async def test_unknown_tunnel_gets_502_at_once(self):
        """A request for a tunnel nobody holds gets 502 naming it, not the 504 of its request_timeout, by path or by host."""
        tunnel = await self.start_tunnel(request_timeout=20)
        unknown = "a" * 52
        by_path = await self.fetch(self.http.get(
            "{}/proxy/request/{}/echo".format(tunnel.base_url, unknown)))
        by_host = await self.fetch(self.http.get(
            tunnel.base_url + "/echo",
            headers={"Host": ["{}.localhost:{}".format(unknown, tunnel.port)]}))
        for response, body in (by_path, by_host):
            self.assertEqual(
                (response.code, body),
                (502, "tunnel {} is not connected\n".format(unknown).encode("ascii")))
        self.assertEqual(self.local.requests, [])

    async def test_request_body_over_limit_gets_413_without_reaching_service(self):
        """Through a client without streams, a body over max_body gets 413 unseen by the service; one at the limit passes."""
        tunnel = await self.start_tunnel(
            max_body=1000, client_kwargs={"features": MESSAGE_FEATURES})
        too_big, _ = await self.fetch(
            self.via_host(tunnel, "POST", "/echo-body", data=b"x" * 1001))
        self.assertEqual(too_big.code, 413)
        self.assertEqual(self.local.requests, [])
        at_limit, body = await self.fetch(
            self.via_host(tunnel, "POST", "/echo-body", data=b"y" * 1000))
        self.assertEqual((at_limit.code, body), (200, b"y" * 1000))

    async def test_response_over_proxy_limit_gets_502(self):
        """Through a client without streams, a response body over the proxy's max_body (the client allows it) gets 502."""
        tunnel = await self.start_tunnel(
            max_body=1000, client_kwargs={"max_body": 1000000,
                                          "features": MESSAGE_FEATURES})
        response, body = await self.fetch(self.via_host(tunnel, "GET", "/big/5000"))
        self.assertEqual(response.code, 502)
        self.assertIn(b"limit", body)
        self.assertEqual(len(self.local.requests_to(b"/big/5000")), 1)

    async def test_local_service_down_gets_502_with_reason(self):
        """When nothing listens at the local URL the visitor gets 502 saying so."""
        tunnel = await self.start_tunnel(local_url=unused_local_url())
        response, body = await self.fetch(self.via_host(tunnel, "GET", "/echo"))
        self.assertEqual(response.code, 502)
        self.assertIn(b"local service", body)

    async def test_rate_limit_gets_429_with_retry_after(self):
        """Past the tunnel's burst allowance a request gets 429 and a Retry-After."""
        tunnel = await self.start_tunnel(rate_limit=(3, 300))
        codes = []
        for _ in range(4):
            response, _ = await self.fetch(self.via_host(tunnel, "GET", "/echo"))
            codes.append(response.code)
        self.assertEqual(codes, [200, 200, 200, 429])
        [retry_after] = raw_headers(response, "Retry-After")
        self.assertTrue(0 < int(retry_after) <= 300, retry_after)
        self.assertEqual(len(self.local.requests), 3)


class LifecycleTests(_TunnelFixture, TestCase):
    """
    Requests in flight when connections come and go are answered or
    forgotten, never left behind; many at once do not mix up.
    """

    async def test_dropped_tunnel_fails_pending_request_with_502_at_once(self):
        """If the tunnel connection drops while a request waits, the visitor gets 502 saying so, not the 504 of its request_timeout."""
        tunnel = await self.start_tunnel(request_timeout=20)
        arrived = self.local.wait_for_request(b"/slow")
        pending = self.via_host(tunnel, "GET", "/slow")
        await arrived
        tunnel.client.protocol.dropConnection(abort=True)
        response, body = await self.fetch(pending)
        self.assertEqual(
            (response.code, body),
            (502, b"the tunnel's connection was lost before it answered\n"))
        self.assertEqual(len(tunnel.proxy.hub.pending), 0)

    async def test_visitor_hang_up_clears_pending_request(self):
        """When the visitor hangs up, the proxy forgets the request it was waiting on."""
        tunnel = await self.start_tunnel(request_timeout=20)
        arrived = self.local.wait_for_request(b"/slow")
        pending = self.via_host(tunnel, "GET", "/slow")
        await arrived
        self.assertEqual(tunnel.proxy.public.in_flight_total(), 1)
        pending.cancel()
        with self.assertRaises(ResponseNeverReceived) as raised:
            await pending
        self.assertTrue(raised.exception.reasons[0].check(CancelledError))
        await wait_until(lambda: tunnel.proxy.public.in_flight_total() == 0
                         and len(tunnel.proxy.hub.pending) == 0,
                         what="pending request forgotten")

    async def test_concurrent_requests_do_not_cross(self):
        """200 concurrent requests each get their own answer; nothing stays pending."""
        tunnel = await self.start_tunnel()
        requests = []
        for i in range(200):
            if i % 2:
                expected = pseudo_random_bytes(1000 + i)
                d = self.via_host(tunnel, "GET", "/bytes/%d" % (1000 + i,))
            else:
                expected = b"body number %d " % (i,) * (i + 1)
                d = self.via_path(tunnel, "POST", "/echo-body", data=expected)
            requests.append((expected, defer.ensureDeferred(self.fetch(d))))
        results = await defer.gatherResults([d for _, d in requests],
                                            consumeErrors=True)
        for (expected, _), (response, body) in zip(requests, results):
            self.assertEqual(response.code, 200)
            self.assertEqual(body, expected)
        self.assertEqual(len(self.local.requests), 200)
        self.assertEqual(len(tunnel.proxy.hub.pending), 0)

    async def test_client_reregisters_same_hostname_after_proxy_restart(self):
        """After a proxy restart on the same port the client re-registers its hostname."""
        tunnel = await self.start_tunnel()
        hostname = tunnel.client.registration.hostname
        await tunnel.proxy.stopService()
        await close_connections(tunnel.proxy_transports)
        await wait_until(lambda: tunnel.client.protocol is None,
                         what="client noticed the proxy is gone")
        await start_proxy(self, port=tunnel.port)
        # Stop the client before the new proxy (cleanups run last-in first-out).
        self.addCleanup(stop_client, tunnel.client)
        registration = await tunnel.client.when_registered()
        self.assertEqual(registration.hostname, hostname)
        response, _ = await self.fetch(self.via_host(tunnel, "GET", "/echo"))
        self.assertEqual(response.code, 200)
        self.assertEqual([r.uri for r in self.local.requests], [b"/echo"])
