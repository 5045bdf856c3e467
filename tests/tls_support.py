"""
Fixtures for end-to-end tests over TLS: a private certificate authority and
server certificates made with C{cryptography}, a proxy listening on a
Twisted C{ssl:} endpoint, and visitors (HTTPS and wss) that trust only that
authority.

Visitors connect to 127.0.0.1 whatever the URL's host is, but verify the
proxy's certificate against the URL's host, so C{https://<clientID>.<domain>}
needs no DNS and still checks the wildcard name.
"""

import datetime
import ipaddress
import os
from urllib.parse import urlsplit

import attr
from autobahn.twisted.websocket import WebSocketClientFactory
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
import treq
from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
)
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from brickchain_proxy.proxy.service import ProxyService
from tests.support import close_connections, stop_proxy, track_connections
from tests.support_ws import VisitorClient

# -- certificates ------------------------------------------------------------


@attr.s(frozen=True)
class Authority:
    """
    A certificate authority: its key and self-signed certificate.
    """

    key = attr.ib()
    certificate = attr.ib()

    @classmethod
    def create(cls, common_name="brickchain-proxy test CA"):
        """
        A new CA, valid from a day ago for ten days.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=10))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0),
                           critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False,
                    key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False),
                critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def issue(self, dns_names, ip_addresses=()):
        """
        A server certificate for C{dns_names} (and C{ip_addresses}) as
        subject alternative names, signed by this authority.

        @return: C{(key, certificate)}.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        names = [x509.DNSName(name) for name in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(
                [x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=10))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                           critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()),
                critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return key, certificate


@attr.s(frozen=True)
class TLSFiles:
    """
    PEM files in one directory.

    @ivar ca: the authority's certificate.
    @ivar key: the server's private key (PKCS#8).
    @ivar cert: the server's certificate.
    """

    ca = attr.ib()
    key = attr.ib()
    cert = attr.ib()

    def ca_pem(self):
        """
        The authority's certificate, PEM bytes.
        """
        with open(self.ca, "rb") as f:
            return f.read()

    def server_options(self):
        """
        Server TLS options (a C{CertificateOptions}) serving these key and
        certificate, for C{listenSSL}.
        """
        with open(self.key, "rb") as key, open(self.cert, "rb") as cert:
            pem = key.read() + cert.read()
        return ssl.PrivateCertificate.loadPEM(pem).options()

    def listen(self, port=0, interface="127.0.0.1"):
        """
        A Twisted server endpoint string serving these key and certificate
        on C{interface}:C{port}.
        """
        return "ssl:{}:interface={}:privateKey={}:certKey={}".format(
            port, interface, _escape(self.key), _escape(self.cert))


def _escape(value):
    """
    Quote C{:} and C{\\} for a Twisted endpoint string.
    """
    return value.replace("\\", "\\\\").replace(":", "\\:")


def write_tls_files(directory, dns_names, ip_addresses=(), authority=None):
    """
    Create C{directory} and write a CA certificate and a server key and
    certificate for C{dns_names} (and C{ip_addresses}) into it.

    @param authority: the L{Authority} that signs (default: a new one).
    @return: the L{TLSFiles}.
    """
    authority = authority or Authority.create()
    key, certificate = authority.issue(dns_names, ip_addresses)
    os.makedirs(directory, exist_ok=True)
    files = TLSFiles(
        ca=os.path.join(directory, "ca.pem"),
        key=os.path.join(directory, "key.pem"),
        cert=os.path.join(directory, "cert.pem"),
    )
    pem = serialization.Encoding.PEM
    _write(files.ca, authority.certificate.public_bytes(pem))
    _write(files.cert, certificate.public_bytes(pem))
    _write(files.key, key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


# -- the proxy ---------------------------------------------------------------


def start_tls_proxy(testcase, tls_files, domain, base_host, **proxy_kwargs):
    """
    Start a L{ProxyService} listening with TLS on 127.0.0.1 (a free port)
    and stop it at the end of the test.

    @param base_host: the host name of its base URL,
        C{https://<base_host>:<port>}.
    @return: a L{Deferred} firing with C{(proxy, port_number, transports)}
        once it listens and its base URL names that port.
    """
    return defer.ensureDeferred(
        _start_tls_proxy(testcase, tls_files, domain, base_host, proxy_kwargs))


async def _start_tls_proxy(testcase, tls_files, domain, base_host, proxy_kwargs):
    proxy = ProxyService(
        reactor, [tls_files.listen()], domain,
        "https://{}:1".format(base_host), **proxy_kwargs)
    transports = track_connections(proxy.site)
    await defer.maybeDeferred(proxy.startService)
    testcase.addCleanup(stop_proxy, proxy, transports)
    (listening,) = await proxy.when_listening()
    number = listening.getHost().port
    proxy.set_base("https://{}:{}".format(base_host, number))
    return proxy, number, transports


# -- visitors ----------------------------------------------------------------


def trust_root(ca_pem):
    """
    A Twisted trust root holding only the authority in C{ca_pem}.
    """
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(ca_pem)])


@implementer(IAgentEndpointFactory)
class _LoopbackEndpoints:
    """
    Connect every URL to 127.0.0.1 at the URL's port, with TLS verified
    against the URL's host.
    """

    def __init__(self, policy):
        self._policy = policy

    def endpointForURI(self, uri):
        tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", uri.port)
        if uri.scheme != b"https":
            return tcp
        return wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), tcp)


def https_visitor(testcase, ca_pem):
    """
    A treq client for the duration of the test that trusts only the
    authority in C{ca_pem} and connects to 127.0.0.1 whatever the host.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    testcase.addCleanup(pool.closeCachedConnections)
    policy = BrowserLikePolicyForHTTPS(trustRoot=trust_root(ca_pem))
    agent = Agent.usingEndpointFactory(reactor, _LoopbackEndpoints(policy), pool=pool)
    return treq.client.HTTPClient(agent)


def connect_wss_visitor(testcase, url, ca_pem):
    """
    Open a visitor websocket to the C{wss://} C{url} over a connection to
    127.0.0.1, verifying the certificate against the URL's host; close it at
    the end of the test.

    @return: a L{Deferred} firing with the L{VisitorClient} once its
        handshake completed.
    """
    parts = urlsplit(url)
    factory = WebSocketClientFactory(url, reactor=reactor)
    factory.protocol = VisitorClient
    factory.setProtocolOptions(openHandshakeTimeout=30, closeHandshakeTimeout=5)
    transports = track_connections(factory)
    options = ssl.optionsForClientTLS(parts.hostname, trustRoot=trust_root(ca_pem))
    endpoint = wrapClientTLS(
        options, TCP4ClientEndpoint(reactor, "127.0.0.1", parts.port))

    def connected(protocol):
        testcase.addCleanup(_close_visitor, protocol, transports)
        return protocol.opened

    return endpoint.connect(factory).addCallback(connected)


@defer.inlineCallbacks
def _close_visitor(protocol, transports):
    if protocol.state == protocol.STATE_OPEN:
        protocol.sendClose(1000)
    yield close_connections(transports, strict=False)


__all__ = [
    "Authority", "TLSFiles", "write_tls_files", "start_tls_proxy",
    "trust_root", "https_visitor", "connect_wss_visitor",
]
