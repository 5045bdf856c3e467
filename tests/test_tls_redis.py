"""
The Redis bus over TLS (C{rediss://}), end to end against a real
C{redis-server} serving TLS only (Debian's is built with TLS), with a
throwaway authority and certificates made in the test.

The proxy verifies the server's certificate and its name (or IP address)
with service-identity, against C{--bus-ca-cert}; a certificate it refuses
is logged with the reason, retried with backoff, and never sent a password.
"""

import os

from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from brickchain_proxy.bus import BusUnavailable, open_backend
from tests.redis_server import RedisServer, wait_for_bus, wait_for_instance
from tests.support import start_proxy, wait_until
from tests.tls_support import write_tls_files

#: What the proxy logs when it refuses Redis' certificate.
REFUSED = "TLS verification of Redis at"


class RedissTests(TestCase):
    """
    C{rediss://} is verified like the tunnel: the right authority and name
    connect; anything else is refused, said, and retried.
    """

    timeout = 60

    def setUp(self):
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def tls_files(self, dns_names=("localhost",), ip_addresses=("127.0.0.1",)):
        # Absolute: redis-server runs in a directory of its own.
        return write_tls_files(os.path.abspath(self.mktemp()), list(dns_names),
                               ip_addresses)

    async def redis(self, files, password=None):
        return await RedisServer.for_test(self, tls_files=files, password=password)

    def backend(self, url, ca_cert):
        backend = open_backend(url, reactor, ca_cert=ca_cert)
        backend.start()
        self.addCleanup(backend.stop)
        return backend

    def refusals(self):
        return [formatEvent(e) for e in self.log
                if e.get("log_format", "").startswith(REFUSED)]

    async def assert_refused_and_retried(self, backend, *fragments):
        """
        Both connections are refused, again after a backoff, with the
        reason logged each time; the backend stays up and reports Redis
        unreachable.
        """
        await wait_until(lambda: len(self.refusals()) >= 4, tries=1500,
                         what="two rounds of refused TLS connections to Redis")
        self.assertFalse(backend.connected)
        for text in self.refusals():
            for fragment in fragments:
                self.assertIn(fragment, text)
        await self.assertFailure(backend.command("PING"), BusUnavailable)

    async def test_the_right_authority_and_name_connect(self):
        """
        With C{--bus-ca-cert} naming the server's authority, commands and
        pub/sub work over TLS, and nothing is refused.
        """
        files = self.tls_files()
        server = await self.redis(files)
        backend = self.backend("rediss://localhost:{}".format(server.port), files.ca)
        received = []
        await backend.bus.subscribe("tls-test", received.append)
        await wait_for_bus(backend, "tls-test")
        self.assertEqual(await backend.command("PING"), "PONG")
        self.assertEqual(await backend.bus.publish("tls-test", b"over tls"), 1)
        await wait_until(lambda: received, what="the message published over TLS")
        self.assertEqual(received, [b"over tls"])
        self.assertEqual(self.refusals(), [])

    async def test_an_ip_address_is_checked_against_the_ip_addresses(self):
        """
        C{rediss://127.0.0.1} is verified against the certificate's IP
        addresses (no SNI is sent for an address).
        """
        files = self.tls_files(dns_names=("redis.test",))
        server = await self.redis(files)
        backend = self.backend(server.url, files.ca)
        await wait_for_bus(backend)
        self.assertEqual(await backend.command("PING"), "PONG")

    async def test_a_password_is_sent_once_verified(self):
        """
        AUTH goes to a verified server and succeeds.
        """
        files = self.tls_files()
        server = await self.redis(files, password="s3cret")
        backend = self.backend("rediss://:s3cret@localhost:{}".format(server.port),
                               files.ca)
        await wait_for_bus(backend)
        self.assertEqual(await backend.command("PING"), "PONG")

    async def test_another_authority_is_refused_and_retried(self):
        """
        A C{--bus-ca-cert} of another authority does not vouch for the
        server: refused (saying so), retried, never connected.
        """
        files = self.tls_files()
        other = self.tls_files()
        server = await self.redis(files)
        backend = self.backend("rediss://localhost:{}".format(server.port), other.ca)
        await self.assert_refused_and_retried(
            backend, "not trusted", "--bus-ca-cert", other.ca)

    async def test_the_system_trust_store_does_not_know_a_private_authority(self):
        """
        Without C{--bus-ca-cert} the system's trust store is used.
        """
        files = self.tls_files()
        server = await self.redis(files)
        backend = self.backend("rediss://localhost:{}".format(server.port), None)
        await self.assert_refused_and_retried(
            backend, "not trusted", "the system's trust store")

    async def test_a_certificate_for_another_name_is_refused_and_retried(self):
        """
        A certificate for C{redis.test} does not identify C{127.0.0.1}.
        """
        files = self.tls_files(dns_names=("redis.test",), ip_addresses=())
        server = await self.redis(files)
        backend = self.backend(server.url, files.ca)
        await self.assert_refused_and_retried(
            backend, "certificate not valid for 127.0.0.1")

    async def test_a_malformed_wildcard_is_refused(self):
        """
        A certificate that also names C{*.localhost} (a wildcard with too
        few labels: service-identity raises C{CertificateError}, which
        Twisted's own check logs and lets through) identifies nothing.
        """
        files = self.tls_files(dns_names=("*.localhost", "localhost"))
        server = await self.redis(files)
        backend = self.backend("rediss://localhost:{}".format(server.port), files.ca)
        await self.assert_refused_and_retried(
            backend, "certificate not valid for localhost")

    async def test_a_wrong_certificate_with_a_password_keeps_retrying(self):
        """
        With a password, a refused certificate is still only a lost
        connection: txredisapi, which gives up for good when AUTH fails,
        never sent it.
        """
        files = self.tls_files()
        other = self.tls_files()
        server = await self.redis(files, password="s3cret")
        backend = self.backend("rediss://:s3cret@localhost:{}".format(server.port),
                               other.ca)
        await self.assert_refused_and_retried(backend, "not trusted")

    async def test_the_proxy_joins_a_rediss_bus_with_its_ca_certificate(self):
        """
        C{ProxyService(bus_ca_cert=...)} (C{--bus-ca-cert}) reaches the
        backend: the instance gets on the bus.
        """
        files = self.tls_files()
        server = await self.redis(files)
        proxy, _, _ = await start_proxy(
            self, bus_url="rediss://localhost:{}".format(server.port),
            bus_ca_cert=files.ca)
        await wait_for_instance(proxy)
        self.assertEqual(self.refusals(), [])

