"""
The client's HTTP/1.1 connections to the local service for streamed
requests: the request head written in one piece, the answer parsed by
httptools (the bindings of llhttp, node's parser, which uvicorn uses), and
connections kept alive in a pool.

It stands in for twisted.web's C{Agent} where the profile found Agent's
pure-Python parser and per-request set-up at about 40 % of the client's CPU
under load.  It has Agent's shape -- C{request(method, uri, headers,
bodyProducer)} fires with a response whose C{deliverBody} streams the body
with C{pauseProducing}/C{resumeProducing}, and failures are Agent's
(C{ResponseNeverReceived}, C{ResponseFailed}, C{PotentialDataLoss}) -- so
L{streamed.LocalStreamedRequest} drives either.  Agent is still used for
what this does not do: HEAD (llhttp cannot be told that the answer has no
body) and the buffered v1 path.

One request at a time per connection (no pipelining).  A connection goes
back to the pool when its answer is complete, the whole request body was
written and both sides keep it alive; a pooled connection the local
service closed while idle is dropped, and a request without a body that
finds it closed before any answer is sent again on a new connection, as
Agent does.
"""

import re

import httptools
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestGenerationFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from ..compat import write_now

#: Response headers about this connection only: kept out of
#: C{response.headers}, as Agent does.
CONNECTION_CONTROL = frozenset([
    b"content-length", b"connection", b"keep-alive", b"te", b"trailers",
    b"transfer-encoding", b"upgrade", b"proxy-connection",
])

#: Methods sent again on a new connection when a pooled one turns out to
#: be closed before any answer (without a body only), as Agent does.
_RETRYABLE = frozenset([b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"])

_TOKEN = re.compile(rb"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET = re.compile(rb"\A[\x21-\x7e]+\Z")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def request_head(method, target, host, headers, framing):
    """
    The head of a request, or L{ValueError} for a method, target or header
    that cannot be sent as it is.

    @param headers: C{(name, [values])} pairs, as
        C{Headers.getAllRawHeaders} gives them (without Host).
    @param framing: the Content-Length or Transfer-Encoding line, or C{b""}.
    """
    if not _TOKEN.match(method):
        raise ValueError("invalid method {!r}".format(method))
    if not _TARGET.match(target):
        raise ValueError("invalid request target {!r}".format(target))
    lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, host)]
    for name, values in headers:
        if not _TOKEN.match(name):
            raise ValueError("invalid header name {!r}".format(name))
        for value in values:
            if _BAD_VALUE.search(value):
                value = _BAD_VALUE.sub(b" ", value)
            lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(framing)
    lines.append(b"\r\n")
    return b"".join(lines)


class LocalResponse:
    """
    The head of the local service's answer, and its body to come.

    @ivar code: the status code.
    @ivar headers: a L{Headers} without the connection-control ones.
    @ivar length: the body's length, or C{UNKNOWN_LENGTH}.
    @ivar connection_tokens: the lower-case names the C{Connection} header
        listed (hop-by-hop by declaration).
    """

    def __init__(self, connection, code, headers, length, connection_tokens):
        self._connection = connection
        self.code = code
        self.headers = headers
        self.length = length
        self.connection_tokens = connection_tokens

    def deliverBody(self, protocol):
        """
        Stream the body to C{protocol}: C{makeConnection} with a transport
        for C{pauseProducing}, C{resumeProducing} and C{stopProducing},
        then C{dataReceived}, then C{connectionLost} with C{ResponseDone},
        C{PotentialDataLoss} (a body delimited by the connection's close)
        or C{ResponseFailed}.
        """
        self._connection.deliver_body(protocol)


class _BodyTransport:
    """
    What a body's protocol may do to the connection it is read from: only
    until the body has ended (the connection may carry the next request by
    the time its reader pauses or resumes again).
    """

    def __init__(self, connection):
        self._connection = connection

    def detach(self):
        self._connection = None

    def pauseProducing(self):
        connection = self._connection
        if connection is not None and connection.transport is not None:
            connection.transport.pauseProducing()

    def resumeProducing(self):
        connection = self._connection
        if connection is not None and connection.transport is not None:
            connection.transport.resumeProducing()

    def stopProducing(self):
        if self._connection is not None:
            self._connection.give_up()


class _ChunkedConsumer:
    """
    The consumer a body of unknown length is produced to: chunked framing.
    """

    def __init__(self, transport):
        self._transport = transport

    def write(self, data):
        if data:
            self._transport.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))

    def registerProducer(self, producer, streaming):
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self._transport.unregisterProducer()


