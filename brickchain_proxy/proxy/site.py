"""
The proxy's public web side: a Resource tree.

  - C{GET /}: JSON with name and version;
  - C{/proxy/subscribe}: the websocket where tunnel clients connect;
  - C{/proxy/request/<clientID>/<path>} and any request whose Host is
    C{<clientID>.<domain>}: the tunnel (L{TunnelResource}).

The router (L{Root}) only decides; L{PublicTunnel} does the work.
"""

import io
import json
import re
import weakref

from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from .. import __version__, compat
from ..endpoints import no_delay
from ..metrics import ABORTED, NO_PROXY_METRICS
from .plain import finish_plain, plain
from .public import PublicTunnel

# A clientID: lower-case base32 of a SHA-256, without padding.
_CLIENT_ID = re.compile(r"\A[a-z2-7]{52}\Z")


def is_client_id(text):
    """
    Whether C{text} (L{str}, lower case) can be a clientID: 52 characters
    of base32 (the only ids a tunnel registers with).
    """
    return _CLIENT_ID.match(text) is not None
#: What Root.tunnel_for_host returns for a malformed tunnel hostname.
INVALID_HOST = object()


class BoundedRequest(server.Request):
    """
    A request whose body is kept in memory up to the site's C{max_body};
    beyond that the rest is counted and discarded, and
    C{body_too_large} is set, so the resource can answer 413 without ever
    truncating.
    """

    body_too_large = False
    _body_length = 0
    #: the L{streamed.StreamedExchange} when the request goes on a stream
    exchange = None
    #: C{(client_id, raw_path)}, set by the router for a tunnelled request
    tunnel_route = None
    #: body bytes received from the visitor (also those over the limit)
    received_length = 0
    #: C{(site, when the head came in)} while the site's metrics wait for
    #: the request to end
    _metering = None

    _length = None
    _request_line = None

    def gotLength(self, length):
        self.content = io.BytesIO()
        self._length = length
        site = self.channel.site
        if site.metrics.enabled:
            self._metering = (site, site.reactor.seconds())
        # Sets self.exchange when the request goes on a stream (and puts it
        # back to None if the stream turns out to be impossible at once).
        site.start_streamed(self, length)
        if self.exchange is not None:
            # The answer goes out in pieces as it arrives: no Nagle delay on
            # the last small one.
            no_delay(self.transport)
            return
        self._check_length()

    def _check_length(self):
        length = self._length
        if length is not None and length > self.channel.site.max_body:
            self.body_too_large = True

    def requestReceived(self, command, path, version):
        if self.exchange is None:
            return server.Request.requestReceived(self, command, path, version)
        # A streamed request was answered from its head on: the body is
        # complete now, and there is nothing to render.
        self._request_line = (command, path, version)
        self.exchange.body_complete()

    def take_buffered_path(self, early_chunks):
        """
        The exchange gave this request back (its tunnel does not speak
        streams after all): keep the body read so far (C{early_chunks}) and
        the rest as the buffered path does, and render the request once it
        is all in -- at once if it already is.
        """
        self.exchange = None
        self._check_length()
        for chunk in early_chunks:
            self.handleContentChunk(chunk)
        if self._request_line is not None:
            command, path, version = self._request_line
            server.Request.requestReceived(self, command, path, version)

    def processingFailed(self, reason):
        """
        A bug answered as 500 in plain text (Twisted's page is HTML), with
        the traceback in the log.
        """
        self._log.failure("request processing failed", failure=reason)
        if not self.finished and not compat.visitor_gone(self):
            finish_plain(self, 500, "internal error in the proxy\n")
        return reason

    def finish(self):
        transport = self.transport
        server.Request.finish(self)
        # The whole answer is written: send it now, not after every other
        # read of this reactor turn (see compat.flush_now).
        compat.flush_now(transport)

    def connectionLost(self, reason):
        server.Request.connectionLost(self, reason)
        metering, self._metering = self._metering, None
        if metering is not None and not self.finished:
            site, since = metering
            site.request_ended(self, since, ABORTED)

    def handleContentChunk(self, data):
        self.received_length += len(data)
        if self.exchange is not None:
            self.exchange.body_chunk(data)
            return
        if self.body_too_large:
            return
        self._body_length += len(data)
        if self._body_length > self.channel.site.max_body:
            self.body_too_large = True
            self.content = io.BytesIO()
            return
        self.content.write(data)


