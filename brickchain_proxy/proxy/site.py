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
from urllib.parse import unquote

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from .. import __version__
from ..features import MULTI_HEADER, RAW_PATH
from ..headers import add_forwarded_headers, headers_to_wire, wire_to_pairs
from ..messages import HttpRequest, encode
from ..errors import INTERNAL_ERROR, failure_answer
from ..wsutil import is_websocket_upgrade
from .visitor_ws import accept_visitor

# Host is this hop's; the proxy has read the whole body, so it answered any
# "Expect: 100-continue" itself.
_DROP_FROM_REQUEST = frozenset(["host", "expect"])
# One DNS label: letters, digits and inner hyphens, 1 to 63 characters.
_DNS_LABEL = re.compile(r"\A[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
#: What Root.tunnel_for_host returns for a malformed tunnel hostname.
INVALID_HOST = object()
_DROP_FROM_RESPONSE = frozenset(["content-length"])
_DROP_FROM_HEAD_RESPONSE = frozenset()
#: The access log.  Module-level: as a class attribute, Logger.__get__
#: would rename its namespace after the class.
_ACCESS = Logger(namespace="brickproxy.access")


class BoundedRequest(server.Request):
    """
    A request whose body is kept in memory up to the site's C{max_body};
    beyond that the rest is counted and discarded, and
    C{body_too_large} is set, so the resource can answer 413 without ever
    truncating.
    """

    body_too_large = False
    _body_length = 0

    def gotLength(self, length):
        self.content = io.BytesIO()
        max_body = self.channel.site.max_body
        if length is not None and length > max_body:
            self.body_too_large = True

    def processingFailed(self, reason):
        """
        A bug answered as 500 in plain text (Twisted's page is HTML), with
        the traceback in the log.
        """
        self._log.failure("request processing failed", failure=reason)
        if not self.finished and not self._disconnected:
            _finish_plain(self, 500, "internal error in the proxy\n")
        return reason

    def handleContentChunk(self, data):
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
                 max_header_bytes=16384, idle_timeout=75):
        server.Site.__init__(self, resource, reactor=reactor, timeout=idle_timeout)
        self.max_body = max_body
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self._channels = weakref.WeakSet()

    def buildProtocol(self, addr):
        channel = server.Site.buildProtocol(self, addr)
        # Site returns a wrapper (_GenericHTTPChannelProtocol) that does not
        # pass these on: set them on the HTTPChannel behind it.
        http_channel = getattr(channel, "_channel", channel)
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

        http_channel._respondToBadRequestAndDisconnect = refuse_and_log
        return channel

    def log(self, request):
        pass

    def close_idle_connections(self):
        """
        Close the visitor connections that are between requests (kept alive):
        once the proxy has stopped, nothing would ever answer on them.
        Connections handed over to a websocket are not ours any more.
        """
        for channel in list(self._channels):
            if channel.transport is not None and not channel.requests:
                channel.transport.loseConnection()


