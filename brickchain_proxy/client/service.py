"""
The running client: one reconnecting websocket to the proxy
(L{ClientService} with capped exponential backoff) and the local forwarder.

It is the C{twistd brickclient} daemon and a library: a program can run a
L{TunnelClientService} for a local URL, or for a L{twisted.web} resource
served inside the program itself (L{IResource}: a WSGI application through
L{twisted.web.wsgi.WSGIResource}, a websocket through Autobahn's
C{WebSocketResource}), with no TCP port.
"""

import json
import os
import random
from urllib.parse import urlsplit

import attr
from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Site
from zope.interface import implementer

from .. import features as _features
from ..endpoints import client_endpoint
from ..identity import ClientKey
from ..mandate_tokens import WRONG_ENDPOINT
from ..metrics import NO_CLIENT_METRICS, ClientMetrics, metrics_listener
from ..tls import ClientTLSPolicy
from .forward import LocalForwarder
from .inprocess import InProcessEndpoint
from .rewrite import LocalRewrite
from .tunnel import TunnelClientFactory

#: The local URL of a service inside this process: its host is the Host
#: header sent to it (unless C{local_host} says otherwise).
IN_PROCESS_URL = "http://in-process"


class ClientStopped(Exception):
    """
    The tunnel client was stopped before it registered.
    """


@attr.s(frozen=True)
class Registration:
    """
    A registered tunnel, as visitors reach it.

    @ivar client_id: the tunnel's clientID.
    @ivar hostname: C{<clientID>.<domain>}, or L{None} when the proxy has no
        domain (then only C{path_url} works).
    @ivar url: the URL visitors use (the hostname's, else the path URL).
    @ivar path_url: the path-routed URL, C{.../proxy/request/<clientID>/},
        which works without DNS for the domain.
    @ivar features: the protocol extensions in use on the tunnel.
    """

    client_id = attr.ib()
    hostname = attr.ib()
    url = attr.ib()
    path_url = attr.ib()
    features = attr.ib(default=frozenset())

    @property
    def key_id(self):
        """
        The clientID, by its wire name (registration-response's C{key_id}).
        """
        return self.client_id


class _InProcessSite(Site):
    """
    The site of a resource served in this process.  Its access log is left
    to the proxy (C{--access-log}).
    """

    def log(self, request):
        pass


