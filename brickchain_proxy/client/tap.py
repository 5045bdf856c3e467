"""
C{twistd brickclient}: command-line options and service construction.
"""

from twisted.python import usage

from ..cli import check_server_endpoint, positive
from ..envconfig import EnvironmentOptions, environment_help
from .service import websocket_url


class Options(EnvironmentOptions, usage.Options):
    """
    Options for C{twistd brickclient}; each can also be set as
    C{BRICKCLIENT_<OPTION>} in the environment (L{EnvironmentOptions}).
    """

    synopsis = "[options]"
    envPrefix = "BRICKCLIENT_"
    # A header's value may hold anything but a line break.
    envRepeatable = {"local-header": None}
    envReserved = frozenset(["BRICKCLIENT_OPTS"])
    longdesc = (
        "Run a tunnel client: keep one websocket to the proxy and answer the "
        "public requests it forwards by calling the local service."
    ) + environment_help(
        "BRICKCLIENT_",
        "BRICKCLIENT_LOCAL_HEADER takes one \"Name: value\" a line.")

    optParameters = [
        ["proxy", None, "http://localhost:6519",
         "Base URL of the proxy (http -> ws, https -> wss)."],
        ["local", None, "http://localhost:8080",
         "URL of the local service requests are forwarded to."],
        ["key", None, "proxy-client.pem",
         "EC P-256 private key (PEM); created with mode 0600 if missing. "
         "The key is the tunnel's identity: keep it to keep the hostname."],
        ["session", None, None,
         "Session string: derives a different clientID from the same key."],
        ["state", None, None,
         "Write {\"hostname\": ...} as JSON to this file after every "
         "registration."],
        ["ping-timeout", None, 20.0,
         "Reconnect when nothing has been heard from the proxy for this many "
         "seconds.", positive(float)],
        ["local-timeout", None, 25.0,
         "Seconds to wait for the local service (keep it below the proxy's "
         "request timeout).", positive(float)],
        ["ca-cert", None, None,
         "PEM file of the CA certificate(s) to verify an https proxy with "
         "(a private CA); by default the system's trust store is used. The "
         "proxy's hostname is always verified."],
        ["local-ca-cert", None, None,
         "PEM file of the CA certificate(s) to verify an https local service "
         "with (a private CA, or a self-signed certificate itself); by default "
         "the system's trust store is used. The --local URL's host name or IP "
         "address is always verified."],
        ["local-host", None, None,
         "The Host header sent to the local service [default: the --local "
         "URL's host]."],
        ["max-body", None, 512000,
         "Largest local response body forwarded, in bytes; larger ones are "
         "answered 502.", positive(int)],
        ["metrics", None, None,
         "Twisted server endpoint to serve Prometheus metrics on (GET "
         "/metrics), e.g. tcp:9465:interface=127.0.0.1. Without it nothing "
         "is measured."],
        ["inspect", None, None,
         "Serve the inspector (recent requests to the local service, live, "
         "with replay) on this Twisted endpoint, e.g. "
         "tcp:4040:interface=127.0.0.1 [default: off]. It shows visitors' "
         "headers and bodies: keep it on loopback."],
        ["inspect-keep", None, 100,
         "How many exchanges the inspector keeps.", positive(int)],
        ["inspect-body-limit", None, 65536,
         "How many bytes of each request and response body the inspector "
         "keeps; the rest is counted, not kept.", positive(int)],
    ]

    optFlags = [
        ["pool", None,
         "Join the pool of clients with the same key (and --session): the "
         "proxy spreads the hostname's requests over every member and keeps "
         "it answering while one is left. Without it, the newest client "
         "wins and the older one is closed."],
        ["local-insecure", None,
         "Do not verify an https local service's certificate at all (a "
         "self-signed certificate for another name); logs a warning at start. "
         "Prefer --local-ca-cert."],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["local-headers"] = []

    def opt_local_header(self, text):
        """
        "Name: value": add (or replace) this request header on every request and websocket sent to the local service (repeatable), e.g. an access token.
        """  # noqa: E501 (one line: twistd --help wraps it itself)
        from .rewrite import parse_local_header

        try:
            self["local-headers"].append(parse_local_header(text))
        except ValueError as e:
            raise usage.UsageError(str(e))

    def postOptions(self):
        try:
            websocket_url(self["proxy"])
        except ValueError as e:
            raise usage.UsageError("--proxy: {}".format(e))
        if self["ca-cert"] is not None:
            from .service import tls_options_for

            try:
                tls_options_for("localhost", self["ca-cert"])
            except (OSError, ValueError) as e:
                raise usage.UsageError("--ca-cert {}: {}".format(self["ca-cert"], e))
        if not self["local"].startswith(("http://", "https://")):
            raise usage.UsageError(
                "--local must be an http:// or https:// URL: {!r}".format(self["local"])
            )
        if self["local-ca-cert"] is not None:
            if self["local-insecure"]:
                raise usage.UsageError(
                    "--local-ca-cert and --local-insecure exclude each other")
            from ..tls import load_trust_root

            try:
                load_trust_root(self["local-ca-cert"])
            except (OSError, ValueError) as e:
                raise usage.UsageError("--local-ca-cert {}: {}".format(
                    self["local-ca-cert"], e))
        if self["metrics"] is not None:
            check_server_endpoint(self["metrics"], "--metrics")
        if self["inspect"] is not None:
            from twisted.internet import endpoints, reactor

            try:
                endpoints.serverFromString(reactor, self["inspect"])
            except Exception as e:
                raise usage.UsageError("bad --inspect {!r}: {}".format(self["inspect"], e))


def makeService(config, reactor=None):
    """
    Build the client service from parsed L{Options}; no I/O happens here.
    """
    if reactor is None:
        from twisted.internet import reactor
    from ..gctuning import tune
    from .service import TunnelClientService

    tune(reactor)

    log = None
    if config["inspect"] is not None:
        from .inspector import ExchangeLog

        log = ExchangeLog(reactor, keep=config["inspect-keep"],
                          body_limit=config["inspect-body-limit"])
    client = TunnelClientService(
        reactor,
        proxy_url=config["proxy"],
        local=config["local"],
        key_path=config["key"],
        session=config["session"],
        state_path=config["state"],
        ping_timeout=config["ping-timeout"],
        local_timeout=config["local-timeout"],
        max_body=config["max-body"],
        ca_cert=config["ca-cert"],
        local_headers=config["local-headers"],
        local_host=config["local-host"],
        local_ca_cert=config["local-ca-cert"],
        local_insecure=bool(config["local-insecure"]),
        pool=bool(config["pool"]),
        metrics=config["metrics"],
        recorder=log,
    )
    if log is not None:
        from twisted.internet import endpoints

        from .inspector import Replayer
        from .inspector_web import InspectorService

        InspectorService(
            endpoints.serverFromString(reactor, config["inspect"]), config["inspect"],
            log, Replayer(client.forwarder, log),
        ).setServiceParent(client)
    return client
