"""
End-to-end tests of C{--metrics}: a real proxy and a real tunnel client on
loopback, each serving its metrics on an endpoint of its own; requests and
a visitor websocket go through the tunnel to a real local service, then
each metrics endpoint is scraped with a real HTTP client and the exposition
parsed with Prometheus' own parser.
"""

import io

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody

from brickchain_proxy.features import MESSAGE_FEATURES
from tests.support import RecordingResource, start_local_service, start_tunnel
from tests.support_ws import LocalWebSocketService, connect_visitor

#: Where each service serves its metrics: loopback, a free port.
METRICS = "tcp:0:interface=127.0.0.1"
#: A tunnel nobody holds.
UNKNOWN = "a" * 52


def parse(text):
    """
    The samples of an exposition, as C{{(name, frozenset(labels)): value}}.
    """
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples}


def value(samples, name, **labels):
    """
    The value of sample C{name} with exactly C{labels} (L{None}: absent).
    """
    return samples.get((name, frozenset(labels.items())))


class _MetricsFixture:
    """
    A tunnel whose proxy and client both serve metrics, and a plain HTTP
    client to visit it and scrape them.
    """

    timeout = 60
    #: the features the client offers (L{None}: all, streams included)
    features = None

    def setUp(self):
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)

    async def start_tunnel(self, local_url):
        client_kwargs = {"metrics": METRICS}
        if self.features is not None:
            client_kwargs["features"] = self.features
        tunnel = await start_tunnel(self, local_url, client_kwargs=client_kwargs,
                                    metrics=METRICS)
        proxy_port = await tunnel.proxy.metrics_listener.when_listening()
        client_port = await tunnel.client.metrics_listener.when_listening()
        self.proxy_metrics = "http://127.0.0.1:{}/metrics".format(
            proxy_port.getHost().port)
        self.client_metrics = "http://127.0.0.1:{}/metrics".format(
            client_port.getHost().port)
        return tunnel

    async def get(self, url, method=b"GET", body=None):
        """
        C{(status, headers, body)} of one request to C{url}.
        """
        producer = None if body is None else FileBodyProducer(io.BytesIO(body))
        response = await self.agent.request(method, url.encode("ascii"),
                                            bodyProducer=producer)
        content = await readBody(response)
        return response.code, response.headers, content

    async def scrape(self, url):
        """
        The samples at C{url}, checked to be Prometheus' text format.
        """
        status, headers, body = await self.get(url)
        self.assertEqual(status, 200)
        [content_type] = headers.getRawHeaders(b"content-type")
        self.assertTrue(content_type.startswith(b"text/plain; version="), content_type)
        return parse(body.decode("utf-8"))


