"""
C{twistd brickproxy}: command-line options and service construction.
"""

from twisted.python import usage

from ..bus import validate_bus_url
from ..cli import check_server_endpoint, positive
from ..envconfig import EnvironmentOptions, environment_help
from ..ratelimit import parse_rate


class Options(EnvironmentOptions, usage.Options):
    """
    Options for C{twistd brickproxy}; each can also be set as
    C{BRICKPROXY_<OPTION>} in the environment (L{EnvironmentOptions}).
    """

    synopsis = "[options]"
    envPrefix = "BRICKPROXY_"
    # Endpoint strings and URLs hold no spaces.
    envRepeatable = {"listen": " ", "base": " "}
    envReserved = frozenset(["BRICKPROXY_OPTS"])
    longdesc = (
        "Run the tunnel proxy: tunnel clients connect to /proxy/subscribe, "
        "and public requests for <clientID>.<domain> (or "
        "/proxy/request/<clientID>/...) travel through their tunnel."
    ) + environment_help(
        "BRICKPROXY_",
        "BRICKPROXY_LISTEN and BRICKPROXY_BASE take several values separated "
        "by spaces or newlines.")

    optParameters = [
        ["domain", None, None,
         "Tunnels are served at <clientID>.DOMAIN (e.g. example.io; "
         "'localhost' works for local use). Without it only path routing "
         "(/proxy/request/<clientID>/...) works and Go clients, which "
         "need a hostname, refuse the registration."],
        ["bus", None, "memory",
         "Message bus: 'memory' (one process), or "
         "redis://[[user]:password@]host[:port][/db] (rediss:// for TLS) to "
         "share tunnels between several proxy instances, or "
         "redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER[/db] "
         "to find the Redis master through Redis Sentinel (and follow its "
         "failovers)."],
        ["bus-ca-cert", None, None,
         "PEM file of the CA certificate(s) to verify a rediss:// bus with (a "
         "private CA); by default the system's trust store is used. The URL's "
         "host name or IP address is always verified."],
        ["request-timeout", None, 30.0,
         "Seconds to wait for a tunnel's answer before replying 504.",
         positive(float)],
        ["max-body", None, 512000,
         "Largest request or response body in bytes: larger requests get "
         "413, larger responses 502 (never truncated).", positive(int)],
        ["rate-limit", None, "500/300",
         "Per-tunnel rate limit N/SECONDS: bursts of N requests, refilled "
         "at N per SECONDS; beyond it visitors get 429 with Retry-After."],
        ["ping-interval", None, 10.0,
         "Seconds of silence on a tunnel connection before the proxy sends "
         "a ping.", positive(float)],
        ["ws-ping-interval", None, 30.0,
         "Seconds between websocket pings to idle visitor websockets (keeps "
         "load balancers from cutting them; 0 disables).", float],
        ["registration-timeout", None, 10.0,
         "Seconds a new tunnel connection has to register before it is "
         "closed.", positive(float)],
        ["max-token-lifetime", None, None,
         "Longest lifetime (ttl) of a mandate token accepted, in seconds; "
         "longer ones are refused. Clients (ours and Go's) sign 60 s "
         "tokens, a new one for every registration. [default: 120]",
         positive(int)],
        ["max-registrations", None, 5,
         "Most registration attempts on one tunnel connection (each costs a "
         "signature check); the next closes it (1008).", positive(int)],
        ["authorized-keys", None, None,
         "File of clientIDs or key thumbprints (one per line, # comments) "
         "allowed to register; re-read on SIGHUP. Without it any client may "
         "register."],
        ["max-pending", None, 1000,
         "Most HTTP requests waiting for one tunnel's answers on this "
         "instance; beyond it visitors get 503.", positive(int)],
        ["max-pending-bytes", None, 256 * 1024 * 1024,
         "Most bytes of request and response bodies held in memory for "
         "buffered (v1) requests waiting on tunnels, across this process; "
         "beyond it visitors get 503 with Retry-After. 0: no limit.", int],
        ["max-tunnel-pending-bytes", None, 32 * 1024 * 1024,
         "The same for one tunnel. 0: no limit.", int],
        ["max-websockets", None, 1000,
         "Most visitor websockets open through one tunnel on this instance; "
         "beyond it upgrades get 503.", positive(int)],
        ["max-message", None, None,
         "Largest websocket message from a tunnel client in bytes (bigger "
         "ones close the connection with 1009) [default: 4/3 of --max-body "
         "+ 1 MiB].", positive(int)],
        ["max-headers", None, 100,
         "Most header lines in a visitor's request (more: 400).",
         positive(int)],
        ["max-header-bytes", None, 16384,
         "Largest request head from a visitor in bytes (larger: 400).",
         positive(int)],
        ["idle-timeout", None, 75.0,
         "Seconds an idle visitor HTTP connection is kept open.",
         positive(float)],
        ["v1-ws-pacing", None, None,
         "Seconds between two frames of one websocket sent to a v1 (Go) "
         "tunnel client, which reorders frames that reach it back to back; "
         "each such websocket then carries at most 1/SECONDS frames per "
         "second toward the client. 0 turns pacing off. Our own client is "
         "never paced. [default: 0.015]", float],
        ["max-stream-body", None, 0,
         "Largest request or response body in bytes on a stream (between this "
         "proxy and brickclient; larger requests get 413, larger responses "
         "are cut off by a reset). 0: no limit. --max-body still applies to "
         "v1 clients.", int],
        ["stream-idle-timeout", None, 300.0,
         "Seconds a streamed request may carry nothing in either direction "
         "before it is closed (a server-sent event stream that keeps "
         "sending is never cut). 0: never.", float],
        ["shutdown-grace", None, 10.0,
         "On SIGTERM, seconds in-flight requests get to finish before tunnel "
         "connections are closed (1001) and the proxy exits.", float],
        ["metrics", None, None,
         "Twisted server endpoint to serve Prometheus metrics on (GET "
         "/metrics), e.g. tcp:9464:interface=127.0.0.1; never on a --listen "
         "endpoint. Without it nothing is measured."],
    ]

    optFlags = [
        ["trust-forwarded", None,
         "The proxy sits behind a load balancer that terminates TLS and sets "
         "X-Forwarded-Proto/-Host: keep those instead of describing the "
         "last hop. Only when visitors cannot reach the proxy directly."],
        ["access-log", None,
         "Log one line per tunnelled request (tunnel, method, path, status, "
         "bytes, duration) at info level, namespace brickproxy.access."],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["listen"] = []
        self["bases"] = []

    def opt_base(self, url):
        """
        Public base URL of this proxy; mandate tokens must be issued for it (scheme, host, port and path prefix are compared). Repeatable, for other names or addresses clients use. [default: http://localhost:6519]
        """  # noqa: E501 (one line: twistd --help wraps it itself)
        self["bases"].append(url)

    def opt_listen(self, description):
        """
        Twisted server endpoint to serve on (repeatable), e.g. tcp:6519,
        tcp:6519:interface=127.0.0.1, ssl:443:privateKey=key.pem:certKey=crt.pem
        (an ssl: certificate and key are re-read on SIGHUP) [default: tcp:6519]
        """
        self["listen"].append(description)

    def postOptions(self):
        if self["shutdown-grace"] < 0:
            raise usage.UsageError("--shutdown-grace must be 0 or more")
        if self["v1-ws-pacing"] is None:
            from .service import V1_WS_PACING

            self["v1-ws-pacing"] = V1_WS_PACING
        if self["v1-ws-pacing"] < 0:
            raise usage.UsageError("--v1-ws-pacing must be 0 or more")
        if self["max-stream-body"] < 0 or self["stream-idle-timeout"] < 0:
            raise usage.UsageError(
                "--max-stream-body and --stream-idle-timeout must be 0 or more")
        process, tunnel = self["max-pending-bytes"], self["max-tunnel-pending-bytes"]
        if process < 0 or tunnel < 0:
            raise usage.UsageError(
                "--max-pending-bytes and --max-tunnel-pending-bytes must be 0 or more")
        for name, value in [("--max-pending-bytes", process),
                            ("--max-tunnel-pending-bytes", tunnel)]:
            if value and value < self["max-body"]:
                raise usage.UsageError(
                    "{} ({}) must be at least --max-body ({}): a request of "
                    "--max-body bytes would never pass".format(
                        name, value, self["max-body"]))
        if self["max-token-lifetime"] is None:
            from ..mandate_tokens import DEFAULT_MAX_TTL

            self["max-token-lifetime"] = DEFAULT_MAX_TTL
        if self["ws-ping-interval"] < 0:
            raise usage.UsageError("--ws-ping-interval must be 0 or more")
        if not self["listen"]:
            self["listen"] = ["tcp:6519"]
        try:
            self["rate-limit"] = parse_rate(self["rate-limit"])
        except ValueError as e:
            raise usage.UsageError("--rate-limit: {}".format(e))
        try:
            validate_bus_url(self["bus"])
        except ValueError as e:
            message = str(e)
            raise usage.UsageError(
                message if "--bus" in message else "--bus: " + message)
        if self["bus-ca-cert"] is not None:
            if not self["bus"].startswith("rediss://"):
                raise usage.UsageError("--bus-ca-cert needs a rediss:// --bus")
            from ..tls import load_trust_root

            try:
                load_trust_root(self["bus-ca-cert"])
            except (OSError, ValueError) as e:
                raise usage.UsageError("--bus-ca-cert {}: {}".format(
                    self["bus-ca-cert"], e))
        if not self["bases"]:
            self["bases"] = ["http://localhost:6519"]
        for base in self["bases"]:
            if not base.startswith(("http://", "https://")):
                raise usage.UsageError(
                    "--base must be an http:// or https:// URL: {!r}".format(base)
                )
        self["base"] = self["bases"][0]
        keys = self["authorized-keys"]
        if keys is not None:
            from .authorized import AuthorizedKeys

            try:
                AuthorizedKeys(keys).load()
            except (OSError, ValueError) as e:
                raise usage.UsageError(
                    "--authorized-keys {}: {}".format(keys, e))
        domain = self["domain"]
        if domain is not None:
            domain = domain.strip().strip(".").lower()
            if not domain or " " in domain or "/" in domain or ":" in domain:
                raise usage.UsageError("--domain must be a DNS name: {!r}"
                                       .format(self["domain"]))
            self["domain"] = domain
        for description in self["listen"]:
            check_server_endpoint(description, "--listen")
        if self["metrics"] is not None:
            check_server_endpoint(self["metrics"], "--metrics")


def makeService(config, reactor=None):
    """
    Build the proxy service from parsed L{Options}; no I/O happens here.
    """
    if reactor is None:
        from twisted.internet import reactor
    from ..gctuning import tune
    from .service import ProxyService

    tune(reactor)

    return ProxyService(
        reactor,
        listen=config["listen"],
        domain=config["domain"],
        base=config["base"],
        extra_bases=tuple(config["bases"][1:]),
        bus_url=config["bus"],
        bus_ca_cert=config["bus-ca-cert"],
        request_timeout=config["request-timeout"],
        max_body=config["max-body"],
        rate_limit=config["rate-limit"],
        ping_interval=config["ping-interval"],
        registration_timeout=config["registration-timeout"],
        ws_ping_interval=config["ws-ping-interval"],
        authorized_keys=config["authorized-keys"],
        max_pending=config["max-pending"],
        max_pending_bytes=config["max-pending-bytes"],
        max_tunnel_pending_bytes=config["max-tunnel-pending-bytes"],
        max_websockets=config["max-websockets"],
        max_message=config["max-message"],
        max_headers=config["max-headers"],
        max_header_bytes=config["max-header-bytes"],
        idle_timeout=config["idle-timeout"],
        shutdown_grace=config["shutdown-grace"],
        access_log=config["access-log"],
        trust_forwarded=config["trust-forwarded"],
        v1_ws_pacing=config["v1-ws-pacing"],
        max_stream_body=config["max-stream-body"],
        stream_idle_timeout=config["stream-idle-timeout"],
        metrics=config["metrics"],
        max_token_lifetime=config["max-token-lifetime"],
        max_registrations=config["max-registrations"],
        handle_signals=True,
    )
