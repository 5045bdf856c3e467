"""
An https/wss local service (C{--local https://...}), end to end: a real
proxy and client on loopback, and a twisted.web (or Autobahn) local service
serving TLS with a throwaway authority's certificate.

The client verifies the local service's certificate and the --local URL's
name (or IP address) with service-identity, against C{--local-ca-cert}; a
refused certificate is a 502 with the reason, for buffered (v1) requests,
streamed requests and websockets alike.
"""

import os

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from brickchain_proxy.client import tap as client_tap
from brickchain_proxy.features import MESSAGE_FEATURES, SUPPORTED
from brickchain_proxy.proxy import tap as proxy_tap
from tests.support import (
    RecordingResource,
    start_local_service,
    start_tunnel,
    visitor,
    wait_until,
)
from tests.support_ws import LocalWebSocketService, connect_visitor, raw_upgrade
from tests.tls_support import write_tls_files

#: The start of every 502 for a refused local certificate.
REFUSED = "the local service's TLS certificate was refused"
#: What the client logs then.
LOGGED = "TLS verification of the local service failed"


class _LocalTLSFixture:
    """
    Certificates, an https local service and a tunnel to it.
    """

    timeout = 60
    #: the features the client offers: buffered or streamed
    features = SUPPORTED

    def setUp(self):
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def tls_files(self, dns_names=("localhost",), ip_addresses=("127.0.0.1",)):
        return write_tls_files(self.mktemp(), list(dns_names), ip_addresses)

    def https_service(self, files):
        """
        A recording local service serving HTTPS with C{files}.
        """
        self.local = RecordingResource()
        return start_local_service(self, self.local, tls=files.server_options())

    async def tunnel(self, local_url, **client_kwargs):
        client_kwargs.setdefault("features", self.features)
        tunnel = await start_tunnel(self, local_url, client_kwargs=client_kwargs)
        self.assertEqual("streams" in tunnel.client.protocol.features,
                         "streams" in self.features)
        return tunnel

    async def get(self, tunnel, path="/echo"):
        response = await visitor(self).get("http://127.0.0.1:{}/proxy/request/{}{}"
                                           .format(tunnel.port, tunnel.client_id, path))
        return response, (await response.content()).decode("utf-8")

    def logged(self):
        return [formatEvent(e) for e in self.log
                if e.get("log_format", "").startswith(LOGGED)]

    async def assert_refused(self, tunnel, *fragments):
        """
        A request through C{tunnel} is answered 502 saying the local
        certificate was refused and why; the client logs it too.
        """
        response, text = await self.get(tunnel)
        self.assertEqual(response.code, 502, text)
        self.assertIn(REFUSED, text)
        for fragment in fragments:
            self.assertIn(fragment, text)
        self.assertIn("--local-ca-cert", text)
        self.assertEqual(self.local.requests, [])
        (line,) = self.logged()
        for fragment in fragments:
            self.assertIn(fragment, line)


class _HTTPTests(_LocalTLSFixture):
    """
    HTTP requests to an https local service.
    """

    async def test_the_right_authority_is_forwarded_to(self):
        """
        With C{--local-ca-cert} naming the service's authority, requests
        reach it (an IP address URL checked against its IP addresses).
        """
        files = self.tls_files()
        tunnel = await self.tunnel(self.https_service(files), local_ca_cert=files.ca)
        response, text = await self.get(tunnel)
        self.assertEqual(response.code, 200, text)
        self.assertEqual(len(self.local.requests_to(b"/echo")), 1)
        self.assertEqual(self.logged(), [])

    async def test_a_host_name_is_checked_against_the_dns_names(self):
        """
        C{https://localhost:<port>} is verified against the certificate's
        DNS names.
        """
        files = self.tls_files(ip_addresses=())
        url = self.https_service(files).replace("127.0.0.1", "localhost")
        tunnel = await self.tunnel(url, local_ca_cert=files.ca)
        response, text = await self.get(tunnel)
        self.assertEqual(response.code, 200, text)

    async def test_another_authority_is_a_502_saying_so(self):
        """
        A C{--local-ca-cert} of another authority: 502, not trusted.
        """
        files = self.tls_files()
        other = self.tls_files()
        tunnel = await self.tunnel(self.https_service(files), local_ca_cert=other.ca)
        await self.assert_refused(tunnel, "not trusted")

    async def test_the_system_trust_store_does_not_know_a_private_authority(self):
        """
        Without C{--local-ca-cert}: 502, not trusted.
        """
        files = self.tls_files()
        tunnel = await self.tunnel(self.https_service(files))
        await self.assert_refused(tunnel, "not trusted")

    async def test_a_certificate_for_another_name_is_a_502_saying_so(self):
        """
        A certificate for C{service.test} does not identify 127.0.0.1.
        """
        files = self.tls_files(dns_names=("service.test",), ip_addresses=())
        tunnel = await self.tunnel(self.https_service(files), local_ca_cert=files.ca)
        await self.assert_refused(tunnel, "certificate not valid for 127.0.0.1")

    async def test_a_malformed_wildcard_is_a_502(self):
        """
        A certificate also naming C{*.localhost}, which Twisted's own check
        lets through, is refused.
        """
        files = self.tls_files(dns_names=("*.localhost", "localhost"), ip_addresses=())
        url = self.https_service(files).replace("127.0.0.1", "localhost")
        tunnel = await self.tunnel(url, local_ca_cert=files.ca)
        await self.assert_refused(tunnel, "certificate not valid for localhost")

    async def test_local_insecure_forwards_to_any_certificate_and_warns(self):
        """
        C{--local-insecure} verifies nothing (another name, an unknown
        authority) and says so when the client starts.
        """
        files = self.tls_files(dns_names=("service.test",), ip_addresses=())
        tunnel = await self.tunnel(self.https_service(files), local_insecure=True)
        response, text = await self.get(tunnel)
        self.assertEqual(response.code, 200, text)
        warnings = [formatEvent(e) for e in self.log
                    if e.get("log_format", "").startswith("--local-insecure")]
        self.assertEqual(len(warnings), 1)
        self.assertIn("is not verified", warnings[0])