class PublicTunnel:
    """
    Turns a public HTTP request into an http-request message for a tunnel,
    and its http-response back into the HTTP answer.
    """

    _log = Logger()

    def __init__(self, hub, limiter, max_body, request_timeout,
                 visitor_factory=None, max_pending=1000, max_websockets=1000,
                 access_log=False, clock=None, trust_forwarded=False):
        self._hub = hub
        self._limiter = limiter
        self._max_body = max_body
        self._request_timeout = request_timeout
        self._visitor_factory = visitor_factory
        self.max_pending = max_pending
        self.max_websockets = max_websockets
        self.access_log = access_log
        self.trust_forwarded = trust_forwarded
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock
        #: clientID -> HTTP requests of that tunnel being answered here
        self.in_flight = {}
        #: set when the proxy shuts down: new requests get 503
        self.shutting_down = False

    def in_flight_total(self):
        """
        How many tunnelled HTTP requests are being answered right now.
        """
        return sum(self.in_flight.values())

    def forward(self, request, client_id, raw_path):
        """
        Forward C{request} to tunnel C{client_id}; C{raw_path} is the path as
        the visitor sent it, less any C{/proxy/request/<id>} prefix.
        """
        if self.access_log:
            self._log_access(request, client_id)
        if self.shutting_down:
            request.setHeader(b"Connection", b"close")
            # twisted.web sends that header but keeps the connection open;
            # whoever sends "close" must close (RFC 7230 section 6.6).
            if request.channel is not None:
                request.channel.persistent = False
            return _plain(request, 503, "the proxy is shutting down; retry\n")
        if request.body_too_large:
            return _plain(
                request, 413,
                "request body is larger than the proxy's limit of {} bytes\n"
                .format(self._max_body),
            )
        wait = self._limiter.check(client_id)
        if isinstance(wait, Deferred):
            # The shared (Redis) limiter answers asynchronously.
            wait.addCallback(self._after_limit, request, client_id, raw_path)
            wait.addErrback(self._internal_error, request)
            return server.NOT_DONE_YET
        return self._after_limit(wait, request, client_id, raw_path)

    def _after_limit(self, wait, request, client_id, raw_path):
        if wait is not None:
            request.setHeader(b"Retry-After", b"%d" % (int(wait) + 1,))
            _finish_plain(
                request, 429,
                "too many requests for this tunnel; retry in {} s\n"
                .format(int(wait) + 1),
            )
            return server.NOT_DONE_YET
        if request._disconnected:
            return server.NOT_DONE_YET
        features = self._hub.encoding_features(client_id)
        if self._visitor_factory is not None and is_websocket_upgrade(request):
            if self._hub.stream_count(client_id) >= self.max_websockets:
                return _over_limit(request, client_id, self.max_websockets,
                                   "visitor websocket refused, {limit} open",
                                   "too many websockets open on this tunnel")
            return accept_visitor(request, self._visitor_factory, client_id,
                                  raw_path, features, self.trust_forwarded)
        in_flight = self.in_flight.get(client_id, 0)
        if in_flight >= self.max_pending:
            return _over_limit(request, client_id, self.max_pending,
                               "request refused, {limit} already waiting",
                               "too many requests waiting for this tunnel")
        headers = headers_to_wire(
            request.requestHeaders, MULTI_HEADER in features, _DROP_FROM_REQUEST
        )
        add_forwarded_headers(request, headers, self.trust_forwarded)
        raw_query = request.uri.partition(b"?")[2]
        path = raw_path.decode("utf-8", "replace")
        message = HttpRequest(
            url=path if RAW_PATH in features else unquote(path, errors="replace"),
            query=raw_query.decode("utf-8", "replace"),
            headers=headers,
            method=request.method.decode("latin-1"),
            body=request.content.getvalue(),
        )
        d = self._hub.request(client_id, message.id, encode(message))
        self.in_flight[client_id] = in_flight + 1
        d.addBoth(self._done, client_id)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(
            self._respond,
            self._failed,
            callbackArgs=(request, client_id),
            errbackArgs=(request, client_id),
        )
        d.addErrback(self._log.failure, "answering a tunnelled request failed")
        return server.NOT_DONE_YET

    def _done(self, result, client_id):
        remaining = self.in_flight[client_id] - 1
        if remaining:
            self.in_flight[client_id] = remaining
        else:
            del self.in_flight[client_id]
        return result

    def _log_access(self, request, client_id):
        started = self._clock.seconds()

        def finished(result):
            _ACCESS.info(
                "{client_id} {method} {path} {status} {bytes} {duration:.4f}",
                client_id=client_id,
                method=request.method.decode("latin-1"),
                path=request.uri.decode("latin-1"),
                status=request.code,
                bytes=request.sentLength,
                duration=self._clock.seconds() - started,
                peer=getattr(request.getClientAddress(), "host", None),
                disconnected=result is not None,
            )

        request.notifyFinish().addBoth(finished)

    def _internal_error(self, failure, request):
        self._log.failure("tunnelled request failed", failure)
        if not request._disconnected and not request.finished:
            _finish_plain(request, 500, "internal error in the proxy\n")

    def _respond(self, response, request, client_id):
        if request._disconnected:
            return
        status = response.status
        if not 200 <= status <= 599:
            _finish_plain(
                request, 502,
                "the tunnel client sent an invalid status ({})\n".format(status),
            )
            return
        body = response.body
        if len(body) > self._max_body:
            self._log.warn(
                "tunnel {client_id}: response body of {size} bytes over the "
                "limit of {limit}", client_id=client_id, size=len(body),
                limit=self._max_body,
            )
            _finish_plain(
                request, 502,
                "the tunnelled response is larger than the proxy's limit of "
                "{} bytes\n".format(self._max_body),
            )
            return
        request.setResponseCode(status)
        head = request.method == b"HEAD"
        responseHeaders = request.responseHeaders
        for name, values in wire_to_pairs(
            response.headers,
            _DROP_FROM_HEAD_RESPONSE if head else _DROP_FROM_RESPONSE,
        ):
            responseHeaders.setRawHeaders(name, values)
        if response.content_type and not responseHeaders.hasHeader(b"content-type"):
            responseHeaders.setRawHeaders(
                b"Content-Type", [response.content_type.encode("utf-8")]
            )
        request.defaultContentType = None
        if not head:
            responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
            request.write(body)
        else:
            # HEAD keeps the tunnel's Content-Length (what a GET would get),
            # but only one that is valid.
            lengths = responseHeaders.getRawHeaders(b"content-length")
            if lengths and (len(lengths) > 1 or not lengths[0].isdigit()):
                responseHeaders.removeHeader(b"content-length")
            request.write(b"")
        request.finish()

    def _failed(self, failure, request, client_id):
        if request._disconnected:
            return  # the visitor hung up; the pending entry is already gone
        answer = failure_answer(failure, client_id, self._request_timeout)
        if answer is None:
            if failure.check(CancelledError):
                return
            self._log.failure("tunnelled request failed", failure)
            answer = INTERNAL_ERROR
        code, text = answer
        _finish_plain(request, code, text + "\n")


