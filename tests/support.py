"""
Fixtures for end-to-end tests: a recording local service, a running proxy
with a registered tunnel client in front of it, a visitor HTTP client,
helpers that wait for conditions without sleeping, and one that picks log
events.

Everything listens on real loopback sockets (127.0.0.1, port 0) and uses the
global reactor.  Every fixture registers its own cleanups, and those cleanups
wait until every socket they opened is closed and every timer they started is
gone, so trial's dirty-reactor check keeps meaning "the code under test left
something behind".
"""

import hashlib
import json
import os
import random

import attr
import treq
from twisted.internet import defer, reactor, task
from twisted.web import http, server
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource

from brickchain_proxy.client.service import TunnelClientService
from brickchain_proxy.proxy.service import ProxyService

# -- waiting -----------------------------------------------------------------


@defer.inlineCallbacks
def wait_until(predicate, tries=500, interval=0.01, what=None):
    """
    Poll C{predicate} every C{interval} seconds until it returns something
    true, and return that; fail the test after C{tries} polls.
    """
    for _ in range(tries):
        result = predicate()
        if result:
            return result
        yield task.deferLater(reactor, interval, lambda: None)
    raise AssertionError(
        "condition not met after {:g} s: {}".format(
            tries * interval, what or getattr(predicate, "__name__", predicate)
        )
    )


def pseudo_random_bytes(n, seed=None):
    """
    C{n} deterministic pseudo-random bytes (the same for the same C{n} and
    C{seed}; C{seed} defaults to C{n}).
    """
    return random.Random(n if seed is None else seed).randbytes(n)


def sha256(data):
    """
    The hex SHA-256 of C{data}.
    """
    return hashlib.sha256(data).hexdigest()


# -- logs --------------------------------------------------------------------


def events_like(log, text, level=None):
    """
    The events in C{log} whose format string contains C{text}.
    """
    return [e for e in log
            if text in (e.get("log_format") or "")
            and (level is None or e.get("log_level") == level)]


# -- connection tracking -----------------------------------------------------


def track_connections(factory):
    """
    Record the transport of every connection C{factory} builds a protocol
    for, so a cleanup can close them and wait until they are gone.  Tracking
    the transport (not the protocol) keeps working when a protocol hands its
    transport over, as an HTTP channel does on a websocket upgrade.

    @return: a L{list} of transports, still-open ones and closed ones.
    """
    transports = []
    original = factory.buildProtocol

    def buildProtocol(addr):
        protocol = original(addr)
        if protocol is not None:
            make_connection = protocol.makeConnection

            def makeConnection(transport):
                transports.append(transport)
                return make_connection(transport)

            protocol.makeConnection = makeConnection
        return protocol

    factory.buildProtocol = buildProtocol
    return transports


def open_transports(transports):
    """
    The transports in C{transports} that are not closed yet.
    """
    return [t for t in transports if not getattr(t, "disconnected", False)]


@defer.inlineCallbacks
def close_connections(transports, grace_polls=200, strict=True):
    """
    Give open connections C{grace_polls} short turns (about a second in all)
    to close by themselves -- the peer may be hanging up right now -- then
    abort the rest and wait until they are closed.

    @param strict: fail (after aborting) if any connection had to be
        aborted: a service that keeps connections open after it was stopped
        is leaking them.
    """
    for _ in range(grace_polls):
        if not open_transports(transports):
            return
        yield task.deferLater(reactor, 0.005, lambda: None)
    leftover = open_transports(transports)
    for transport in leftover:
        transport.abortConnection()
    yield wait_until(lambda: not open_transports(transports),
                     what="connections closed")
    if strict:
        raise AssertionError(
            "connections still open after cleanup (aborted): {!r}".format(leftover)
        )


# -- the local service -------------------------------------------------------


@attr.s
class RecordedRequest:
    """
    One request as the local service saw it.

    @ivar uri: the raw request target (path and query) as bytes, exactly as
        it arrived.
    """

    method = attr.ib()
    uri = attr.ib()
    headers = attr.ib()
    body = attr.ib()

    @property
    def path(self):
        """
        The raw path, without the query.
        """
        return self.uri.partition(b"?")[0]

    @property
    def query(self):
        """
        The raw query string (C{b""} when there is none).
        """
        return self.uri.partition(b"?")[2]

    def header(self, name):
        """
        All values of header C{name} (L{str}), or C{[]}.
        """
        values = self.headers.getRawHeaders(name.encode("latin-1")) or []
        return [v.decode("latin-1") for v in values]