_BAD_REQUEST_TEXT = (
    b"bad request: malformed, or over the proxy's limits on header lines "
    b"and size\n")
_BAD_REQUEST_RESPONSE = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
    % (len(_BAD_REQUEST_TEXT), _BAD_REQUEST_TEXT))


class PublicSite(server.Site):
    """
    L{server.Site} with bounded request bodies, bounded request heads and an
    idle timeout for keep-alive connections.  twisted.web's own access log
    is off: L{PublicTunnel} writes a structured one when asked to.

    @param max_headers: most header lines in a request (more: 400).
    @param max_header_bytes: most bytes in a request's head (more: 400).
    @param idle_timeout: seconds an idle visitor connection is kept open.
    """

    requestFactory = BoundedRequest
    _log = Logger()

    def __init__(self, resource, max_body, reactor=None, max_headers=100,
                 max_header_bytes=16384, idle_timeout=75, metrics=NO_PROXY_METRICS):
        server.Site.__init__(self, resource, reactor=reactor, timeout=idle_timeout)
        self.max_body = max_body
        #: the L{IProxyMetrics} that tunnelled requests are counted in
        self.metrics = metrics
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self._channels = weakref.WeakSet()

    def buildProtocol(self, addr):
        channel = server.Site.buildProtocol(self, addr)
        # Site returns a wrapper (_GenericHTTPChannelProtocol) that does not
        # pass these on: set them on the HTTPChannel behind it.
        http_channel = compat.http_channel(channel)
        self._channels.add(http_channel)
        http_channel.maxHeaders = self.max_headers
        http_channel.totalHeadersSize = self.max_header_bytes
        # One header line may use the whole head (Twisted cuts lines at 16 KB).
        http_channel.MAX_LENGTH = max(http_channel.MAX_LENGTH, self.max_header_bytes)
        def refuse_and_log():
            # Twisted answers a malformed request, or one over the header
            # limits, with a bare 400 and no body; say why, in words, to the
            # visitor and in our log.
            self._log.warn(
                "400 to {peer}: malformed request or over the header limits "
                "({headers} lines / {size} bytes)", peer=_peer(addr),
                headers=self.max_headers, size=self.max_header_bytes)
            if http_channel.transport is not None:
                http_channel.transport.write(_BAD_REQUEST_RESPONSE)
            http_channel.loseConnection()

        compat.answer_bad_requests_with(http_channel, refuse_and_log)
        return channel

    def log(self, request):
        """
        Called by twisted.web as each request finishes, for its access log
        (off here: L{PublicTunnel} writes ours when asked): count the
        request in the metrics.
        """
        metering, request._metering = request._metering, None
        if metering is not None:
            self.request_ended(request, metering[1], request.code)

    def request_ended(self, request, since, code):
        """
        A request whose head came in at C{since} ended with C{code} (or
        L{ABORTED}): if it was for a tunnel, count it.  Requests the proxy
        answers itself (its own pages, malformed tunnel names) are not
        counted; neither are websocket upgrades it hands over.
        """
        if request.tunnel_route is None and request.exchange is None:
            return
        self.metrics.http_request_finished(
            code, self.reactor.seconds() - since, request.received_length,
            request.sentLength)

    def start_streamed(self, request, length):
        """
        Put C{request} on a stream at once, if it is for a tunnel that
        speaks streams (or may be held elsewhere); called when its headers
        are in.  The exchange is C{request.exchange} while it has the
        request.

        @return: its L{streamed.StreamedExchange}, or L{None} (the request
            takes the buffered path, and is routed and rendered as usual).
        """
        method, uri, version = compat.request_line(request)
        route = self.resource.route(request.getHeader(b"host"), uri)
        if route is None:
            return None
        client_id, raw_path = route
        return self.tunnel.start_streamed(request, client_id, raw_path, length,
                                          method, uri, version)

    def close_idle_connections(self):
        """
        Close the visitor connections that are between requests (kept alive):
        once the proxy has stopped, nothing would ever answer on them.
        Connections handed over to a websocket are not ours any more.
        """
        for channel in list(self._channels):
            if channel.transport is not None and not channel.requests:
                channel.transport.loseConnection()