def websocket_url(proxy_url):
    """
    The proxy's C{/proxy/subscribe} websocket URL for its base URL
    (http -> ws, https -> wss; ws and wss are taken as they are).
    """
    parts = urlsplit(proxy_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(
        parts.scheme.lower()
    )
    if scheme is None or not parts.hostname:
        raise ValueError(
            "proxy URL must be http(s)://host[:port][/path]: {!r}".format(proxy_url)
        )
    return "{}://{}{}/proxy/subscribe".format(
        scheme, parts.netloc, parts.path.rstrip("/")
    )


def public_url(proxy_url, hostname):
    """
    The URL visitors use for a tunnel's hostname: the proxy's scheme and port.
    """
    parts = urlsplit(proxy_url)
    scheme = "https" if parts.scheme.lower() in ("https", "wss") else "http"
    port = parts.port
    default = 443 if scheme == "https" else 80
    netloc = hostname if port in (None, default) else "{}:{}".format(hostname, port)
    return "{}://{}/".format(scheme, netloc)


def path_url(proxy_url, client_id):
    """
    The path-routed URL of a tunnel, which works without DNS for the domain.
    """
    parts = urlsplit(proxy_url)
    scheme = "https" if parts.scheme.lower() in ("https", "wss") else "http"
    return "{}://{}{}/proxy/request/{}/".format(
        scheme, parts.netloc, parts.path.rstrip("/"), client_id
    )


def tls_options_for(hostname, ca_cert=None):
    """
    TLS client options that verify the proxy's certificate and hostname (or
    IP address) strictly with service-identity (L{brickchain_proxy.tls}):
    against the platform's trust store, or against the CA certificate(s) in
    the PEM file C{ca_cert} for private CAs.
    """
    from ..tls import load_trust_root, verifying_tls

    return verifying_tls(hostname, None if ca_cert is None else load_trust_root(ca_cert))


def proxy_endpoint(reactor, ws_url, tls_options=None):
    """
    The stream endpoint for the proxy's ws:// or wss:// URL.
    """
    parts = urlsplit(ws_url)
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    tls = None
    if secure:
        tls = tls_options or tls_options_for(parts.hostname)
    return client_endpoint(reactor, parts.hostname, port, tls)


def describe_connect_failure(failure, host):
    """
    Why a connection to the proxy could not be made, in a few words for the
    retry log: connection refused, DNS, timeout, TLS, or the error itself.
    """
    from twisted.internet import error

    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.DNSLookupError):
        return "DNS lookup of {} failed".format(host)
    if failure.check(error.TimeoutError, error.TCPTimedOutError):
        return "connection timed out"
    try:
        from OpenSSL.SSL import Error as SSLError
    except ImportError:  # pragma: no cover - pyOpenSSL is a dependency
        SSLError = ()
    if SSLError and failure.check(SSLError):
        return "TLS handshake failed: {}".format(failure.getErrorMessage())
    return failure.getErrorMessage() or failure.type.__name__


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """
    An endpoint that tells its owner why each failed connect failed
    (L{ClientService} only counts failures).
    """

    def __init__(self, endpoint, report, url):
        self._endpoint = endpoint
        self._report = report
        self._url = url

    def __repr__(self):
        return "<endpoint for {}>".format(self._url)

    def connect(self, factory):
        d = self._endpoint.connect(factory)

        def failed(failure):
            self._report(failure)
            return failure

        d.addErrback(failed)
        return d