class LocalConnection(Protocol):
    """
    One connection to the local service, one request at a time.
    """

    #: set by the pool: called with this connection when it may be reused
    release = None

    def __init__(self):
        self._parser = None
        self._answer = None  # the request's Deferred, until the head is in
        self._response = None
        self._body_protocol = None
        self._body_transport = None
        self._held = []  # body data before deliverBody
        self._ended = None  # how the body ended, before deliverBody
        self._head_fields = None
        self._upload_done = True
        self._message_done = False
        self._keep_alive = False
        self._delimited_by_close = False
        self._lost = False

    # -- the request -----------------------------------------------------

    def request(self, head, body, chunked):
        """
        Send C{head} (and C{body}, an C{IBodyProducer} or L{None}).

        @return: a L{Deferred} firing with a L{LocalResponse}; cancelling
            it closes the connection.
        """
        answer = self._answer = Deferred(lambda d: self.give_up())
        self._parser = httptools.HttpResponseParser(self)
        self._head_fields = []
        self._message_done = False
        self._keep_alive = False
        self._upload_done = body is None
        transport = self.transport
        write_now(transport, head)
        if body is not None:
            consumer = _ChunkedConsumer(transport) if chunked else transport
            consumer.registerProducer(body, True)
            try:
                produced = body.startProducing(consumer)
            except Exception:
                produced = None
                self._fail_upload(Failure(), consumer)
            if produced is not None:
                produced.addCallbacks(self._uploaded, self._fail_upload,
                                      callbackArgs=(consumer, chunked),
                                      errbackArgs=(consumer,))
        # Not self._answer: a body that failed at once has taken it.
        return answer

    def _uploaded(self, _, consumer, chunked):
        if self._lost:
            return
        consumer.unregisterProducer()
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        self._upload_done = True
        self._maybe_release()

    def _fail_upload(self, failure, consumer):
        if self._lost:
            return
        try:
            consumer.unregisterProducer()
        except RuntimeError:
            pass
        failed = Failure(RequestGenerationFailed([failure]))
        answer = self._take_answer()
        self.transport.abortConnection()
        if answer is not None:
            answer.errback(failed)

    def _take_answer(self):
        """
        The request's Deferred if it still waits for the head (not
        cancelled meanwhile), once.
        """
        answer, self._answer = self._answer, None
        if answer is None or answer.called:
            return None
        return answer

    def give_up(self):
        """
        The request is abandoned (cancelled, or its body no longer wanted):
        the connection cannot be reused.
        """
        if self._lost:
            return
        self._lost = True  # never reused, whatever still arrives
        if self.transport is not None:
            self.transport.abortConnection()

    # -- the answer (httptools' callbacks) -------------------------------

    def dataReceived(self, data):
        if self._parser is None:
            # Bytes from an idle connection: it cannot be trusted again.
            self.transport.abortConnection()
            return
        try:
            self._parser.feed_data(data)
            # Back in the pool only now, outside the parser: a request that
            # the end of this answer led to must not start inside it.
            if self._message_done:
                self._maybe_release()
        except httptools.HttpParserUpgrade:
            self._failed(Failure(ValueError("the local service switched protocols")))
        except httptools.HttpParserError as e:
            self._failed(Failure(ValueError("bad answer from the local service: {}"
                                            .format(e))))

    def on_header(self, name, value):
        self._head_fields.append((name, value))

    def on_headers_complete(self):
        parser = self._parser
        code = parser.get_status_code()
        fields, self._head_fields = self._head_fields, []
        if 100 <= code < 200:
            return  # an interim answer (100 Continue, 103): the real one follows
        headers = Headers()
        tokens = set()
        length = UNKNOWN_LENGTH
        chunked = False
        for name, value in fields:
            lower = name.lower()
            if lower in CONNECTION_CONTROL:
                if lower == b"connection":
                    tokens.update(t.strip().lower().decode("latin-1")
                                  for t in value.split(b",") if t.strip())
                elif lower == b"content-length":
                    try:
                        length = int(value)
                    except ValueError:
                        pass
                elif lower == b"transfer-encoding":
                    chunked = True
                continue
            headers.addRawHeader(name, value)
        if chunked:
            length = UNKNOWN_LENGTH
        if code in (204, 304):
            length = 0
        self._delimited_by_close = length is UNKNOWN_LENGTH and not chunked and code not in (
            204, 304)
        self._response = LocalResponse(self, code, headers, length, frozenset(tokens))
        answer = self._take_answer()
        if answer is not None:
            answer.callback(self._response)

    def on_body(self, body):
        protocol = self._body_protocol
        if protocol is not None:
            protocol.dataReceived(body)
        else:
            self._held.append(body)

    def on_message_complete(self):
        if self._response is None:
            return  # the end of an interim answer
        self._message_done = True
        # Only llhttp knows (HTTP/1.0, Connection: close); only until the
        # feed returns.
        self._keep_alive = self._parser.should_keep_alive()
        self._end_body(Failure(ResponseDone("the answer is complete")))

    # -- the body ----------------------------------------------------------

    def deliver_body(self, protocol):
        self._body_protocol = protocol
        self._body_transport = _BodyTransport(self)
        protocol.makeConnection(self._body_transport)
        held, self._held = self._held, []
        for data in held:
            protocol.dataReceived(data)
        if self._ended is not None:
            ended, self._ended = self._ended, None
            self._body_transport.detach()
            self._body_transport = None
            self._body_protocol = None
            protocol.connectionLost(ended)
            self._maybe_release()

    def _end_body(self, reason):
        if self._body_transport is not None:
            self._body_transport.detach()
            self._body_transport = None
        protocol = self._body_protocol
        if protocol is None:
            self._ended = reason
            return
        self._body_protocol = None
        protocol.connectionLost(reason)

    # -- the connection ------------------------------------------------------

    def _maybe_release(self):
        """
        Once the answer is complete, its reader has seen the end and the
        request body is all written: back to the pool, or closed if either
        side does not keep it alive.  Once.
        """
        if (self._parser is None or self._lost or not self._message_done
                or not self._upload_done or self._body_protocol is not None
                or self._ended is not None):
            return
        self._parser = None
        self._response = None
        if not self._keep_alive:
            self.transport.loseConnection()
            return
        # Its reader may have paused it as the answer ended.
        self.transport.resumeProducing()
        if self.release is not None:
            self.release(self)

    def _failed(self, failure):
        answer = self._take_answer()
        if answer is not None:
            answer.errback(Failure(ResponseNeverReceived([failure])))
        elif self._response is not None and not self._message_done:
            self._message_done = True
            self._end_body(Failure(ResponseFailed([failure])))
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason):
        self._lost = True
        if self.release is not None:
            self.release(self, lost=True)
        waiting = self._answer is not None
        answer = self._take_answer()
        if answer is not None:
            answer.errback(Failure(ResponseNeverReceived([reason])))
        if waiting:
            return
        if self._response is not None and not self._message_done:
            self._message_done = True
            if self._delimited_by_close and reason.check(ConnectionDone):
                self._end_body(Failure(PotentialDataLoss()))
            else:
                self._end_body(Failure(ResponseFailed([reason])))


