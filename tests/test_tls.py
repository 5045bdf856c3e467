"""
End-to-end tests over TLS: the proxy listens on a Twisted C{ssl:} endpoint
with a certificate from a private authority, the client connects with
C{--proxy https://...} and C{--ca-cert}, and visitors use HTTPS and wss.

The tunnels' domain is C{tunnel.localhost}, so the wildcard name is
C{*.tunnel.localhost}: service_identity (like browsers) refuses a wildcard
directly under a one-label name such as C{*.localhost}.
"""

from service_identity.exceptions import CertificateError
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.support import (
    RecordingResource,
    start_client,
    start_local_service,
    wait_until,
)
from tests.support_ws import LocalWebSocketService
from tests.tls_support import (
    connect_wss_visitor,
    https_visitor,
    start_tls_proxy,
    write_tls_files,
)

DOMAIN = "tunnel.localhost"
#: What the client logs when it will not talk to the proxy.
TLS_FAILED = "TLS verification of the proxy failed"


class _TLSFixture:
    """
    A recording local service and helpers to start a TLS proxy and a client
    in front of it.
    """

    timeout = 30

    def setUp(self):
        self.local = RecordingResource()
        self.local_url = start_local_service(self, self.local)
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def tls_files(self, dns_names=("*." + DOMAIN, "localhost"),
                  ip_addresses=("127.0.0.1",)):
        """
        A fresh authority and a server certificate for C{dns_names}.
        """
        return write_tls_files(self.mktemp(), list(dns_names), ip_addresses)

    async def start(self, files, local_url=None, **client_kwargs):
        """
        A TLS proxy serving C{files}, and a client (not yet registered) for
        C{https://localhost:<port>}.

        @return: C{(proxy, port, client)}.
        """
        proxy, port, _ = await start_tls_proxy(self, files, DOMAIN, "localhost")
        client = start_client(self, "https://localhost:{}".format(port),
                              local_url or self.local_url, **client_kwargs)
        return proxy, port, client

    def tls_failures(self):
        """
        The log events saying TLS verification of the proxy failed.
        """
        return [e for e in self.log
                if e.get("log_format", "").startswith(TLS_FAILED)]

    async def assert_never_registers(self, proxy, client):
        """
        C{client} fails TLS verification again and again (it retries with
        backoff) and never registers.
        """
        await wait_until(
            lambda: client.registration or len(self.tls_failures()) >= 2,
            tries=1000, what="two failed TLS attempts logged")
        self.assertIsNone(client.registration)
        self.assertEqual(proxy.tunnel_factory.connections, set())
        self.assertIn(TLS_FAILED, formatEvent(self.tls_failures()[0]))


