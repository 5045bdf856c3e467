"""
The client's side of an HTTP request: replay an http-request message
against the local service and turn what comes back into an http-response.

Requests run concurrently over a persistent connection pool.  Whatever goes
wrong -- service down, timeout, oversized answer -- the result is still an
http-response (502/504 with a plain-text reason): a request is never left
unanswered.
"""

from urllib.parse import urlsplit

from twisted.internet import protocol
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from ..compat import connection_header_names
from ..endpoints import client_endpoint
from ..features import MULTI_HEADER
from ..headers import headers_to_wire, wire_to_pairs
from ..messages import HttpResponse
from ..metrics import NO_CLIENT_METRICS
from ..tls import LOCAL_TLS_REFUSED, SYSTEM_TRUST, tls_failure_reason
from .http1 import LocalHTTP
from .inspector import NO_RECORDER
from .rewrite import LocalRewrite
from .urls import ESCAPES_PREFIX, PathEscapesPrefix, local_url

# What the client never forwards to the local service: Agent writes Host and
# Content-Length itself (once each), and the whole body is already here, so
# an Expect: 100-continue was the visitor's question to the proxy.  Agent
# adds nothing else: every other header reaches the local service exactly as
# often as the visitor sent it.
_DROP_FROM_REQUEST = frozenset(["host", "content-length", "expect"])
_NO_BODY_METHODS = frozenset(["GET", "HEAD", "DELETE", "OPTIONS", "TRACE"])


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body already in memory, written in one go.
    """

    def __init__(self, body):
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer):
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


def host_value(uri):
    """
    The Host header for the origin of C{uri} (a L{URI}), as Agent computes
    it: no port when it is the scheme's, an IPv6 address in brackets.
    """
    host = uri.host
    if isIPv6Address(host.decode("ascii", "replace")):
        host = b"[" + host + b"]"
    if (uri.scheme, uri.port) in ((b"http", 80), (b"https", 443)):
        return host
    return b"%s:%d" % (host, uri.port)


@implementer(IAgentEndpointFactory)
class LocalEndpoints:
    """
    Endpoints for the local service, built once per origin rather than for
    every request (Agent's default builds a HostnameEndpoint and IDNA-encodes
    the host each time); an IP address gets a plain TCP endpoint, which
    needs no name resolution thread for new pooled connections.

    @param endpoint: L{None}, or the one endpoint every local connection
        goes through (an in-process service, L{brickchain_proxy.client.inprocess.InProcessEndpoint}).
    @param tls: the L{ClientTLSPolicy} an C{https} service is verified with
        (its name or IP address as in the URL, whatever C{--local-host} says).
    """

    def __init__(self, reactor, timeout, endpoint=None, tls=SYSTEM_TRUST):
        self._reactor = reactor
        self._timeout = timeout
        self._endpoints = {}
        self._endpoint = endpoint
        self._tls = tls

    def endpointForURI(self, uri):
        if self._endpoint is not None:
            return self._endpoint
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = self._build(*key)
        return endpoint

    def _build(self, scheme, host, port):
        name = host.decode("ascii")
        if scheme == b"https":
            return client_endpoint(self._reactor, name, port, self._tls.creator(name),
                                   timeout=self._timeout)
        if scheme != b"http":
            raise ValueError("unsupported scheme {!r}".format(scheme))
        return client_endpoint(self._reactor, name, port, timeout=self._timeout)


class BodyTooLarge(Exception):
    """
    The local service's response body is over the limit.
    """


class _BoundedBody(protocol.Protocol):
    """
    Collect a response body up to C{limit} bytes; beyond that, stop reading
    and fail with L{BodyTooLarge}.
    """

    def __init__(self, limit):
        self._limit = limit
        self._chunks = []
        self._size = 0
        self.finished = Deferred(lambda _: self.abort())

    def abort(self):
        """
        Stop reading (the wait was cancelled or the body is too large).
        """
        finished, self.finished = self.finished, None
        if self.transport is not None:
            self.transport.stopProducing()
        return finished

    def dataReceived(self, data):
        if self.finished is None:
            return
        self._size += len(data)
        if self._size > self._limit:
            self.abort().errback(BodyTooLarge(self._size))
            return
        self._chunks.append(data)

    def connectionLost(self, reason):
        finished, self.finished = self.finished, None
        if finished is None:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            finished.callback(b"".join(self._chunks))
        else:
            finished.errback(reason)


def read_bounded(response, limit):
    """
    @return: a L{Deferred} of the whole body of C{response}, or failing with
        L{BodyTooLarge}; cancelling it stops the transfer.
    """
    length = response.length
    if isinstance(length, int) and length > limit:
        discard = _BoundedBody(0)
        response.deliverBody(discard)
        discard.abort()
        return _failed(BodyTooLarge(length))
    body = _BoundedBody(limit)
    finished = body.finished
    response.deliverBody(body)
    return finished


def _failed(exception):
    d = Deferred()
    d.errback(exception)
    return d


class LocalForwarder:
    """
    Sends tunnelled requests to the local service at C{local_url}.

    @param timeout: seconds before a request to the local service is given up
        (keep it below the proxy's request timeout, so the visitor gets our
        504 with a reason rather than the proxy's).
    @param max_body: largest response body forwarded; larger ones become 502.
    @param clock: the clock for the timeout (default: C{reactor}).
    @param endpoint: L{None} (connect to C{local_url}'s host and port), or
        the endpoint every local connection goes through (an in-process
        service, L{InProcessEndpoint}); C{local_url} then only gives the
        path prefix and the Host header.
    @param metrics: the L{IClientMetrics} tunnelled requests are counted in
        (streamed ones too, by L{streamed.LocalStreamedRequest}).
    @param recorder: the L{IExchangeRecorder} told of every request (the
        inspector's log; by default L{NO_RECORDER}).
    @param tls: the L{ClientTLSPolicy} for an C{https} local service
        (default: the system's trust store); local websockets use it too.
    """

    _log = Logger()

    def __init__(self, reactor, local_url, timeout=25.0, max_body=512000,
                 pool_size=64, clock=None, rewrite=None, endpoint=None,
                 metrics=NO_CLIENT_METRICS, recorder=None, tls=SYSTEM_TRUST):
        parts = urlsplit(local_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                "local URL must be http://host[:port][/prefix]: {!r}".format(local_url)
            )
        self._reactor = reactor
        self._clock = reactor if clock is None else clock
        #: headers and Host the operator adds (L{LocalRewrite})
        self.rewrite = rewrite if rewrite is not None else LocalRewrite()
        #: where requests are reported (L{inspector.IExchangeRecorder})
        self.recorder = recorder if recorder is not None else NO_RECORDER
        self._origin = "{}://{}".format(parts.scheme, parts.netloc)
        self._prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.max_body = max_body
        self.metrics = metrics
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = pool_size
        self.pool.cachedConnectionTimeout = 110
        #: how an https local service's certificate is verified
        self.tls = tls
        endpoints = LocalEndpoints(reactor, timeout, endpoint, tls)
        self._agent = Agent.usingEndpointFactory(reactor, endpoints, pool=self.pool)
        origin = URI.fromBytes(self._origin.encode("utf-8"))
        self._streamed_http = LocalHTTP(reactor, self._origin.encode("utf-8"),
                                        endpoints.endpointForURI(origin),
                                        host_value(origin), pool_size)
        #: the endpoint every local connection goes through, or L{None}
        self.endpoint = endpoint
        self._in_flight = set()

    @property
    def agent(self):
        """
        The HTTP client for the local service (persistent connections).
        """
        return self._agent

    def client_for(self, method):
        """
        The HTTP client for a streamed request with C{method}: L{LocalHTTP},
        but for HEAD (whose answer has no body, which only Agent's parser
        can be told).
        """
        return self._agent if method == b"HEAD" else self._streamed_http

    def url_for(self, message, features):
        """
        The local URL for a tunnelled request.
        """
        return local_url(self._origin + self._prefix, message, features)

    def log_escape(self, method, path):
        """
        Log a request refused because its path could leave the prefix.
        """
        self._log.warn(
            "refused {method} {path}: path escapes the local prefix {prefix}",
            method=method, path=path[:300], prefix=self._prefix + "/")

    def forward(self, message, features=frozenset(), exchange=None):
        """
        Replay C{message} (an L{HttpRequest}) locally, and report it to
        L{recorder}.

        @param exchange: the L{inspector.IExchange} to report to instead of
            a new one from L{recorder} (an inspector's replay).
        @return: a L{Deferred} that always fires with an L{HttpResponse}.
        """
        if exchange is None:
            exchange = self.recorder.start("http", message.method, message.url,
                                           message.query, message.headers, features)
        exchange.request_data(message.body)
        d = self._forward(message, features)
        d.addCallback(_recorded, exchange)
        return d

    def _forward(self, message, features):
        started = self._clock.seconds() if self.metrics.enabled else None
        try:
            url = self.url_for(message, features).encode("utf-8")
            headers = Headers()
            for name, values in wire_to_pairs(message.headers, _DROP_FROM_REQUEST):
                headers.setRawHeaders(name, values)
            self.rewrite.apply_to_headers(headers)
            body = message.body
            producer = (
                None
                if not body and message.method in _NO_BODY_METHODS
                else BytesProducer(body)
            )
            d = self._agent.request(
                message.method.encode("latin-1"), url, headers, producer
            )
        except PathEscapesPrefix as e:
            self.log_escape(message.method, e.path)
            return succeed(self._finished(
                _error(message, 400, ESCAPES_PREFIX), None, message, started))
        except ValueError as e:
            # A method or URL the HTTP client refuses (not a token, not
            # Latin-1, ...): the visitor's request is bad, not our code.
            self._log.warn("cannot forward request {id}: {error}",
                           id=message.id, error=str(e))
            return succeed(self._finished(
                _error(message, 502, "bad request for the local service: {}"
                       .format(e)), None, message, started))
        except Exception as e:
            self._log.failure("cannot forward request {id}", id=message.id)
            return succeed(self._finished(
                _error(message, 502, "bad request for the local service: {}"
                       .format(e)), None, message, started))
        d.addCallback(self._read, message, features)
        d.addTimeout(self.timeout, self._clock, onTimeoutCancel=_timed_out)
        d.addErrback(self._local_failed, message)
        self._in_flight.add(d)
        d.addBoth(self._finished, d, message, started)
        return d

    def _finished(self, result, d, message, started):
        self._in_flight.discard(d)
        if started is not None and isinstance(result, HttpResponse):
            self.metrics.local_request_finished(
                result.status, self._clock.seconds() - started,
                len(message.body), len(result.body))
        return result

    def _read(self, response, message, features):
        d = read_bounded(response, self.max_body)

        # Read now: the connection headers belong to the parser of this
        # response, which is dropped once the body is read.
        listed = connection_header_names(response)

        def done(body):
            headers = headers_to_wire(response.headers, MULTI_HEADER in features,
                                      listed)
            content_type = response.headers.getRawHeaders(b"content-type")
            return HttpResponse(
                id=message.id,
                headers=headers,
                content_type=(content_type[0].decode("latin-1")
                              if content_type else ""),
                status=response.code,
                body=body,
            )

        d.addCallback(done)
        return d

    def _local_failed(self, failure, message):
        if failure.check(TimeoutError):
            self._log.warn(
                "local service did not answer {method} {url} within {timeout} s",
                method=message.method, url=message.url, timeout=self.timeout,
            )
            return _error(message, 504, "the local service did not answer within "
                          "{:g} seconds".format(self.timeout))
        if failure.check(BodyTooLarge):
            self._log.warn(
                "local response to {method} {url} is over {limit} bytes",
                method=message.method, url=message.url, limit=self.max_body,
            )
            return _error(message, 502, "the local service's response is larger "
                          "than the tunnel's limit of {} bytes".format(self.max_body))
        why = tls_failure_reason(failure)
        if why is not None:
            self._log.error(
                "TLS verification of the local service failed for {method} {url}: "
                "{error} (verified against {trust})", method=message.method,
                url=message.url, error=why, trust=self.tls.describe())
            return _error(message, 502, LOCAL_TLS_REFUSED + self.tls.explain(why))
        self._log.warn(
            "local service failed for {method} {url}: {error}",
            method=message.method, url=message.url,
            error=failure.getErrorMessage() or failure.type.__name__,
        )
        return _error(message, 502, "the local service could not be reached: {}"
                      .format(failure.getErrorMessage() or failure.type.__name__))

    def close(self):
        """
        Give up requests still in flight (each still ends in an
        http-response, a 502) and close pooled connections.
        """
        for d in list(self._in_flight):
            d.cancel()
        self._streamed_http.close()
        return self.pool.closeCachedConnections()


def _recorded(response, exchange):
    exchange.response_head(response.status, response.headers)
    exchange.response_data(response.body)
    exchange.finished()
    return response


def _timed_out(result, timeout):
    """
    C{addTimeout}'s conversion: whatever cancelling the local request ended
    in -- Agent reports a cancelled request as C{ResponseNeverReceived}, a
    cancelled body read as C{CancelledError} -- the local service was too
    slow, which the visitor must see as 504, not as a 502 "unreachable".
    """
    return Failure(TimeoutError("no answer within {:g} seconds".format(timeout)))


def _error(message, status, text):
    return HttpResponse(
        id=message.id,
        headers={"Content-Type": "text/plain; charset=utf-8"},
        content_type="text/plain; charset=utf-8",
        status=status,
        body=(text + "\n").encode("utf-8"),
    )
