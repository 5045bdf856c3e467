"""
The client's side of a streamed request (the negotiated C{streams}
feature): the local request starts as soon as the head arrives, its body is
produced to the local service as DATA frames come, and the local service's
answer goes back as it is read -- both directions flow-controlled by the
stream's window, so a slow local service or a slow visitor holds at most a
window of memory here.
"""

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from ..compat import connection_header_names
from ..features import MULTI_HEADER
from ..headers import headers_to_wire, wire_to_pairs
from ..metrics import ABORTED
from ..streams.session import IStreamHandler
from ..tls import LOCAL_TLS_REFUSED, tls_failure_reason
from .inspector import NULL_EXCHANGE
from .urls import ESCAPES_PREFIX, PathEscapesPrefix

_DROP_FROM_REQUEST = frozenset(["host", "content-length", "expect"])


class _Target:
    """
    What L{LocalForwarder.url_for} needs of a request.
    """

    def __init__(self, url, query):
        self.url = url
        self.query = query


@implementer(IBodyProducer)
class _StreamedBody:
    """
    The visitor's body, produced to the local service as it arrives.
    """

    def __init__(self, exchange, length):
        self._exchange = exchange
        self.length = UNKNOWN_LENGTH if length is None else length
        self._consumer = None
        self.finished = None
        self._held = []
        self._ended = False

    def startProducing(self, consumer):
        self._consumer = consumer
        self.finished = Deferred()
        held, self._held = self._held, []
        for data in held:
            self.write(data)
        if self._ended:
            self.finished.callback(None)
        return self.finished

    def write(self, data):
        if self._consumer is None:
            self._held.append(data)
            return
        self._consumer.write(data)
        self._exchange.body_written(len(data))

    def end(self):
        self._ended = True
        if self.finished is not None and not self.finished.called:
            self.finished.callback(None)

    def pauseProducing(self):
        self._exchange.upload_paused = True

    def resumeProducing(self):
        self._exchange.upload_paused = False
        self._exchange.body_written(0)

    def stopProducing(self):
        if self.finished is not None and not self.finished.called:
            self.finished.errback(Exception("the local request was given up"))


class _ResponseBody(Protocol):
    """
    Reads the local answer's body into the stream.
    """

    def __init__(self, exchange):
        self._exchange = exchange

    def connectionMade(self):
        self._exchange.reading(self.transport)

    def dataReceived(self, data):
        self._exchange.answer_data(data)

    def connectionLost(self, reason):
        self._exchange.answer_ended(reason)