class TunnelOverTLSTests(_TLSFixture, TestCase):
    """
    Registration, HTTPS and wss all work through a proxy with a private
    authority's certificate.
    """

    async def test_client_with_the_ca_certificate_registers(self):
        """
        The client verifies the proxy against C{--ca-cert} and registers.
        """
        files = self.tls_files()
        proxy, port, client = await self.start(files, ca_cert=files.ca)
        registration = await client.when_registered()
        self.assertEqual(registration.hostname,
                         "{}.{}".format(client.key.client_id, DOMAIN))
        self.assertEqual(client.public_url, "https://{}.{}:{}/".format(
            client.key.client_id, DOMAIN, port))
        self.assertEqual(self.tls_failures(), [])

    async def test_https_visitor_by_host_is_answered_through_the_tunnel(self):
        """
        An HTTPS request for C{<clientID>.<domain>}, verified against the
        wildcard name, reaches the local service marked as https.
        """
        files = self.tls_files()
        proxy, port, client = await self.start(files, ca_cert=files.ca)
        await client.when_registered()
        http = https_visitor(self, files.ca_pem())
        response = await http.post(client.public_url + "echo?x=1", data=b"hello")
        self.assertEqual(response.code, 200)
        description = await response.json()
        self.assertEqual(description["body_length"], 5)
        (seen,) = self.local.requests_to(b"/echo")
        self.assertEqual(seen.uri, b"/echo?x=1")
        self.assertEqual(seen.header("X-Forwarded-Proto"), ["https"])
        self.assertEqual(seen.header("X-Forwarded-Host"), [
            "{}.{}:{}".format(client.key.client_id, DOMAIN, port)])

    async def test_https_visitor_by_path_is_answered_through_the_tunnel(self):
        """
        C{https://localhost:<port>/proxy/request/<clientID>/...} works too,
        also marked as https.
        """
        files = self.tls_files()
        proxy, port, client = await self.start(files, ca_cert=files.ca)
        registration = await client.when_registered()
        http = https_visitor(self, files.ca_pem())
        response = await http.get("https://localhost:{}/proxy/request/{}/echo"
                                   .format(port, registration.key_id))
        self.assertEqual(response.code, 200)
        await response.content()
        (seen,) = self.local.requests_to(b"/echo")
        self.assertEqual(seen.header("X-Forwarded-Proto"), ["https"])

    async def test_wss_visitor_gets_its_echo_through_the_tunnel(self):
        """
        A wss visitor websocket for C{<clientID>.<domain>} is echoed by the
        local websocket service.
        """
        local_ws = LocalWebSocketService()
        local_ws_url = local_ws.start(self)
        files = self.tls_files()
        proxy, port, client = await self.start(files, local_url=local_ws_url,
                                               ca_cert=files.ca)
        registration = await client.when_registered()
        ws = await connect_wss_visitor(
            self, "wss://{}:{}/echo".format(registration.hostname, port),
            files.ca_pem())
        self.assertEqual(await ws.echo("über tls".encode("utf-8")),
                         ("über tls".encode("utf-8"), False))
        self.assertEqual(await ws.echo(b"\x00\xff", is_binary=True),
                         (b"\x00\xff", True))
        (connection,) = local_ws.on("echo")
        self.assertEqual(connection.headers.get("x-forwarded-proto"), "https")
        ws.sendClose(1000)
        await ws.closed
        await wait_until(lambda: not proxy.hub.streams, what="stream removed")


class VerificationTests(_TLSFixture, TestCase):
    """
    The client refuses a proxy whose certificate it cannot verify, says why,
    and keeps retrying without ever registering.
    """

    async def test_certificate_for_another_name_is_refused(self):
        """
        A certificate for C{other.test} only does not identify
        C{localhost}: no registration, and the failure is logged.
        """
        files = self.tls_files(dns_names=("other.test",), ip_addresses=())
        proxy, port, client = await self.start(files, ca_cert=files.ca)
        await self.assert_never_registers(proxy, client)

    async def test_private_authority_is_refused_without_ca_certificate(self):
        """
        Without C{--ca-cert} the platform's trust store is used, which does
        not know the private authority.
        """
        files = self.tls_files()
        proxy, port, client = await self.start(files)
        await self.assert_never_registers(proxy, client)

    async def test_certificate_from_another_authority_is_refused(self):
        """
        A C{--ca-cert} naming a different authority does not vouch for the
        proxy's certificate.
        """
        files = self.tls_files()
        other = self.tls_files()
        proxy, port, client = await self.start(files, ca_cert=other.ca)
        await self.assert_never_registers(proxy, client)

    async def test_certificate_with_a_malformed_wildcard_is_refused(self):
        """
        A certificate naming C{*.localhost} (too few labels for a wildcard)
        is malformed, so it identifies nothing, C{localhost} included.
        """
        files = self.tls_files(dns_names=("*.localhost", "localhost"))
        proxy, port, client = await self.start(files, ca_cert=files.ca)
        await wait_until(lambda: client.registration or self.tls_failures(),
                         what="registration or refusal")
        self.flushLoggedErrors(CertificateError)
        self.assertIsNone(client.registration)
        # Twisted's own check only logs service-identity's CertificateError
        # and lets the handshake through; ours (brickchain_proxy.tls) refuses
        # the handshake, and the client's second check would refuse too.
        self.assertIn("certificate not valid for localhost",
                      formatEvent(self.tls_failures()[0]))

    async def test_an_ip_address_proxy_url_is_checked_against_ip_addresses(self):
        """
        C{--proxy https://127.0.0.1:<port>} is verified against the
        certificate's IP addresses (the client's second check used to ask
        for a DNS name and refused every address).
        """
        files = self.tls_files(dns_names=("proxy.test",))
        proxy, port, _ = await start_tls_proxy(self, files, DOMAIN, "127.0.0.1")
        client = start_client(self, "https://127.0.0.1:{}".format(port),
                              self.local_url, ca_cert=files.ca)
        await client.when_registered()
        self.assertEqual(self.tls_failures(), [])