class _HttpMetricsTests(_MetricsFixture):
    """
    Requests through the tunnel -- answered, and one for a tunnel nobody
    holds -- show up in both services' metrics with their real counts.
    """

    async def test_requests_show_in_both_services_metrics(self):
        """Four answered requests and one 502 are counted, timed and sized on the proxy; the four on the client."""
        local = RecordingResource()
        tunnel = await self.start_tunnel(start_local_service(self, local))
        streams = tunnel.proxy.hub.local[tunnel.client_id].streams
        self.assertEqual(streams is not None, self.features is None)
        upload = b"u" * 3000

        answered = []
        for path in ["/echo", "/bytes/2000", "/status/201"]:
            answered.append(await self.get(tunnel.path_url(path)))
        answered.append(await self.get(tunnel.path_url("/echo-body"), b"POST", upload))
        refused = await self.get(
            "{}/proxy/request/{}/".format(tunnel.base_url, UNKNOWN))

        self.assertEqual([status for status, _, _ in answered], [200, 200, 201, 200])
        self.assertEqual(answered[-1][2], upload)
        self.assertEqual(refused[0], 502)
        tunnel_bodies = sum(len(body) for _, _, body in answered)

        proxy = await self.scrape(self.proxy_metrics)
        self.assertEqual(value(proxy, "brickproxy_tunnels"), 1)
        self.assertEqual(value(proxy, "brickproxy_websockets"), 0)
        self.assertEqual(value(proxy, "brickproxy_http_requests_in_flight"), 0)
        self.assertEqual(value(proxy, "brickproxy_http_requests_total", code="200"), 3)
        self.assertEqual(value(proxy, "brickproxy_http_requests_total", code="201"), 1)
        self.assertEqual(value(proxy, "brickproxy_http_requests_total", code="502"), 1)
        self.assertEqual(
            value(proxy, "brickproxy_http_request_duration_seconds_count"), 5)
        self.assertEqual(
            value(proxy, "brickproxy_http_request_duration_seconds_bucket", le="+Inf"), 5)
        self.assertEqual(value(proxy, "brickproxy_http_request_bytes_total"), len(upload))
        self.assertEqual(value(proxy, "brickproxy_http_response_bytes_total"),
                         tunnel_bodies + len(refused[2]))
        self.assertEqual(value(proxy, "brickproxy_registrations_total",
                               result="accepted", reason=""), 1)
        self.assertEqual(value(proxy, "brickproxy_registrations_total",
                               result="refused", reason="expired"), 0)
        self.assertEqual(value(proxy, "brickproxy_bus_publish_failures_total"), 0)

        client = await self.scrape(self.client_metrics)
        self.assertEqual(value(client, "brickclient_connected"), 1)
        self.assertEqual(value(client, "brickclient_websockets"), 0)
        self.assertEqual(value(client, "brickclient_registrations_total",
                               result="accepted", reason=""), 1)
        self.assertEqual(value(client, "brickclient_reconnects_total"), 0)
        self.assertEqual(value(client, "brickclient_local_requests_total", code="200"), 3)
        self.assertEqual(value(client, "brickclient_local_requests_total", code="201"), 1)
        self.assertIsNone(value(client, "brickclient_local_requests_total", code="502"))
        self.assertEqual(
            value(client, "brickclient_local_request_duration_seconds_count"), 4)
        self.assertEqual(value(client, "brickclient_request_bytes_total"), len(upload))
        self.assertEqual(value(client, "brickclient_response_bytes_total"), tunnel_bodies)

    async def test_metrics_are_not_served_on_the_public_listener(self):
        """GET /metrics on the proxy's public port is its plain 404, not the exposition."""
        local = RecordingResource()
        tunnel = await self.start_tunnel(start_local_service(self, local))

        status, headers, body = await self.get(tunnel.base_url + "/metrics")

        self.assertEqual(status, 404)
        self.assertNotIn(b"brickproxy_", body)
        self.assertEqual(headers.getRawHeaders(b"content-type"),
                         [b"text/plain; charset=utf-8"])


class StreamedHttpMetricsTests(_HttpMetricsTests, TestCase):
    """
    With our client, which negotiates streams: the streamed paths count.
    """


class BufferedHttpMetricsTests(_HttpMetricsTests, TestCase):
    """
    With a client that speaks only the message extensions (no streams):
    the buffered paths count.
    """

    features = MESSAGE_FEATURES


class WebSocketMetricsTests(_MetricsFixture, TestCase):
    """
    An open visitor websocket shows in both gauges.
    """

    async def test_open_websocket_shows_in_both_gauges(self):
        """While a visitor websocket is open, each side's websocket gauge is 1."""
        local = LocalWebSocketService()
        tunnel = await self.start_tunnel(local.start(self))
        visitor = await connect_visitor(self, "ws://127.0.0.1:{}/proxy/request/{}/echo"
                                        .format(tunnel.port, tunnel.client_id))
        self.assertEqual(await visitor.echo(b"hello"), (b"hello", False))

        proxy = await self.scrape(self.proxy_metrics)
        client = await self.scrape(self.client_metrics)

        self.assertEqual(value(proxy, "brickproxy_websockets"), 1)
        self.assertEqual(value(client, "brickclient_websockets"), 1)
        visitor.sendClose(1000)
        await visitor.closed
