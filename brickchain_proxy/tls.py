"""
Client TLS, one way for every outgoing connection: the tunnel to the proxy,
the local service (HTTP and websockets) and Redis.

L{verifying_tls} builds on Twisted's L{optionsForClientTLS} (trust root,
SNI for a DNS name and none for an IP address, protocol versions and
ciphers) and replaces its certificate check by a strict one that checks the
chain *and* the peer's identity with service-identity -- a DNS name against
the certificate's DNS names, an IP address against its IP addresses -- and
refuses the handshake on any failure.  Twisted's own check fails open:
when service-identity raises anything but C{VerificationError} (e.g. its
C{CertificateError} for a malformed wildcard such as C{*.localhost}), it
logs the error and lets the handshake through.  Here nothing is written to
the peer before the check passed (the TLS layer buffers it), so a password
(Redis AUTH) or a visitor's request never reaches a server that failed it.

A refused certificate ends the connection with L{CertificateRefused}, whose
message says why (wrong name, unknown authority, expired, ...);
L{tls_failure_reason} finds that reason (or an OpenSSL error) in whatever
failure the connection's user sees.
"""

from twisted.internet import ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from zope.interface import implementer


class CertificateRefused(Exception):
    """
    The peer's certificate was refused; the message says why.
    """


#: OpenSSL's X509_V_ERR_* codes a verification most often stops at, in
#: words (the codes are stable across OpenSSL releases).
_CHAIN_ERRORS = {
    2: "its issuer's certificate is unknown",
    9: "it is not valid yet",
    10: "it has expired",
    18: "it is self-signed and not trusted",
    19: "its chain ends at an authority that is not trusted",
    20: "it is not signed by a trusted authority",
    21: "it is not signed by a trusted authority",
    23: "it has been revoked",
    24: "an intermediate certificate is not a CA",
    26: "it is not meant for a TLS server",
}


def load_trust_root(path):
    """
    A trust root of the CA certificate(s) in the PEM file C{path}.

    @raise OSError: if the file cannot be read.
    @raise ValueError: if it holds no certificate, or a bad one.
    """
    with open(path, "rb") as f:
        pem = f.read()
    try:
        authorities = [ssl.Certificate.loadPEM(block) for block in _pem_blocks(pem)]
    except Exception as e:
        raise ValueError("not a PEM certificate: {}".format(e)) from None
    if not authorities:
        raise ValueError("no certificate in {}".format(path))
    return ssl.trustRootFromCertificates(authorities)


def _pem_blocks(pem):
    marker = b"-----END CERTIFICATE-----"
    for chunk in pem.split(marker)[:-1]:
        start = chunk.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            yield chunk[start:] + marker + b"\n"


def check_identity(certificate, host):
    """
    Check that C{certificate} (a C{cryptography} certificate) identifies
    C{host}, a DNS name or an IP address, with service-identity.

    @raise CertificateRefused: if it does not, or cannot be checked.
    """
    from service_identity.cryptography import (
        verify_certificate_hostname,
        verify_certificate_ip_address,
    )

    try:
        if isIPAddress(host) or isIPv6Address(host):
            verify_certificate_ip_address(certificate, host)
        else:
            verify_certificate_hostname(certificate, host)
    except Exception as e:
        # VerificationError (a mismatch) and CertificateError (a malformed
        # name, which Twisted would let through) alike.
        raise CertificateRefused("certificate not valid for {}: {}".format(
            host, str(e) or type(e).__name__)) from None


def verifying_tls(host, trust_root=None):
    """
    Client TLS options for C{host} that verify its certificate strictly
    (see the module's docstring).

    @param trust_root: the authorities to trust (L{load_trust_root}), or
        L{None} for the platform's trust store.
    """
    return _StrictClientTLS(
        ssl.optionsForClientTLS(host, trustRoot=trust_root), host)


def insecure_tls(host):
    """
    Client TLS options for C{host} that encrypt but verify nothing (no
    authority, no name): for an operator's explicit opt-out only.
    """
    return _InsecureClientTLS(ssl.optionsForClientTLS(host), host)


@implementer(IOpenSSLClientConnectionCreator)
class _StrictClientTLS:
    """
    Twisted's client TLS options with the strict check in place of its own.
    """

    def __init__(self, options, host):
        self._options = options
        self._host = host

    def __repr__(self):
        return "<verifying TLS for {}>".format(self._host)

    def clientConnectionForTLS(self, tls_protocol):
        from OpenSSL import SSL

        connection = self._options.clientConnectionForTLS(tls_protocol)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                              _verifier(tls_protocol, self._host))
        return connection