def _peer(address):
    host = getattr(address, "host", None)
    return "{}:{}".format(host, address.port) if host else str(address)


class TunnelResource(Resource):
    """
    Leaf resource for a tunnelled request; the router put the tunnel and the
    raw path on the request as C{tunnel_route}.
    """

    isLeaf = True

    def __init__(self, tunnel):
        Resource.__init__(self)
        self._tunnel = tunnel

    def render(self, request):
        client_id, raw_path = request.tunnel_route
        return self._tunnel.forward(request, client_id, raw_path)


def _rest_of_path(raw_path):
    """
    What the tunnel sees of C{/proxy/request/<clientID><rest>}: C{<rest>},
    or C{/}.
    """
    # ["", "proxy", "request", "<id>", "rest..."]
    parts = raw_path.split(b"/", 4)
    return b"/" + parts[4] if len(parts) == 5 else b"/"


class PathRouter(Resource):
    """
    C{/proxy/request/<clientID>/<path>}: the next path segment names the
    tunnel; the rest of the raw path is what the tunnel sees.
    """

    def __init__(self, tunnel_resource):
        Resource.__init__(self)
        self._tunnel_resource = tunnel_resource

    def getChild(self, name, request):
        if not name:
            return PlainError(404, "no tunnel named: use /proxy/request/<clientID>/...")
        if not is_client_id(name.decode("latin-1").lower()):
            return _NOT_A_TUNNEL
        request.tunnel_route = (name.decode("latin-1").lower(),
                                _rest_of_path(request.uri.partition(b"?")[0]))
        return self._tunnel_resource

    def render(self, request):
        return _NOT_FOUND.render(request)


class InfoResource(Resource):
    """
    C{GET /}: who we are.
    """

    isLeaf = True

    def __init__(self, domain):
        Resource.__init__(self)
        self._body = json.dumps(
            {"name": "brickchain-proxy", "version": __version__, "domain": domain}
        ).encode("utf-8")

    def render(self, request):
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return plain(request, 405, "this page only answers GET and HEAD\n")
        request.setHeader(b"Content-Type", b"application/json")
        return self._body


class PlainError(Resource):
    """
    An error answer with a plain-text body, for every method: what the
    proxy itself refuses is said in words, never in an HTML page.
    """

    isLeaf = True

    def __init__(self, code, text):
        Resource.__init__(self)
        self._code = code
        self._text = text + "\n"

    def render(self, request):
        return plain(request, self._code, self._text)


_NOT_FOUND = PlainError(404, "not found on this proxy")
_NOT_A_TUNNEL = PlainError(
    404, "no such tunnel: a clientID is 52 characters of base32 (a-z, 2-7)")


class Directory(Resource):
    """
    A resource that only holds children: itself and unknown children are a
    plain-text 404.
    """

    def getChild(self, name, request):
        return _NOT_FOUND

    def render(self, request):
        return _NOT_FOUND.render(request)


_BAD_HOST = PlainError(400, "the Host header does not name a valid tunnel hostname")