@implementer(IStreamHandler)
class LocalStreamedRequest:
    """
    One streamed request to the local service.
    """

    _log = Logger()
    #: what the inspector is told (L{inspector.IExchange}), once the head parsed
    _exchange = NULL_EXCHANGE

    def __init__(self, forwarder, stream, head, features, clock):
        self._forwarder = forwarder
        self._metrics = forwarder.metrics
        self._started = clock.seconds() if self._metrics.enabled else None
        self._status = None  # the answer's, once its head is sent
        self._received = 0  # body bytes from the tunnel
        self._sent = 0  # body bytes back into it
        self._stream = stream
        stream.handler = self  # before anything can call it back
        self._features = features
        self._clock = clock
        self._body = None
        self._request = None  # the Agent request Deferred
        self._transport = None  # the local answer's transport, once reading
        self._answered = False
        self._done = False
        self.upload_paused = False
        self._write_paused = False
        self._remaining = None  # answer bytes still due, when the length is known
        self._uncredited = 0
        self._timer = None
        self._start(head)

    def _start(self, head):
        try:
            target = _Target(head.get("url") or "/", head.get("query") or "")
            wire = head.get("headers")
            self._exchange = self._forwarder.recorder.start(
                "stream", head["method"], target.url, target.query,
                wire if type(wire) is dict else {}, self._features)
            method = head["method"].encode("latin-1")
            url = self._forwarder.url_for(target, self._features).encode("utf-8")
            headers = Headers()
            if type(wire) is dict:
                for name, values in wire_to_pairs(wire, _DROP_FROM_REQUEST):
                    headers.setRawHeaders(name, values)
            self._forwarder.rewrite.apply_to_headers(headers)
            length = head.get("length")
            if type(length) is not int or length < 0:
                length = None
            if not self._stream.received_fin:
                self._body = _StreamedBody(self, length)
            self._request = self._forwarder.client_for(method).request(
                method, url, headers, self._body)
        except PathEscapesPrefix as e:
            self._forwarder.log_escape(head.get("method"), e.path)
            self._answer_error(400, ESCAPES_PREFIX)
            return
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            self._log.warn("cannot forward streamed request: {error}", error=str(e))
            self._answer_error(502, "bad request for the local service: {}".format(e))
            return
        self._timer = self._clock.callLater(self._forwarder.timeout, self._timed_out)
        self._request.addCallbacks(self._answer, self._local_failed)

    # -- the visitor's body --------------------------------------------------

    def data_received(self, data):
        self._received += len(data)
        self._exchange.request_data(data)
        if self._body is not None:
            self._body.write(data)

    def body_written(self, size):
        """
        C{size} more body bytes went to the local service: grant them back,
        unless the local service is not reading.
        """
        self._uncredited += size
        if not self.upload_paused and self._uncredited:
            credit, self._uncredited = self._uncredited, 0
            self._stream.consumed(credit)

    def end_received(self):
        if self._body is not None:
            self._body.end()

    def head_received(self, head, fin):
        self._stream.reset("a second head")

    def ws_received(self, payload, is_text):
        self._stream.reset("websocket message on an HTTP stream")

    def ws_closed(self, code, reason):
        self._stream.reset("websocket close on an HTTP stream")

    def reset_received(self, reason):
        # The visitor went away (or the tunnel did): drop the local request.
        self._finish(error="reset: {}".format(reason or "the visitor went away"))
        if self._request is not None:
            # Cancelling also reaches the Deferred it may be waiting on.
            self._request.cancel()
        if self._transport is not None:
            self._transport.stopProducing()

    # -- the local answer ----------------------------------------------------

    def _answer(self, response):
        self._cancel_timer()
        if self._done:
            response.deliverBody(Protocol())
            return
        listed = getattr(response, "connection_tokens", None)
        if listed is None:  # Agent's answer (to a HEAD)
            listed = connection_header_names(response)
        head = {
            "status": response.code,
            "headers": headers_to_wire(response.headers, MULTI_HEADER in self._features,
                                       listed),
        }
        if isinstance(response.length, int):
            head["length"] = self._remaining = response.length
        self._answered = True
        self._status = response.code
        self._exchange.response_head(head["status"], head["headers"])
        self._stream.send_head(head)
        response.deliverBody(_ResponseBody(self))

    def answer_data(self, data):
        if self._done or self._stream.closed:
            return
        remaining = self._remaining
        if remaining is not None:
            remaining = self._remaining = remaining - len(data)
        self._sent += len(data)
        # The chunk that completes a known length carries FIN itself.
        self._exchange.response_data(data)
        self._stream.write(data, fin=remaining == 0)

    def answer_ended(self, reason):
        if self._done:
            return
        if self._stream.closed:
            # The last chunk's FIN closed it (the request's FIN was in), or
            # we reset it.
            self._finish(complete=self._stream.sent_fin)
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._stream.finish()  # a no-op when the last chunk carried FIN
            self._finish(complete=True)
            return
        self._log.warn("local service failed mid-answer: {error}",
                       error=reason.getErrorMessage())
        self._stream.reset("the local service failed mid-answer")
        self._finish(error="the local service failed mid-answer")

    def reading(self, transport):
        self._transport = transport
        if self._write_paused:
            transport.pauseProducing()

    def write_paused(self):
        self._write_paused = True
        if self._transport is not None:
            self._transport.pauseProducing()

    def write_resumed(self):
        self._write_paused = False
        if self._transport is not None:
            self._transport.resumeProducing()

    # -- failures ------------------------------------------------------------

    def _timed_out(self):
        self._timer = None
        if self._answered or self._done:
            return
        self._log.warn("local service did not answer within {timeout} s",
                       timeout=self._forwarder.timeout)
        request, self._request = self._request, None
        self._answer_error(504, "the local service did not answer within {:g} "
                           "seconds".format(self._forwarder.timeout))
        if request is not None:
            request.cancel()

    def _local_failed(self, failure):
        self._cancel_timer()
        if self._done:
            return
        why = tls_failure_reason(failure)
        if why is not None:
            self._log.error("TLS verification of the local service failed: {error} "
                            "(verified against {trust})", error=why,
                            trust=self._forwarder.tls.describe())
            self._answer_error(502, LOCAL_TLS_REFUSED + self._forwarder.tls.explain(why))
            return
        self._log.warn("local service failed: {error}",
                       error=failure.getErrorMessage() or failure.type.__name__)
        self._answer_error(502, "the local service could not be reached: {}".format(
            failure.getErrorMessage() or failure.type.__name__))

    def _answer_error(self, status, text):
        if self._done or self._stream.closed:
            self._finish()
            return
        body = (text + "\n").encode("utf-8")
        self._status = status
        self._sent += len(body)
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        self._exchange.response_head(status, headers)
        self._exchange.response_data(body)
        self._stream.send_head({"status": status, "length": len(body),
                                "headers": headers})
        self._stream.write(body)
        self._stream.finish()
        self._finish(complete=True)

    def _cancel_timer(self):
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _finish(self, complete=False, error=None):
        """
        The request is over: C{complete}, its whole answer went back; else
        C{error} may say why (for the inspector).
        """
        if not self._done and self._started is not None:
            self._metrics.local_request_finished(
                self._status if complete else ABORTED,
                self._clock.seconds() - self._started, self._received, self._sent)
        self._done = True
        self._cancel_timer()
        self._exchange.finished(error)