def _verifier(tls_protocol, host):
    """
    The OpenSSL verify callback of one connection: the chain as OpenSSL
    judged it, then the leaf's identity.  A refusal ends the connection
    with a L{CertificateRefused} saying why.
    """
    state = {"protocol": tls_protocol, "verdict": None}

    def decide(verdict, reason=None):
        # Drop the protocol once decided: no reference cycle is left.
        protocol, state["protocol"] = state["protocol"], None
        state["verdict"] = verdict
        if not verdict and protocol is not None:
            protocol.failVerification(Failure(CertificateRefused(reason)))
        return verdict

    def verify(connection, x509, errno, depth, ok):
        if state["verdict"] is not None:
            return state["verdict"] and bool(ok)
        try:
            if not ok:
                why = _CHAIN_ERRORS.get(errno, "OpenSSL verify error {}".format(errno))
                subject = "certificate of {}".format(host) if depth == 0 else \
                    "certificate chain of {}".format(host)
                return decide(False, "{} not trusted: {}".format(subject, why))
            if depth != 0:
                return True
            check_identity(x509.to_cryptography(), host)
        except CertificateRefused as e:
            return decide(False, str(e))
        except Exception as e:
            return decide(False, "certificate of {} could not be checked: {}"
                          .format(host, e))
        return decide(True)

    return verify


@implementer(IOpenSSLClientConnectionCreator)
class _InsecureClientTLS:
    def __init__(self, options, host):
        self._options = options
        self._host = host

    def __repr__(self):
        return "<unverified TLS for {}>".format(self._host)

    def clientConnectionForTLS(self, tls_protocol):
        from OpenSSL import SSL

        connection = self._options.clientConnectionForTLS(tls_protocol)
        connection.set_verify(SSL.VERIFY_NONE, lambda *args: True)
        return connection


class ClientTLSPolicy:
    """
    How one kind of outgoing connection verifies TLS: against the
    platform's trust store, a private authority's certificate(s), or (an
    explicit opt-out) not at all.

    @ivar ca_cert: the PEM file of the authorities, or L{None}.
    @ivar insecure: whether nothing is verified.
    @ivar option: the command-line option that names the authorities, for
        error messages, or L{None}.
    """

    def __init__(self, ca_cert=None, insecure=False, option=None):
        if ca_cert is not None and insecure:
            raise ValueError("a CA certificate and no verification exclude each other")
        self.ca_cert = ca_cert
        self.insecure = insecure
        self.option = option
        self._trust_root = None

    def creator(self, host):
        """
        The client TLS options (an L{IOpenSSLClientConnectionCreator}) for
        a connection to C{host}.  The CA file is read the first time (not
        at construction: no I/O before the service starts).

        @raise OSError: if the CA file cannot be read.
        @raise ValueError: if it holds no certificate.
        """
        if self.insecure:
            return insecure_tls(host)
        if self.ca_cert is not None and self._trust_root is None:
            self._trust_root = load_trust_root(self.ca_cert)
        return verifying_tls(host, self._trust_root)

    def explain(self, why):
        """
        C{why} a certificate was refused, with the option that changes what
        it is verified against, for error messages (visitors may see them:
        no file names).
        """
        if self.option is None:
            return why
        return "{} (see {})".format(why, self.option)

    def describe(self):
        """
        What certificates are verified against, for the log.
        """
        if self.insecure:
            return "nothing (verification off)"
        return "the system's trust store" if self.ca_cert is None else self.ca_cert


#: How a 502 for a local service whose certificate was refused begins.
LOCAL_TLS_REFUSED = "the local service's TLS certificate was refused: "

#: The default: the platform's trust store, names always checked.
SYSTEM_TRUST = ClientTLSPolicy()


def tls_failure_reason(failure):
    """
    Why a connection failed at the TLS layer, in words, or L{None} when
    C{failure} is not about TLS.  Looks into the failures Agent wraps
    (C{ResponseNeverReceived}, C{RequestTransmissionFailed}, ...).
    """
    for f in _failures_in(failure):
        if f.check(CertificateRefused):
            return f.getErrorMessage()
        try:
            from OpenSSL.SSL import Error as SSLError
        except ImportError:  # pragma: no cover - pyOpenSSL is a dependency
            return None
        if f.check(SSLError):
            return "TLS handshake failed: {}".format(_openssl_message(f.value))
    return None


def _failures_in(failure, depth=0):
    yield failure
    if depth > 3:
        return
    for inner in getattr(failure.value, "reasons", None) or ():
        if isinstance(inner, Failure):
            yield from _failures_in(inner, depth + 1)


def _openssl_message(error):
    """
    The reason strings of an C{OpenSSL.SSL.Error} (a list of
    C{(library, function, reason)} tuples), joined.
    """
    reasons = []
    for item in (error.args[0] if error.args else ()) or ():
        if isinstance(item, tuple) and item:
            reasons.append(str(item[-1]))
    return ", ".join(reasons) or str(error) or type(error).__name__


__all__ = ["CertificateRefused", "ClientTLSPolicy", "LOCAL_TLS_REFUSED", "SYSTEM_TRUST", "check_identity",
           "insecure_tls", "load_trust_root", "tls_failure_reason", "verifying_tls"]
