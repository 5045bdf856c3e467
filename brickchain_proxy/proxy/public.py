"""
A visitor's HTTP request through a tunnel: L{PublicTunnel} turns it into an
http-request message for the tunnel (after the shutdown, body-size, rate
and pending limits) and the tunnel's http-response back into the answer;
a websocket upgrade is handed to L{visitor_ws}.  Every refusal is a
plain-text answer that says why.
"""

from urllib.parse import unquote

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.web import server

from ..compat import visitor_gone
from ..errors import INTERNAL_ERROR, failure_answer
from ..features import MULTI_HEADER, RAW_PATH
from ..headers import add_forwarded_headers, headers_to_wire, wire_to_pairs
from ..messages import HttpRequest, encode
from ..wsutil import is_websocket_upgrade
from .budget import TUNNEL, ByteBudget
from .plain import finish_plain, plain
from .streamed import FALL_BACK, StreamedExchange
from .visitor_ws import accept_visitor

# Host is this hop's; the proxy has read the whole body, so it answered any
# "Expect: 100-continue" itself.
_DROP_FROM_REQUEST = frozenset(["host", "expect"])
_DROP_FROM_RESPONSE = frozenset(["content-length"])
_DROP_FROM_HEAD_RESPONSE = frozenset()
#: A Content-Length this large (Twisted accepts any) does not fit a head's
#: JSON number: the buffered path answers it with 413.
_MAX_STREAM_LENGTH = 2 ** 53

#: The default byte budgets of buffered bodies held for pending requests
#: (C{--max-pending-bytes}, C{--max-tunnel-pending-bytes}).
DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_TUNNEL_PENDING_BYTES = 32 * 1024 * 1024

#: The access log.  Module-level: as a class attribute, Logger.__get__
#: would rename its namespace after the class.
_ACCESS = Logger(namespace="brickproxy.access")