class BufferedHTTPTests(_HTTPTests, TestCase):
    """
    Buffered (v1) requests: the forwarder's Agent.
    """

    features = MESSAGE_FEATURES


class StreamedHTTPTests(_HTTPTests, TestCase):
    """
    Streamed requests: the same Agent, answered on the stream.
    """


class _WebSocketTests(_LocalTLSFixture):
    """
    Websockets to a wss local service.
    """

    def wss_service(self, files):
        self.local_ws = LocalWebSocketService()
        return self.local_ws.start(self, tls=files.server_options())

    async def test_the_right_authority_is_connected_to(self):
        """
        A visitor's websocket reaches the wss local service and is echoed.
        """
        files = self.tls_files()
        tunnel = await self.tunnel(self.wss_service(files), local_ca_cert=files.ca)
        ws = await connect_visitor(self, "ws://127.0.0.1:{}/proxy/request/{}/echo"
                                   .format(tunnel.port, tunnel.client_id))
        self.assertEqual(await ws.echo(b"over wss"), (b"over wss", False))
        ws.sendClose(1000)
        await ws.closed
        await wait_until(lambda: not tunnel.proxy.hub.streams, what="stream removed")

    async def assert_upgrade_refused(self, tunnel, *fragments):
        response = await raw_upgrade(
            tunnel.port, "/proxy/request/{}/echo".format(tunnel.client_id))
        self.assertEqual(response.status, 502, response.text)
        self.assertIn(REFUSED, response.text)
        for fragment in fragments + ("--local-ca-cert",):
            self.assertIn(fragment, response.text)
        self.assertEqual(self.local_ws.connections, [])
        (line,) = await wait_until(self.logged, what="the refusal logged")
        for fragment in fragments:
            self.assertIn(fragment, line)
        await wait_until(lambda: not tunnel.proxy.hub.streams, what="no stream left")

    async def test_another_authority_is_a_502_saying_so(self):
        """
        A wss service whose authority is not trusted: the upgrade is
        answered 502 with the reason.
        """
        files = self.tls_files()
        other = self.tls_files()
        tunnel = await self.tunnel(self.wss_service(files), local_ca_cert=other.ca)
        await self.assert_upgrade_refused(tunnel, "not trusted")

    async def test_a_certificate_for_another_name_is_a_502_saying_so(self):
        """
        A wss service whose certificate names another host: 502.
        """
        files = self.tls_files(dns_names=("service.test",), ip_addresses=())
        tunnel = await self.tunnel(self.wss_service(files), local_ca_cert=files.ca)
        await self.assert_upgrade_refused(tunnel, "certificate not valid for 127.0.0.1")


class BufferedWebSocketTests(_WebSocketTests, TestCase):
    """
    v1 websockets (ws-request / ws-response).
    """

    features = MESSAGE_FEATURES


class StreamedWebSocketTests(_WebSocketTests, TestCase):
    """
    Websockets on streams.
    """


class OptionTests(SynchronousTestCase):
    """
    The command-line options for private authorities.
    """

    def ca_file(self):
        return write_tls_files(self.mktemp(), ["localhost"]).ca

    def test_local_ca_cert_is_checked_and_passed_on(self):
        """
        C{--local-ca-cert} must name a PEM certificate; it reaches the
        client's local TLS policy.
        """
        ca = self.ca_file()
        config = client_tap.Options()
        config.parseOptions(["--local", "https://127.0.0.1:8443", "--local-ca-cert", ca])
        client = client_tap.makeService(config)
        self.assertEqual(client.local_tls.ca_cert, ca)
        self.assertIs(client.forwarder.tls, client.local_tls)
        empty = os.path.join(os.path.dirname(ca), "empty.pem")
        open(empty, "w").close()
        for path, message in [(empty, "no certificate"),
                              (empty + ".missing", "No such file")]:
            with self.assertRaises(usage.UsageError) as caught:
                client_tap.Options().parseOptions(["--local-ca-cert", path])
            self.assertIn(message, str(caught.exception))

    def test_local_insecure_excludes_a_ca_certificate(self):
        """
        C{--local-insecure} with C{--local-ca-cert} is a contradiction.
        """
        with self.assertRaises(usage.UsageError) as caught:
            client_tap.Options().parseOptions(
                ["--local-insecure", "--local-ca-cert", self.ca_file()])
        self.assertIn("exclude each other", str(caught.exception))
        config = client_tap.Options()
        config.parseOptions(["--local-insecure"])
        self.assertTrue(client_tap.makeService(config).local_tls.insecure)

    def test_bus_ca_cert_needs_rediss_and_a_certificate(self):
        """
        C{--bus-ca-cert} only goes with a C{rediss://} bus, must name a PEM
        certificate, and reaches the Redis backend.
        """
        ca = self.ca_file()
        with self.assertRaises(usage.UsageError) as caught:
            proxy_tap.Options().parseOptions(["--bus-ca-cert", ca])
        self.assertIn("rediss://", str(caught.exception))
        with self.assertRaises(usage.UsageError):
            proxy_tap.Options().parseOptions(
                ["--bus", "rediss://localhost", "--bus-ca-cert", ca + ".missing"])
        config = proxy_tap.Options()
        config.parseOptions(["--bus", "rediss://localhost", "--bus-ca-cert", ca])
        proxy = proxy_tap.makeService(config)
        self.assertEqual(proxy.backend.tls.ca_cert, ca)