class TunnelClientService(service.MultiService):
    """
    Keeps one registered tunnel to the proxy, reconnecting with capped
    exponential backoff (and backing off on refused registrations too).

    Use it as a library::

        client = TunnelClientService(reactor, "https://example.io",
                                     WSGIResource(reactor, pool, app),
                                     "client.pem")
        client.startService()
        client.when_registered().addCallback(lambda r: print(r.url))

    @param local: the local service: its URL (C{http(s)://host[:port][/prefix]};
        websockets go to the same place with C{ws(s)}), or an L{IResource}
        served inside this process over in-memory connections (no port;
        its URL is L{IN_PROCESS_URL}).
    @param key_path: the client key's PEM file, created if missing.
    @param metrics: a server endpoint string to serve Prometheus metrics on
        (C{GET /metrics}), or L{None} for none.
    @param recorder: the inspector's L{inspector.IExchangeRecorder} the
        forwarder reports to (default: none).
    @param local_ca_cert: a PEM file of the CA certificate(s) an https/wss
        local service is verified with (default: the system's trust store).
    @param local_insecure: verify nothing about an https/wss local
        service's certificate (a warning is logged at start).

    @ivar registration: the latest L{Registration}, or L{None}.
    @ivar public_url: the URL visitors use, once registered.
    @ivar local_endpoint: the L{InProcessEndpoint} of an in-process
        C{local}, else L{None}.
    @ivar metrics: the L{IClientMetrics} (L{NO_CLIENT_METRICS} without a
        C{metrics} endpoint).
    @ivar metrics_listener: the L{Listener} serving them, or L{None}.
    """

    _log = Logger()

    def __init__(self, reactor, proxy_url, local, key_path,
                 session=None, state_path=None, ping_timeout=20.0,
                 local_timeout=25.0, max_body=512000, tls_options=None,
                 max_delay=30.0, ca_cert=None, features=None, local_headers=(),
                 local_host=None, metrics=None, recorder=None, local_ca_cert=None,
                 local_insecure=False, pool=False):
        service.MultiService.__init__(self)
        if IResource.providedBy(local):
            self.local_endpoint = InProcessEndpoint(
                reactor, _InProcessSite(local, reactor=reactor))
            local_url = IN_PROCESS_URL
        else:
            self.local_endpoint = None
            local_url = local
        self._reactor = reactor
        self.metrics = NO_CLIENT_METRICS if metrics is None else ClientMetrics()
        self.proxy_url = proxy_url
        self.ws_url = websocket_url(proxy_url)
        self._key_path = key_path
        self._session = session
        self._state_path = state_path
        self._ping_timeout = ping_timeout
        self._tls_options = tls_options
        self._ca_cert = ca_cert
        self._local_url = local_url
        #: the extensions offered to the proxy (default: all we speak but
        #: a pool); C{pool} adds L{features.POOL}
        if pool:
            features = frozenset(_features.CLIENT_DEFAULT if features is None
                                 else features) | {_features.POOL}
        self.features = features
        #: how an https/wss local service is verified
        self.local_tls = ClientTLSPolicy(local_ca_cert, local_insecure,
                                         option="--local-ca-cert")
        self.forwarder = LocalForwarder(
            reactor, local_url, timeout=local_timeout, max_body=max_body,
            tls=self.local_tls,
            rewrite=LocalRewrite(local_headers, local_host),
            endpoint=self.local_endpoint,
            metrics=self.metrics,
            recorder=recorder,
        )
        self.metrics.read_state(
            connected=lambda: 0 if self.protocol is None else 1,
            websockets=self._open_websockets,
        )
        self.metrics_listener = metrics_listener(reactor, metrics, self.metrics)
        if self.metrics_listener is not None:
            self.metrics_listener.setServiceParent(self)
        self.registration = None
        self.public_url = None
        self.protocol = None
        self._refusals = 0
        # First retry after 0.5-0.75 s (a proxy restarting gracefully is
        # usually back by then), doubling up to max_delay; the jitter keeps
        # a crowd of clients from reconnecting in lockstep.
        self._backoff = backoffPolicy(
            initialDelay=0.25, factor=2.0, maxDelay=max_delay,
            jitter=lambda: random.random() * 0.25,
        )
        self._registration_waiters = []
        self._stopped = False
        self._connector = None
        #: why the last attempt failed, for the retry log
        self._last_failure = None

    def startService(self):
        self._stopped = False
        if self.local_tls.insecure and self._local_url.startswith("https://"):
            self._log.warn(
                "--local-insecure: the certificate of the local service at {url} "
                "is not verified (no authority, no name): anyone on the path to "
                "it can read and change what the tunnel forwards",
                url=self._local_url)
        try:
            self.key = ClientKey.load_or_create(self._key_path)
        except (OSError, ValueError) as e:
            self._log.critical("cannot use the client key: {error}", error=str(e))
            raise
        self._log.info(
            "client key {path}: clientID {client_id}",
            path=self._key_path, client_id=self.key.client_id,
        )
        factory = TunnelClientFactory(
            self.ws_url, self.proxy_url, self.key, self.forwarder, self._reactor,
            self._local_url, session=self._session, ping_timeout=self._ping_timeout,
            on_registered=self._registered, on_closed=self._closed,
            **({} if self.features is None else {"features": self.features}),
        )
        factory.consume_refusals = True
        tls_options = self._tls_options
        if tls_options is None and self.ws_url.startswith("wss://"):
            tls_options = tls_options_for(urlsplit(self.ws_url).hostname,
                                          self._ca_cert)
        self._connector = ClientService(
            _ReportingEndpoint(
                proxy_endpoint(self._reactor, self.ws_url, tls_options),
                self._connect_failed, self.ws_url),
            factory,
            retryPolicy=self._retry_delay,
            clock=self._reactor,
        )
        self._connector.setServiceParent(self)
        service.MultiService.startService(self)

    @defer.inlineCallbacks
    def stopService(self):
        self._stopped = True
        waiters, self._registration_waiters = self._registration_waiters, []
        for d in waiters:
            d.errback(ClientStopped("the tunnel client was stopped"))
        if self.protocol is not None:
            self.protocol.say_goodbye()
        yield service.MultiService.stopService(self)
        if self._connector is not None:
            self._connector.disownServiceParent()
            self._connector = None
        yield self.forwarder.close()
        if self.local_endpoint is not None:
            self.local_endpoint.close()

    def when_registered(self):
        """
        @return: a L{Deferred} firing with the current L{Registration} if the
            tunnel is registered, else with the next one; each call gets its
            own.  It fails with L{ClientStopped} if the service stops first
            (at once if it is stopped already).
        """
        if self.registration is not None and self.protocol is not None:
            return defer.succeed(self.registration)
        if self._stopped:
            return defer.fail(ClientStopped("the tunnel client is stopped"))
        d = defer.Deferred(lambda d: self._registration_waiters.remove(d))
        self._registration_waiters.append(d)
        return d

    def _open_websockets(self):
        protocol = self.protocol
        return 0 if protocol is None else protocol.local_websockets.open_count()

    def _retry_delay(self, attempt):
        # ClientService asks after every failed attempt and every lost
        # connection.  It counts failed TCP connects; a connection that
        # opens but is refused at registration counts as a failure too.
        self.metrics.reconnecting()
        delay = self._backoff(attempt + self._refusals)
        reason, self._last_failure = self._last_failure, None
        if reason is not None:
            self._log.warn(
                "cannot use the proxy at {url}: {reason}; retrying in "
                "{delay:.1f} s", url=self.ws_url, reason=reason, delay=delay)
        return delay

    def _connect_failed(self, failure):
        self._last_failure = describe_connect_failure(
            failure, urlsplit(self.ws_url).hostname)

    def _registered(self, protocol, response):
        self.metrics.registration_accepted()
        self._refusals = 0
        self.protocol = protocol
        paths = path_url(self.proxy_url, response.key_id)
        if response.hostname:
            self.public_url = public_url(self.proxy_url, response.hostname)
        else:
            self.public_url = paths
        self.registration = registration = Registration(
            client_id=response.key_id, hostname=response.hostname,
            url=self.public_url, path_url=paths,
            features=frozenset(response.features or ()),
        )
        self._log.info(
            "tunnel registered: {url} (also {path_url})",
            url=self.public_url, path_url=paths,
            client_id=response.key_id, hostname=response.hostname,
        )
        if self._state_path:
            self._write_state(registration)
        waiters, self._registration_waiters = self._registration_waiters, []
        for d in waiters:
            d.callback(registration)

    def _closed(self, protocol, registered, code, reason):
        if protocol is self.protocol:
            self.protocol = None
        if registered:
            self._log.info("tunnel connection closed ({code}): reconnecting",
                           code=code)
        else:
            self._refusals += 1
            refusal = protocol.refusal
            if protocol.tls_error is not None:
                self._last_failure = "TLS verification of the proxy failed: " + \
                    protocol.tls_error
            elif refusal is not None:
                self.metrics.registration_refused(refusal)
                self._last_failure = "registration refused: " + refusal
                if refusal.startswith(WRONG_ENDPOINT):
                    self._log.error(
                        "the token was signed for {proxy_url} (--proxy); the "
                        "proxy accepts only the URLs given to it with --base: "
                        "start the client with --proxy set to one of them, or "
                        "add {proxy_url} to the proxy's --base options",
                        proxy_url=self.proxy_url)
            else:
                self._last_failure = "closed before registration: {}".format(
                    reason or "code {}".format(code))

    def _write_state(self, registration):
        state = {
            "hostname": registration.hostname,
            "clientID": registration.client_id,
            "url": registration.url,
        }
        tmp = self._state_path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(state, f)
                f.write("\n")
            os.replace(tmp, self._state_path)
        except OSError as e:
            self._log.error("cannot write state file {path}: {error}",
                            path=self._state_path, error=str(e))
