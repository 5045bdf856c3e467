"""
Renewing the TLS certificate of an C{ssl:} listener without a restart
(L{brickchain_proxy.proxy.certificates}): a real proxy on a loopback TLS
port serves certificate A; the files are replaced by certificate B and the
proxy reloads (as on SIGHUP); a new connection gets B, a connection opened
before keeps working; a broken file keeps the certificate in use.
"""

import os
import shutil
import signal

from cryptography import x509
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import EventLoggingObserver, MemoryReactor
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from brickchain_proxy.proxy.certificates import (
    ReloadableServerTLS,
    is_tls_listener,
    server_endpoint,
)
from tests.support import events_like, wait_until
from tests.tls_support import Authority, start_tls_proxy, trust_root, write_tls_files

NAMES = ["localhost"]
IPS = ["127.0.0.1"]


@implementer(IHandshakeListener)
class TLSClient(Protocol):
    """
    A TLS connection that can send one HTTP request at a time and sees the
    server's certificate.
    """

    def __init__(self):
        self.data = b""
        self.handshake = Deferred()
        self.lost = False

    def handshakeCompleted(self):
        self.handshake.callback(self)

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = True

    def serial(self):
        """
        The serial number of the certificate the server presented.
        """
        return self.transport.getPeerCertificate().get_serial_number()

    async def get(self, path="/"):
        """
        Send a request on this connection and wait for its status line.
        """
        self.data = b""
        self.transport.write(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await wait_until(lambda: b"\r\n\r\n" in self.data or self.lost,
                         what="an answer")
        return self.data.split(b"\r\n", 1)[0]


def serial_of(path):
    """
    The serial number of the PEM certificate at C{path}.
    """
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).serial_number


def install(source, target):
    """
    Replace C{target}'s key and certificate files with C{source}'s, each by
    an atomic rename, as ACME clients do.
    """
    for name in ("key", "cert"):
        staged = getattr(target, name) + ".new"
        shutil.copyfile(getattr(source, name), staged)
        os.replace(staged, getattr(target, name))


class ReloadTests(TestCase):
    """
    End to end over loopback TLS.
    """

    timeout = 30

    async def setUp(self):
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.authority = Authority.create()
        base = self.mktemp()
        self.files = write_tls_files(os.path.join(base, "live"), NAMES, IPS,
                                     self.authority)
        self.renewed = write_tls_files(os.path.join(base, "renewed"), NAMES, IPS,
                                       self.authority)
        self.proxy, self.port, _ = await start_tls_proxy(
            self, self.files, "localhost", "localhost")

    async def connect(self):
        """
        A TLS connection to the proxy that trusts the test authority; closed
        at the end of the test.
        """
        options = ssl.optionsForClientTLS(
            "localhost", trustRoot=trust_root(self.files.ca_pem()))
        endpoint = wrapClientTLS(
            options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.port))
        client = await endpoint.connect(Factory.forProtocol(TLSClient))
        self.addCleanup(self.close, client)
        return await client.handshake

    async def close(self, client):
        if not client.lost:
            client.transport.abortConnection()
        await wait_until(lambda: client.lost, what="the test connection closed")

    async def test_new_connections_get_the_new_certificate(self):
        """After a reload, new connections get B and an open one goes on with A."""
        first = serial_of(self.files.cert)
        old = await self.connect()
        self.assertEqual(old.serial(), first)
        self.assertTrue((await old.get()).startswith(b"HTTP/1.1 "))

        install(self.renewed, self.files)
        self.proxy.reload()

        new = await self.connect()
        self.assertEqual(new.serial(), serial_of(self.renewed.cert))
        self.assertNotEqual(new.serial(), first)
        # The connection opened before still answers, with its certificate.
        self.assertTrue((await old.get()).startswith(b"HTTP/1.1 "))
        self.assertEqual(old.serial(), first)
        self.assertTrue(events_like(self.log, "TLS certificate of {endpoint} reloaded"))

    async def test_sighup_handler_reloads(self):
        """The SIGHUP handler reloads the certificate (in the reactor thread)."""
        install(self.renewed, self.files)
        self.proxy._sighup(signal.SIGHUP, None)
        await wait_until(lambda: events_like(self.log, "reloaded"),
                         what="the reload")
        new = await self.connect()
        self.assertEqual(new.serial(), serial_of(self.renewed.cert))

    async def test_broken_certificate_keeps_the_current_one(self):
        """A certificate file that does not parse is refused; A stays, an error is logged."""
        first = serial_of(self.files.cert)
        with open(self.files.cert, "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n")
        self.proxy.reload()
        (error,) = events_like(self.log, "cannot reload the TLS certificate")
        self.assertIn("keeping", error["log_format"])
        self.assertIn("localhost", error["certificate"])
        client = await self.connect()
        self.assertEqual(client.serial(), first)

    async def test_key_that_does_not_match_keeps_the_current_one(self):
        """A new certificate with the old key (a half-finished renewal) is refused."""
        first = serial_of(self.files.cert)
        shutil.copyfile(self.renewed.cert, self.files.cert)  # the key stays A's
        self.proxy.reload()
        self.assertTrue(events_like(self.log, "cannot reload the TLS certificate"))
        client = await self.connect()
        self.assertEqual(client.serial(), first)
        # Once the key is in place too, the reload succeeds.
        install(self.renewed, self.files)
        self.proxy.reload()
        client = await self.connect()
        self.assertEqual(client.serial(), serial_of(self.renewed.cert))


class EndpointTests(SynchronousTestCase):
    """
    Which listeners are reloadable, and how the endpoint is built.
    """

    def setUp(self):
        self.files = write_tls_files(self.mktemp(), NAMES, IPS)

    def test_only_ssl_listeners_are_reloadable(self):
        """tcp: gets no reloadable TLS; ssl: (any case) does."""
        self.assertIsNone(server_endpoint(MemoryReactor(), "tcp:0")[1])
        self.assertTrue(is_tls_listener("SSL:443:privateKey=k"))
        self.assertFalse(is_tls_listener("tcp:443"))

    def test_ssl_endpoint_listens_with_the_reloadable_options(self):
        """listenSSL is given the ReloadableServerTLS, which starts with the spec's files."""
        memory = MemoryReactor()
        endpoint, tls = server_endpoint(memory, self.files.listen())
        self.assertIsInstance(tls, ReloadableServerTLS)
        endpoint.listen(Factory.forProtocol(Protocol))
        (listening,) = memory.sslServers
        self.assertIs(listening[2], tls)
        self.assertEqual(tls.options.certificate.get_serial_number(),
                         serial_of(self.files.cert))