class LocalHTTP:
    """
    Requests to one local origin, over a pool of kept-alive connections.

    @param reactor: for connecting (through C{endpoint}).
    @param origin: C{b"http://host:port"} (or https): every C{uri} given to
        L{request} starts with it.
    @param endpoint: the C{IStreamClientEndpoint} of the origin (TLS
        included for https).
    @param host: the Host header's value for the origin.
    @param pool_size: the most idle connections kept.
    """

    def __init__(self, reactor, origin, endpoint, host, pool_size=64):
        self._origin = origin
        self._endpoint = endpoint
        self._host = host
        self.pool_size = pool_size
        self._idle = []
        self._factory = Factory.forProtocol(LocalConnection)

    def request(self, method, uri, headers=None, bodyProducer=None):
        """
        Like C{Agent.request}.

        @raise ValueError: C{uri} is not on this origin, or the method,
            target or a header cannot be sent.
        """
        if not uri.startswith(self._origin):
            raise ValueError("{!r} is not on {!r}".format(uri, self._origin))
        target = uri[len(self._origin):] or b"/"
        host = self._host
        fields = []
        if headers is not None:
            for name, values in headers.getAllRawHeaders():
                if name.lower() == b"host":
                    host = values[-1]
                else:
                    fields.append((name, values))
        chunked = False
        framing = b""
        if bodyProducer is not None:
            length = bodyProducer.length
            if length is UNKNOWN_LENGTH:
                framing = b"Transfer-Encoding: chunked\r\n"
                chunked = True
            else:
                framing = b"Content-Length: %d\r\n" % length
        head = request_head(method, target, host, fields, framing)
        retry = bodyProducer is None and method in _RETRYABLE
        return self._send(head, bodyProducer, chunked, retry)

    def _send(self, head, body, chunked, retry):
        while self._idle:
            connection = self._idle.pop()
            if connection.transport is not None and not connection._lost:
                d = connection.request(head, body, chunked)
                if retry:
                    d.addErrback(self._retry_on_stale, head)
                return d
        return self._connect_and_send(head, body, chunked)

    def _retry_on_stale(self, failure, head):
        if failure.check(ResponseNeverReceived) and not failure.value.reasons[0].check(
                CancelledError):
            return self._connect_and_send(head, None, False)
        return failure

    def _connect_and_send(self, head, body, chunked):
        connecting = self._endpoint.connect(self._factory)

        def connected(connection):
            connection.release = self._release
            return connection.request(head, body, chunked)

        return connecting.addCallback(connected)

    def _release(self, connection, lost=False):
        if lost:
            if connection in self._idle:
                self._idle.remove(connection)
            return
        if len(self._idle) < self.pool_size:
            self._idle.append(connection)
        else:
            connection.transport.loseConnection()

    def close(self):
        """
        Close the idle connections.
        """
        idle, self._idle = self._idle, []
        for connection in idle:
            if connection.transport is not None:
                connection.transport.loseConnection()