class PublicTunnel:
    """
    Turns a public HTTP request into an http-request message for a tunnel,
    and its http-response back into the HTTP answer.
    """

    _log = Logger()

    def __init__(self, hub, limiter, max_body, request_timeout,
                 visitor_factory=None, max_pending=1000, max_websockets=1000,
                 access_log=False, clock=None, trust_forwarded=False,
                 max_stream_body=0, stream_idle_timeout=300.0, budget=None):
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
        #: the largest streamed request or response body (0: no limit)
        self.max_stream_body = max_stream_body
        #: seconds a stream may carry nothing before it is closed (0: never)
        self.stream_idle_timeout = stream_idle_timeout
        #: clientID -> HTTP requests of that tunnel being answered here
        self.in_flight = {}
        #: the bytes of buffered bodies held for pending requests
        #: (L{ByteBudget})
        self.budget = budget if budget is not None else ByteBudget(
            DEFAULT_MAX_PENDING_BYTES, DEFAULT_MAX_TUNNEL_PENDING_BYTES)
        #: set when the proxy shuts down: new requests get 503
        self.shutting_down = False
        self._idle_waiters = []

    @property
    def clock(self):
        return self._clock

    @property
    def request_timeout(self):
        return self._request_timeout

    def start_streamed(self, request, client_id, raw_path, length, method, uri,
                       version):
        """
        Answer C{request} (whose headers are in, its body not yet) on a
        stream of its tunnel's connection, if that connection is on this
        instance and speaks streams.  Everything else -- refusals too --
        takes the buffered path, which answers them.

        @return: the L{StreamedExchange}, or L{None}.
        """
        if self.shutting_down or is_websocket_upgrade(request):
            return None
        connection = self._hub.pick(client_id)
        if connection is not None and getattr(connection, "streams", None) is None:
            return None
        if self.in_flight.get(client_id, 0) >= self.max_pending:
            return None
        if length is not None and (length >= _MAX_STREAM_LENGTH or (
                self.max_stream_body and length > self.max_stream_body)):
            return None  # 413 from the buffered path, without reading it
        request.method, request.uri, request.clientproto = method, uri, version
        exchange = StreamedExchange(self, request, client_id, connection, raw_path,
                                    length)
        if connection is not None:
            if self.access_log:
                self._log_access(request, client_id)
            decided = self._limiter.check(client_id)
        else:
            # Held elsewhere, maybe: streams cross the bus when the tunnel
            # speaks them; if not (or nobody holds it), the exchange gives
            # the request back to the buffered path.
            decided = self._hub.remote_tunnel(client_id)
            decided.addCallback(self._remote_found, exchange)
        request.exchange = exchange
        exchange.start_when_allowed(decided, method, uri)
        return request.exchange

    def _remote_found(self, remote, exchange):
        if remote is None:
            return FALL_BACK
        exchange.connection = remote
        if self.access_log:
            self._log_access(exchange.request, exchange.client_id)
        return self._limiter.check(exchange.client_id)

    def exchange_started(self, exchange):
        self.in_flight[exchange.client_id] = self.in_flight.get(exchange.client_id, 0) + 1

    def exchange_done(self, exchange):
        self._done(None, exchange.client_id)

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
            return plain(request, 503, "the proxy is shutting down; retry\n")
        # A tunnel nobody holds costs nothing: no rate-limit bucket (nor,
        # on Redis, a key) for names a stranger makes up.
        known = self._hub.tunnel_known(client_id)
        known.addCallback(self._check_limit, request, client_id, raw_path)
        known.addErrback(self._internal_error, request)
        return server.NOT_DONE_YET

    def _check_limit(self, known, request, client_id, raw_path):
        if visitor_gone(request):
            return
        if not known:
            if is_websocket_upgrade(request):
                # The visitor expected to switch protocols: end it here.
                request.setHeader(b"Connection", b"close")
                if request.channel is not None:
                    request.channel.persistent = False
            finish_plain(request, 502, "tunnel {} is not connected\n".format(client_id))
            return
        if request.body_too_large:
            # After the lookup: a visitor whose tunnel is offline learns
            # that, not that a retry with the same body is hopeless.
            finish_plain(request, 413,
                         "request body is larger than the proxy's limit of {} bytes\n"
                         .format(self._max_body))
            return
        decided = self._limiter.check(client_id)
        decided.addCallback(self._after_limit, request, client_id, raw_path)
        decided.addErrback(self._internal_error, request)

    def _after_limit(self, wait, request, client_id, raw_path):
        if wait is not None:
            request.setHeader(b"Retry-After", b"%d" % (int(wait) + 1,))
            finish_plain(
                request, 429,
                "too many requests for this tunnel; retry in {} s\n"
                .format(int(wait) + 1),
            )
            return server.NOT_DONE_YET
        if visitor_gone(request):
            return server.NOT_DONE_YET
        features = self._hub.encoding_features(client_id)
        if self._visitor_factory is not None and is_websocket_upgrade(request):
            if self._hub.websockets.count(client_id) >= self.max_websockets:
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
        body = request.content.getvalue()
        reservation, refused_by = self.budget.reserve(client_id, len(body))
        if reservation is None:
            return self._over_budget(request, client_id, len(body), refused_by)
        # Given back exactly once, however the request ends: answered,
        # failed, timed out (504) or the visitor gone.
        request.notifyFinish().addBoth(lambda _: reservation.release())
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
            body=body,
        )
        d = self._hub.request(client_id, message.id, encode(message))
        self.in_flight[client_id] = in_flight + 1
        d.addBoth(self._done, client_id)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(
            self._respond,
            self._failed,
            callbackArgs=(request, client_id, reservation),
            errbackArgs=(request, client_id),
        )
        d.addErrback(lambda f: self._log.failure(
            "answering a tunnelled request failed", f))
        return server.NOT_DONE_YET

    def _done(self, result, client_id):
        remaining = self.in_flight[client_id] - 1
        if remaining:
            self.in_flight[client_id] = remaining
        else:
            del self.in_flight[client_id]
            if not self.in_flight:
                waiters, self._idle_waiters = self._idle_waiters, []
                for waiter in waiters:
                    waiter.callback(None)
        return result

    def when_idle(self):
        """
        @return: a L{Deferred} that fires once no tunnelled HTTP request is
            being answered (at once if none is); cancelling it stops the
            wait.
        """
        if not self.in_flight:
            return succeed(None)
        d = Deferred(lambda d: self._idle_waiters.remove(d))
        self._idle_waiters.append(d)
        return d

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
        if not visitor_gone(request) and not request.finished:
            finish_plain(request, 500, "internal error in the proxy\n")

    def _over_budget(self, request, client_id, size, refused_by):
        budget = self.budget
        if refused_by == TUNNEL:
            held, limit, where = (budget.by_tunnel.get(client_id, 0), budget.per_tunnel,
                                  "this tunnel")
        else:
            held, limit, where = budget.total, budget.per_process, "this proxy"
        self._log.warn(
            "tunnel {client_id}: request with a body of {size} bytes refused, "
            "{held} bytes already held for requests waiting on {where} (limit "
            "{limit})", client_id=client_id, size=size, held=held, where=where,
            limit=limit)
        request.setHeader(b"Retry-After", b"1")
        finish_plain(request, 503, "too many request bytes waiting for {} (limit {} "
                     "bytes); retry\n".format(where, limit))
        return server.NOT_DONE_YET

    def _respond(self, response, request, client_id, reservation):
        if visitor_gone(request):
            return
        # The decoded answer is held until the visitor's connection has
        # taken it: it counts until the request finishes.
        reservation.grow(len(response.body))
        status = response.status
        if not 200 <= status <= 599:
            finish_plain(
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
            finish_plain(
                request, 502,
                "the tunnelled response is larger than the proxy's limit of "
                "{} bytes\n".format(self._max_body),
            )
            return
        request.setResponseCode(status)
        # HEAD and 304 keep the tunnel's Content-Length (what a GET would
        # get); a 204 has none (RFC 9110 8.6); every other answer gets the
        # length of the body it carries.
        head = request.method == b"HEAD" or status == 304
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
        if head:
            lengths = responseHeaders.getRawHeaders(b"content-length")
            if lengths and (len(lengths) > 1 or not lengths[0].isdigit()):
                responseHeaders.removeHeader(b"content-length")
            request.write(b"")
        elif status != 204:
            responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
            request.write(body)
        request.finish()

    def _failed(self, failure, request, client_id):
        if visitor_gone(request):
            return  # the visitor hung up; the pending entry is already gone
        answer = failure_answer(failure, client_id, self._request_timeout)
        if answer is None:
            if failure.check(CancelledError):
                return
            self._log.failure("tunnelled request failed", failure)
            answer = INTERNAL_ERROR
        code, text = answer
        finish_plain(request, code, text + "\n")


def _over_limit(request, client_id, limit, log_format, text):
    PublicTunnel._log.warn("tunnel {client_id}: " + log_format,
                           client_id=client_id, limit=limit)
    finish_plain(request, 503, "{} (limit {})\n".format(text, limit))
    return server.NOT_DONE_YET
