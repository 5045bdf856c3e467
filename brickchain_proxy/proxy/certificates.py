"""
TLS certificates of the proxy's C{ssl:} listeners, renewed without a
restart: a wildcard ACME certificate is replaced every 60 to 90 days, and
SIGHUP (C{systemctl reload}) makes the proxy read it again.

An C{ssl:} listener is the endpoint Twisted builds from the C{--listen}
string, with its TLS options replaced by a L{ReloadableServerTLS}, which
makes each new connection with the current options.  L{reload} reads the
spec's files again through Twisted's own parser (so C{privateKey},
C{certKey}, C{extraCertChain}, C{dhParameters} and C{sslmethod} mean what
they always mean) and swaps the options: new connections get the new
certificate; open ones keep the one they were made with.  A new
certificate that does not load, or whose key does not match it, is refused
and the previous one stays.
"""

from twisted.internet import endpoints
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from ..compat import tls_server_options, use_tls_server_options


def is_tls_listener(description):
    """
    Whether C{description} is an C{ssl:} server endpoint string.
    """
    return description.split(":", 1)[0].strip().lower() == "ssl"


def server_endpoint(reactor, description):
    """
    The server endpoint for a C{--listen} string.

    @return: C{(endpoint, tls)}: C{tls} is the endpoint's
        L{ReloadableServerTLS} for an C{ssl:} string, else L{None}.
    @raise Exception: what L{endpoints.serverFromString} raises for a bad
        string or unreadable files.
    """
    endpoint = endpoints.serverFromString(reactor, description)
    if not is_tls_listener(description):
        return endpoint, None
    tls = ReloadableServerTLS(reactor, description, tls_server_options(endpoint))
    use_tls_server_options(endpoint, tls)
    return endpoint, tls


def describe_certificate(options):
    """
    The subject's common name and the end of validity of the certificate in
    C{options} (a L{twisted.internet.ssl.CertificateOptions}), for the log.
    """
    certificate = getattr(options, "certificate", None)
    if certificate is None:
        return "unknown certificate"
    subject = certificate.get_subject().CN or str(certificate.get_subject())
    not_after = (certificate.get_notAfter() or b"?").decode("ascii", "replace")
    if len(not_after) == 15 and not_after.endswith("Z"):
        not_after = "{}-{}-{}T{}:{}:{}Z".format(
            not_after[0:4], not_after[4:6], not_after[6:8], not_after[8:10],
            not_after[10:12], not_after[12:14])
    return "{} (valid until {})".format(subject, not_after)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """
    Makes each new server TLS connection with the current options.

    @ivar description: the C{--listen} string.
    @ivar options: the current L{twisted.internet.ssl.CertificateOptions}.
    """

    _log = Logger()

    def __init__(self, reactor, description, options):
        self._reactor = reactor
        self.description = description
        self.options = options

    def serverConnectionForTLS(self, protocol):
        current = self.options
        make = getattr(current, "serverConnectionForTLS", None)
        if make is not None:
            return make(protocol)
        # Twisted releases whose CertificateOptions is only a context factory.
        from OpenSSL.SSL import Connection

        return Connection(current.getContext(), None)

    def reload(self):
        """
        Read the certificate and key files again and use them for new
        connections; if they do not load, keep the current ones and log an
        error.

        @return: L{True} if the new certificate is in use.
        """
        try:
            options = tls_server_options(
                endpoints.serverFromString(self._reactor, self.description))
            # Builds the OpenSSL context: checks that the key matches.
            options.getContext()
        except Exception as e:
            self._log.error(
                "cannot reload the TLS certificate of {endpoint}, keeping "
                "{certificate}: {error}", endpoint=self.description,
                certificate=describe_certificate(self.options),
                error=str(e) or type(e).__name__)
            return False
        self.options = options
        self._log.info("TLS certificate of {endpoint} reloaded: {certificate}",
                       endpoint=self.description,
                       certificate=describe_certificate(options))
        return True
