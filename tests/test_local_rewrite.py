"""
C{--local-header} and C{--local-host}: what the operator adds to every
request and websocket the client sends to the local service, over both
tunnel paths (streams, and the v1 documents), against real loopback
services.
"""

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from brickchain_proxy.client.rewrite import parse_local_header
from brickchain_proxy.features import MESSAGE_FEATURES
from tests.support import RecordingResource, start_local_service, start_tunnel, visitor
from tests.support_ws import LocalWebSocketService, connect_visitor

SECRET = ("X-HA-Access", "s3cret")


class ParseTests(SynchronousTestCase):
    def test_name_and_value(self):
        """'Name: value' gives the pair, spaces trimmed."""
        self.assertEqual(parse_local_header("X-HA-Access:  abc def "), ("X-HA-Access", "abc def"))

    def test_malformed_or_forbidden_headers_are_refused(self):
        """No colon, a bad name, a line break, or a framing header: refused with a reason."""
        for text in ("no colon", ": value", "Bad Name: x", "X: a\r\nY: b",
                     "Host: elsewhere", "Content-Length: 3"):
            self.assertRaises(ValueError, parse_local_header, text)


class RewriteTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def check_http(self, features):
        local = RecordingResource()
        client_kwargs = {"local_headers": [SECRET], "local_host": "ha.local"}
        if features is not None:
            client_kwargs["features"] = features
        tunnel = yield start_tunnel(self, start_local_service(self, local),
                                    client_kwargs=client_kwargs)
        response = yield visitor(self).get(
            tunnel.path_url("/echo"), headers={"X-HA-Access": ["from the visitor"]})
        yield response.content()
        [seen] = local.requests
        self.assertEqual(seen.header("X-HA-Access"), ["s3cret"])
        self.assertEqual(seen.header("Host"), ["ha.local"])

    def test_http_on_streams_gets_the_header_and_host(self):
        """On streams, the local service sees the operator's header (replacing the visitor's) and Host."""
        return self.check_http(None)

    def test_http_through_v1_messages_gets_the_header_and_host(self):
        """Through v1 documents, the local service sees the operator's header and Host too."""
        return self.check_http(MESSAGE_FEATURES)

    @defer.inlineCallbacks
    def test_websocket_handshake_gets_the_header_and_host(self):
        """A local websocket's handshake carries the operator's header once and the Host."""
        local = LocalWebSocketService()
        local_url = local.start(self)
        tunnel = yield start_tunnel(self, local_url, client_kwargs={
            "local_headers": [SECRET], "local_host": "ha.local"})
        url = "ws://127.0.0.1:{}/proxy/request/{}/record".format(tunnel.port, tunnel.client_id)
        yield defer.ensureDeferred(
            connect_visitor(self, url, headers={"X-HA-Access": "from the visitor"}))
        [connection] = local.connections
        self.assertEqual(connection.headers["x-ha-access"], "s3cret")
        self.assertTrue(connection.headers["host"].startswith("ha.local:"),
                        connection.headers["host"])