def _over_limit(request, client_id, limit, log_format, text):
    PublicTunnel._log.warn("tunnel {client_id}: " + log_format,
                           client_id=client_id, limit=limit)
    _finish_plain(request, 503, "{} (limit {})\n".format(text, limit))
    return server.NOT_DONE_YET


def _peer(address):
    host = getattr(address, "host", None)
    return "{}:{}".format(host, address.port) if host else str(address)


def _plain(request, code, text):
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return text.encode("utf-8")


def _finish_plain(request, code, text):
    body = _plain(request, code, text)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    request.finish()


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
        raw_path = request.uri.partition(b"?")[0]
        # ["", "proxy", "request", "<id>", "rest..."]
        parts = raw_path.split(b"/", 4)
        rest = b"/" + parts[4] if len(parts) == 5 else b"/"
        request.tunnel_route = (name.decode("utf-8", "replace").lower(), rest)
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
            return _plain(request, 405, "this page only answers GET and HEAD\n")
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
        return _plain(request, self._code, self._text)


_NOT_FOUND = PlainError(404, "not found on this proxy")


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
        label = host[: -len(suffix)]
        if not label or "." in label:
            return None
        if _DNS_LABEL.match(label) is None:
            return INVALID_HOST
        return label


def build_site(domain, hub, limiter, subscribe_resource, max_body,
               request_timeout, reactor=None, visitor_factory=None,
               max_pending=1000, max_websockets=1000, max_headers=100,
               max_header_bytes=16384, idle_timeout=75, access_log=False,
               trust_forwarded=False):
    """
    The proxy's public L{PublicSite}; its tunnel side is C{site.tunnel}.
    """
    tunnel = PublicTunnel(
        hub, limiter, max_body, request_timeout, visitor_factory,
        max_pending=max_pending, max_websockets=max_websockets,
        access_log=access_log, clock=reactor, trust_forwarded=trust_forwarded,
    )
    tunnel_resource = TunnelResource(tunnel)
    root = Root(domain, tunnel_resource)
    root.putChild(b"", InfoResource(domain))
    proxy = Directory()
    proxy.putChild(b"subscribe", subscribe_resource)
    proxy.putChild(b"request", PathRouter(tunnel_resource))
    root.putChild(b"proxy", proxy)
    site = PublicSite(root, max_body, reactor=reactor, max_headers=max_headers,
                      max_header_bytes=max_header_bytes, idle_timeout=idle_timeout)
    site.tunnel = tunnel
    return site