class RecordingResource(Resource):
    """
    A local service that records every request (L{requests}) and answers per
    route:

      - C{/echo}: JSON describing the request (method, uri, headers, body
        length and SHA-256);
      - C{/echo-body}: the request body, byte for byte, as
        C{application/octet-stream};
      - C{/status/<n>}: status C{n} (C{Location: /elsewhere} for 3xx);
      - C{/bytes/<n>}: C{pseudo_random_bytes(n)};
      - C{/big/<n>}: C{n} bytes of text;
      - C{/headers}: several C{Set-Cookie} headers plus hop-by-hop headers
        (C{Connection: X-Foo}, C{X-Foo}, C{Keep-Alive}) that must not reach
        a visitor, and C{X-Kept: yes} that must;
      - C{/slow}: answers after C{slow_delay} seconds if set, otherwise
        only when L{answer_slow} is called (or never: cleanup closes it);
      - anything else: the same JSON as C{/echo}.

    @ivar requests: every L{RecordedRequest}, in arrival order.
    """

    isLeaf = True

    def __init__(self, clock=reactor):
        Resource.__init__(self)
        self._clock = clock
        self.requests = []
        self.slow_delay = None
        self._slow = []
        self._timers = []
        self._arrival_waiters = []

    # -- for tests ---------------------------------------------------------

    def wait_for_request(self, path=None):
        """
        @return: a L{Deferred} firing with the next L{RecordedRequest} (whose
            raw path is C{path}, if given) to arrive from now on.
        """
        d = defer.Deferred(lambda d: self._arrival_waiters.remove((path, d)))
        self._arrival_waiters.append((path, d))
        return d

    def requests_to(self, path):
        """
        The recorded requests whose raw path is C{path} (bytes).
        """
        return [r for r in self.requests if r.path == path]

    def answer_slow(self, body=b"finally\n"):
        """
        Answer every C{/slow} request still waiting.
        """
        waiting, self._slow = self._slow, []
        for request in waiting:
            _finish(request, 200, body, b"text/plain")

    def stop(self):
        """
        Cancel timers; forget waiting C{/slow} requests (their connections
        are closed by the fixture).
        """
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []
        self._slow = []
        for _, d in list(self._arrival_waiters):
            d.cancel()

    # -- serving -----------------------------------------------------------

    def render(self, request):
        body = request.content.read()
        record = RecordedRequest(
            method=request.method,
            uri=request.uri,
            headers=request.requestHeaders.copy(),
            body=body,
        )
        self.requests.append(record)
        for path, d in list(self._arrival_waiters):
            if path is None or path == record.path:
                self._arrival_waiters.remove((path, d))
                d.callback(record)
        parts = record.path.split(b"/")
        route = parts[1] if len(parts) > 1 else b""
        argument = parts[2] if len(parts) > 2 else b""
        handler = getattr(self, "route_" + route.decode("latin-1").replace("-", "_"),
                          None)
        if handler is None:
            handler = self.route_echo
        return handler(request, record, argument)

    def route_echo(self, request, record, argument):
        description = {
            "method": record.method.decode("latin-1"),
            "uri": record.uri.decode("latin-1"),
            "headers": {
                name.decode("latin-1").lower(): [v.decode("latin-1") for v in values]
                for name, values in record.headers.getAllRawHeaders()
            },
            "body_length": len(record.body),
            "body_sha256": sha256(record.body),
        }
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(description).encode("utf-8")

    def route_echo_body(self, request, record, argument):
        request.setHeader(b"Content-Type", b"application/octet-stream")
        return record.body

    def route_status(self, request, record, argument):
        code = int(argument)
        request.setResponseCode(code)
        if 300 <= code < 400:
            request.setHeader(b"Location", b"/elsewhere")
        request.setHeader(b"Content-Type", b"text/plain")
        if code in http.NO_BODY_CODES:
            return b""
        return b"status %d\n" % (code,)

    def route_bytes(self, request, record, argument):
        request.setHeader(b"Content-Type", b"application/octet-stream")
        return pseudo_random_bytes(int(argument))

    def route_big(self, request, record, argument):
        request.setHeader(b"Content-Type", b"text/plain")
        n = int(argument)
        line = b"0123456789abcdef" * 4 + b"\n"
        return (line * (n // len(line) + 1))[:n]

    def route_headers(self, request, record, argument):
        headers = request.responseHeaders
        headers.setRawHeaders(b"Set-Cookie", [b"a=1; Path=/", b"b=2; HttpOnly"])
        headers.setRawHeaders(b"Connection", [b"X-Foo"])
        headers.setRawHeaders(b"X-Foo", [b"secret"])
        headers.setRawHeaders(b"Keep-Alive", [b"timeout=5"])
        headers.setRawHeaders(b"X-Kept", [b"yes"])
        headers.setRawHeaders(b"Content-Type", [b"text/plain"])
        return b"headers\n"

    def route_slow(self, request, record, argument):
        request.notifyFinish().addErrback(lambda _: None)
        if self.slow_delay is not None:
            timer = self._clock.callLater(
                self.slow_delay, _finish, request, 200, b"slow\n", b"text/plain"
            )
            self._timers.append(timer)
        else:
            self._slow.append(request)
        return server.NOT_DONE_YET


def _finish(request, code, body, content_type):
    if request._disconnected or request.finished:
        return
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    request.write(body)
    request.finish()


@defer.inlineCallbacks
def _stop_site(port, transports):
    yield port.stopListening()
    yield close_connections(transports)


def start_local_service(testcase, resource, tls=None):
    """
    Serve C{resource} on 127.0.0.1 on a free port until the end of the test.

    @param tls: server TLS options (a C{CertificateOptions}) to serve HTTPS
        with, or L{None} for plain HTTP.
    @return: the base URL, C{http://127.0.0.1:<port>} (C{https://} with
        C{tls}).
    """
    site = server.Site(resource)
    site.log = lambda request: None
    transports = track_connections(site)
    if tls is None:
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
    else:
        port = reactor.listenSSL(0, site, tls, interface="127.0.0.1")
    testcase.addCleanup(_stop_site, port, transports)
    if hasattr(resource, "stop"):
        testcase.addCleanup(resource.stop)
    return "{}://127.0.0.1:{}".format("http" if tls is None else "https",
                                      port.getHost().port)


def unused_local_url():
    """
    A C{http://127.0.0.1:<port>} URL nothing listens on (a port that was
    free a moment ago).
    """
    port = reactor.listenTCP(0, server.Site(Resource()), interface="127.0.0.1")
    number = port.getHost().port
    port.stopListening()
    return "http://127.0.0.1:{}".format(number)


# -- the proxy and the tunnel ------------------------------------------------


@attr.s
class Tunnel:
    """
    A running proxy with one registered tunnel client.

    @ivar proxy: the L{ProxyService}.
    @ivar client: the L{TunnelClientService}.
    @ivar port: the proxy's TCP port.
    @ivar client_id: the tunnel's clientID.
    @ivar domain: the proxy's domain.
    @ivar proxy_transports: every visitor/tunnel connection the proxy
        accepted (see L{track_connections}).
    """

    proxy = attr.ib()
    client = attr.ib()
    port = attr.ib()
    client_id = attr.ib()
    domain = attr.ib()
    proxy_transports = attr.ib()

    @property
    def base_url(self):
        """
        The proxy's own URL, C{http://127.0.0.1:<port>}.
        """
        return "http://127.0.0.1:{}".format(self.port)

    @property
    def host(self):
        """
        The Host header that routes to this tunnel: C{<clientID>.<domain>:<port>}.
        """
        return "{}.{}:{}".format(self.client_id, self.domain, self.port)

    def host_url(self, path="/"):
        """
        The URL for C{path} on the proxy; send it with C{Host: L{host}} to
        use host routing.
        """
        return self.base_url + path

    def path_url(self, path="/"):
        """
        The path-routed URL for C{path}: C{/proxy/request/<clientID><path>}.
        """
        return "{}/proxy/request/{}{}".format(self.base_url, self.client_id, path)


def start_proxy(testcase, port=0, domain="localhost", **proxy_kwargs):
    """
    Start a L{ProxyService} on 127.0.0.1:C{port} (with the in-memory bus
    unless C{bus_url} says otherwise) and stop it at the end of the test.

    @return: a L{Deferred} firing with C{(proxy, port_number, transports)}
        once it listens and its base URL names that port.
    """
    return defer.ensureDeferred(_start_proxy(testcase, port, domain, proxy_kwargs))


async def _start_proxy(testcase, port, domain, proxy_kwargs):
    proxy = ProxyService(
        reactor,
        ["tcp:{}:interface=127.0.0.1".format(port)],
        domain,
        "http://127.0.0.1:{}".format(port or 1),
        **proxy_kwargs,
    )
    transports = track_connections(proxy.site)
    await defer.maybeDeferred(proxy.startService)
    testcase.addCleanup(stop_proxy, proxy, transports)
    (listening,) = await proxy.when_listening()
    number = listening.getHost().port
    proxy.set_base("http://127.0.0.1:{}".format(number))
    return proxy, number, transports


@defer.inlineCallbacks
def stop_proxy(proxy, transports):
    """
    Stop C{proxy} (if still running) and wait until every connection it
    accepted is closed.
    """
    if proxy.running:
        yield proxy.stopService()
    yield close_connections(transports)


def start_client(testcase, proxy_url, local_url, **client_kwargs):
    """
    Start a L{TunnelClientService} with a fresh key in a temporary directory
    and stop it at the end of the test (before anything started earlier).

    @return: the started service (not yet registered: see
        C{when_registered}).
    """
    key_dir = testcase.mktemp()
    os.makedirs(key_dir)
    client = TunnelClientService(
        reactor, proxy_url, local_url, os.path.join(key_dir, "client.pem"),
        **client_kwargs,
    )
    client.startService()
    testcase.addCleanup(stop_client, client)
    return client


def stop_client(client):
    """
    Stop C{client} if it is still running.
    """
    if client.running:
        return client.stopService()


def start_tunnel(testcase, local_url, client_kwargs=None, domain="localhost",
                 **proxy_kwargs):
    """
    Start a proxy (domain C{domain}, 127.0.0.1, a free port, in-memory
    bus) and a tunnel client forwarding to C{local_url}; wait for the
    registration.  Cleanups stop the client first, then the proxy, and wait
    for both.

    @param client_kwargs: extra L{TunnelClientService} arguments
        (e.g. C{max_body}).
    @param proxy_kwargs: extra L{ProxyService} arguments
        (e.g. C{request_timeout}, C{max_body}, C{rate_limit}).
    @return: a L{Deferred} firing with a L{Tunnel}.
    """
    return defer.ensureDeferred(
        _start_tunnel(testcase, local_url, client_kwargs or {}, domain,
                      proxy_kwargs)
    )


async def _start_tunnel(testcase, local_url, client_kwargs, domain, proxy_kwargs):
    proxy, port, transports = await start_proxy(testcase, domain=domain,
                                                 **proxy_kwargs)
    client = start_client(
        testcase, "http://127.0.0.1:{}".format(port), local_url, **client_kwargs
    )
    registration = await client.when_registered()
    return Tunnel(
        proxy=proxy,
        client=client,
        port=port,
        client_id=registration.key_id,
        domain=domain,
        proxy_transports=transports,
    )


# -- the visitor -------------------------------------------------------------


def visitor(testcase):
    """
    A fresh L{treq.client.HTTPClient} (its own cookie jar and
    non-persistent connection pool) for the duration of the test.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    testcase.addCleanup(pool.closeCachedConnections)
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


def raw_headers(response, name):
    """
    All values of header C{name} in a treq response, as L{str}.
    """
    values = response.headers.getRawHeaders(name.encode("latin-1")) or []
    return [v.decode("latin-1") for v in values]


__all__ = [
    "wait_until", "pseudo_random_bytes", "sha256", "events_like", "track_connections",
    "open_transports", "close_connections", "RecordedRequest",
    "RecordingResource", "start_local_service", "unused_local_url", "Tunnel",
    "start_proxy", "stop_proxy", "start_client", "stop_client",
    "start_tunnel", "visitor", "raw_headers",
]