class Root(Resource):
    """
    The router: Host C{<clientID>.<domain>} goes to the tunnel whatever the
    path; everything else is looked up in the children.
    """

    _log = Logger()

    def __init__(self, domain, tunnel_resource):
        Resource.__init__(self)
        self._suffix = ("." + domain.lower().strip(".")) if domain else None
        self._tunnel_resource = tunnel_resource

    def getChildWithDefault(self, name, request):
        if self._suffix is not None:
            client_id = self.tunnel_for_host(request.getHeader(b"host"))
            if client_id is INVALID_HOST:
                self._log.warn("400: malformed tunnel hostname {host!r}",
                               host=request.getHeader(b"host"))
                return _BAD_HOST
            if client_id is not None:
                request.tunnel_route = (client_id, request.uri.partition(b"?")[0])
                return self._tunnel_resource
        return Resource.getChildWithDefault(self, name, request)

    def getChild(self, name, request):
        return _NOT_FOUND

    def route(self, host, uri):
        """
        The tunnel a request with this Host header and target goes to, as
        C{(client_id, raw_path)}, or L{None} (not a well-formed tunnel
        route: the resource tree answers it).
        """
        raw_path = uri.partition(b"?")[0]
        if self._suffix is not None:
            client_id = self.tunnel_for_host(host)
            if client_id is INVALID_HOST:
                return None
            if client_id is not None:
                return client_id, raw_path
        parts = raw_path.split(b"/", 4)
        if len(parts) >= 4 and parts[1] == b"proxy" and parts[2] == b"request":
            client_id = parts[3].decode("latin-1").lower()
            if is_client_id(client_id):
                return client_id, _rest_of_path(raw_path)
        return None

    def tunnel_for_host(self, host):
        """
        The clientID a Host header names, or L{None}.  The port is ignored,
        and so is case.
        """
        if not host:
            return None
        host = host.decode("latin-1").lower()
        if host.startswith("["):
            return None  # an IPv6 literal is never a tunnel
        host = host.partition(":")[0].rstrip(".")
        suffix = self._suffix
        if not host.endswith(suffix):
            return None
        # Anything under the domain names a tunnel or nothing: it never
        # falls through to the proxy's own pages, and an id that cannot be
        # one is refused before the limiter or the directory see it.
        label = host[: -len(suffix)]
        if not is_client_id(label):
            return INVALID_HOST
        return label


def build_site(domain, hub, limiter, subscribe_resource, max_body,
               request_timeout, reactor=None, visitor_factory=None,
               max_pending=1000, max_websockets=1000, max_headers=100,
               max_header_bytes=16384, idle_timeout=75, access_log=False,
               trust_forwarded=False, max_stream_body=0, stream_idle_timeout=300.0,
               metrics=NO_PROXY_METRICS, budget=None):
    """
    The proxy's public L{PublicSite}; its tunnel side is C{site.tunnel}.

    @param budget: the L{ByteBudget} of buffered bodies (default: 256 MiB
        per process, 32 MiB per tunnel).
    """
    tunnel = PublicTunnel(
        hub, limiter, max_body, request_timeout, visitor_factory,
        max_pending=max_pending, max_websockets=max_websockets,
        access_log=access_log, clock=reactor, trust_forwarded=trust_forwarded,
        max_stream_body=max_stream_body, stream_idle_timeout=stream_idle_timeout,
        budget=budget,
    )
    tunnel_resource = TunnelResource(tunnel)
    root = Root(domain, tunnel_resource)
    root.putChild(b"", InfoResource(domain))
    proxy = Directory()
    proxy.putChild(b"subscribe", subscribe_resource)
    proxy.putChild(b"request", PathRouter(tunnel_resource))
    root.putChild(b"proxy", proxy)
    site = PublicSite(root, max_body, reactor=reactor, max_headers=max_headers,
                      max_header_bytes=max_header_bytes, idle_timeout=idle_timeout,
                      metrics=metrics)
    site.tunnel = tunnel
    return site
