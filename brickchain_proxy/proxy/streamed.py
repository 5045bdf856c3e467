"""
A visitor's HTTP request on a stream (the negotiated C{streams} feature):
the head goes to the tunnel as soon as the visitor's headers are in, the
body as it arrives, and the answer comes back as the local service writes
it -- both directions flow-controlled by the stream's window, so a slow
visitor or a slow local service holds at most a window of memory here.

L{StreamedExchange} is started by L{BoundedRequest.gotLength} (before
twisted.web would have read the body) when the request is for a tunnel this
instance holds over a connection that speaks streams, or for a tunnel this
instance does not hold: then the directory says whether another instance
holds it over streams (the stream crosses the bus,
L{remote_streams.RemoteTunnel}); if not, the exchange gives the request back
(L{FALL_BACK}) and it takes the buffered v1 path of L{public.PublicTunnel},
like every other request.
"""

from urllib.parse import unquote

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from ..compat import flush_now, visitor_gone
from ..features import MULTI_HEADER, RAW_PATH
from ..headers import add_forwarded_headers, headers_to_wire, wire_to_pairs
from ..streams.session import CONNECTION_LOST, IStreamHandler, StreamError
from .plain import finish_plain
from .remote_streams import INSTANCE_GONE

# This hop's, or recomputed: the length comes in the head.
_DROP_FROM_REQUEST = frozenset(["host", "expect", "content-length"])
_DROP_FROM_RESPONSE = frozenset(["content-length"])

#: What the exchange's start may be decided with instead of the rate
#: limiter's answer: the request goes back to the buffered path.
FALL_BACK = object()


@implementer(IStreamHandler, IPushProducer)
class StreamedExchange:
    """
    One visitor request and its answer, on one stream.

    @ivar request: the twisted.web request (a L{site.BoundedRequest}).
    @ivar connection: the tunnel connection (or L{RemoteTunnel}) whose
        streams it rides; L{None} until known.
    """

    _log = Logger()

    def __init__(self, public, request, client_id, connection, raw_path, length):
        self._public = public
        self.request = request
        self.client_id = client_id
        self.connection = connection
        self._raw_path = raw_path
        self._length = length  # None: chunked
        self._clock = public.clock
        self._stream = None
        self._body_size = 0
        self._response_size = 0
        self._body_complete = False
        self._answered = False  # the response head went to the visitor
        self._ended = False  # the whole answer is written (finish pending)
        self._finished = False
        self._refusal = None  # an answer to give once the body is read
        self._visitor_paused = False  # the visitor's transport is backed up
        self._uncredited = 0
        self._head_timer = None
        self._idle_timer = None
        self._last_activity = self._clock.seconds()
        self._upload_paused = False
        self._early_chunks = []  # body bytes that came before the stream opened
        self._refusal_headers = ()
        self._over = False

    # -- from the visitor ----------------------------------------------------

    def start_when_allowed(self, decided, method, uri):
        """
        Open the stream once the rate limiter's C{decided} (a L{Deferred} of
        L{None} or the seconds to wait) allows it; the body waits meanwhile.
        """
        self._public.exchange_started(self)
        self.request.notifyFinish().addErrback(self._visitor_left)
        if not decided.called:
            self._pause_upload()
        decided.addCallback(self._decided, method, uri)
        decided.addErrback(self._start_failed)

    def _decided(self, wait, method, uri):
        if self._over or visitor_gone(self.request):
            return
        if wait is FALL_BACK:
            self._fall_back()
            return
        if wait is not None:
            retry = int(wait) + 1
            self._refusal_headers = ((b"Retry-After", b"%d" % retry),)
            self._fail(429, "too many requests for this tunnel; retry in {} s".format(retry))
            return
        self._start(method, uri)

    def _fall_back(self):
        """
        Give the request back to the buffered path, with the body read so
        far.
        """
        self._done()
        early, self._early_chunks = self._early_chunks, []
        paused, self._upload_paused = self._upload_paused, False
        self.request.take_buffered_path(early)
        transport = self.request.transport
        if paused and transport is not None:
            transport.resumeProducing()

    def _start_failed(self, failure):
        self._log.failure("starting a streamed request failed", failure)
        self._fail(500, "internal error in the proxy")

    def _start(self, method, uri):
        """
        Open the stream: send the request head (the body follows as it
        arrives).
        """
        request = self.request
        features = self.connection.features
        headers = headers_to_wire(request.requestHeaders, MULTI_HEADER in features,
                                  _DROP_FROM_REQUEST)
        add_forwarded_headers(request, headers, self._public.trust_forwarded)
        path = self._raw_path.decode("utf-8", "replace")
        head = {
            "method": method.decode("latin-1"),
            "url": path if RAW_PATH in features else unquote(path, errors="replace"),
            "query": uri.partition(b"?")[2].decode("utf-8", "replace"),
            "headers": headers,
        }
        if self._length is not None:
            head["length"] = self._length
        try:
            self._stream = self.connection.streams.open(self, head,
                                                         fin=self._length == 0)
        except StreamError:
            self._fail(502, "the tunnel's connection was lost before it answered")
            return
        early, self._early_chunks = self._early_chunks, []
        for chunk in early:
            self.body_chunk(chunk)
        if self._body_complete:
            self._stream.finish()
        self._resume_upload()
        self._head_timer = self._clock.callLater(
            self._public.request_timeout, self._head_timed_out)
        idle = self._public.stream_idle_timeout
        if idle:
            self._idle_timer = self._clock.callLater(idle, self._check_idle)

    def body_chunk(self, data):
        """
        Body bytes from the visitor.
        """
        if self._stream is None:
            if self._refusal is None:
                self._early_chunks.append(data)
            return
        if self._stream.closed:
            return  # refused or reset: the rest of the body is dropped
        self._body_size += len(data)
        cap = self._public.max_stream_body
        if cap and self._body_size > cap:
            self._log.warn("tunnel {client_id}: streamed request body over {cap} bytes",
                           client_id=self.client_id, cap=cap)
            self._stream.reset("request body over the proxy's limit")
            self._fail(413, "request body is larger than the proxy's limit of {} "
                       "bytes".format(cap))
            return
        self._last_activity = self._clock.seconds()
        # The chunk that completes a known length carries FIN itself.
        self._stream.write(data, fin=self._body_size == self._length)

    def body_complete(self):
        """
        twisted.web has read the whole request body.
        """
        self._body_complete = True
        stream = self._stream
        if stream is not None and not stream.closed:
            stream.finish()  # a no-op when the body's FIN is already out
        self._resume_upload()
        if self._refusal is not None and not self._answered:
            self._answer_refusal()
        elif self._ended:
            self._finish_now(self.request.finish)

    def _visitor_left(self, reason):
        if self._stream is not None and not self._stream.closed:
            self._stream.reset("the visitor went away")
        self._done()

    # -- from the tunnel -----------------------------------------------------

    def head_received(self, head, fin):
        self._cancel_head_timer()
        request = self.request
        if visitor_gone(request) or self._answered:
            return
        status = head.get("status")
        if type(status) is not int or not 200 <= status <= 599:
            self._stream.reset("invalid status")
            self._fail(502, "the tunnel client sent an invalid status ({!r})".format(status))
            return
        self._answered = True
        self._last_activity = self._clock.seconds()
        request.setResponseCode(status)
        response_headers = request.responseHeaders
        # A HEAD answer's Content-Length is the one a GET would get: it
        # comes among the headers, and its body length is 0.
        is_head = request.method == b"HEAD"
        wire = head.get("headers")
        if type(wire) is dict:
            for name, values in wire_to_pairs(
                    wire, frozenset() if is_head else _DROP_FROM_RESPONSE):
                response_headers.setRawHeaders(name, values)
        length = head.get("length")
        if (type(length) is int and length >= 0 and status != 204 and status != 304
                and not is_head):
            response_headers.setRawHeaders(b"Content-Length", [b"%d" % length])
        request.defaultContentType = None
        request.registerProducer(self, True)
        request.write(b"")  # the head goes out now, not with the first byte
        if fin:
            self.end_received()

    def data_received(self, data):
        self._last_activity = self._clock.seconds()
        if not self._answered or visitor_gone(self.request):
            return
        self._response_size += len(data)
        cap = self._public.max_stream_body
        if cap and self._response_size > cap:
            self._log.warn("tunnel {client_id}: streamed response over {cap} bytes; "
                           "resetting it", client_id=self.client_id, cap=cap)
            self._stream.reset("response body over the proxy's limit")
            self._abort()
            return
        self.request.write(data)
        flush_now(self.request.transport)
        if self._visitor_paused:
            self._uncredited += len(data)
        else:
            self._stream.consumed(len(data))

    def ws_received(self, payload, is_text):
        self._stream.reset("websocket message on an HTTP stream")
        self._abort()

    def ws_closed(self, code, reason):
        self.ws_received(b"", False)

    def end_received(self):
        if not self._answered:
            self._fail(502, "the tunnel client ended the stream without an answer")
            return
        self._ended = True
        if self._body_complete:
            self._finish_now(self.request.finish)

    def reset_received(self, reason):
        self._cancel_head_timer()
        if self._finished:
            return
        if self._answered:
            # Part of the answer is out: the visitor must see a broken
            # connection, never a truncated body that looks complete.
            self._log.warn("tunnel {client_id}: stream reset mid-answer ({reason}); "
                           "aborting the visitor's connection",
                           client_id=self.client_id, reason=reason)
            self._abort()
            return
        if reason == CONNECTION_LOST:
            self._fail(502, "the tunnel's connection was lost before it answered")
        elif reason == INSTANCE_GONE:
            self._fail(502, "tunnel {} is not connected".format(self.client_id))
        else:
            self._fail(502, "the tunnel's answer failed: {}".format(reason))

    def write_paused(self):
        self._pause_upload()

    def write_resumed(self):
        self._resume_upload()

    # -- the visitor's transport (IPushProducer) -----------------------------

    def pauseProducing(self):
        self._visitor_paused = True

    def resumeProducing(self):
        self._visitor_paused = False
        credit, self._uncredited = self._uncredited, 0
        if credit and self._stream is not None:
            self._stream.consumed(credit)

    def stopProducing(self):
        if self._stream is not None and not self._stream.closed:
            self._stream.reset("the visitor went away")

    # -- timers --------------------------------------------------------------

    def _head_timed_out(self):
        self._head_timer = None
        if self._answered:
            return
        if self._stream is not None and not self._stream.closed:
            self._stream.reset("no answer within the request timeout")
        self._fail(504, "the tunnel did not answer within {:g} seconds".format(
            self._public.request_timeout))

    def _check_idle(self):
        self._idle_timer = None
        if self._finished:
            return
        idle = self._public.stream_idle_timeout
        quiet = self._clock.seconds() - self._last_activity
        if quiet < idle:
            self._idle_timer = self._clock.callLater(idle - quiet, self._check_idle)
            return
        self._log.warn("tunnel {client_id}: stream idle for {idle:g} s, closing it",
                       client_id=self.client_id, idle=idle)
        if self._stream is not None and not self._stream.closed:
            self._stream.reset("idle")
        if self._answered:
            self._abort()
        else:
            self._fail(504, "the tunnel sent nothing for {:g} seconds".format(idle))

    def _cancel_head_timer(self):
        if self._head_timer is not None:
            if self._head_timer.active():
                self._head_timer.cancel()
            self._head_timer = None

    # -- endings -------------------------------------------------------------

    def _fail(self, code, text):
        """
        Answer C{code} with C{text} (once the body is read), if nothing was
        answered yet; otherwise abort.
        """
        self._cancel_head_timer()
        if self._answered:
            self._abort()
            return
        self._refusal = (code, text)
        self._early_chunks = []
        if not self._body_complete:
            self._resume_upload()  # read (and drop) the rest of the body
            return
        self._answer_refusal()

    def _answer_refusal(self):
        code, text = self._refusal
        self._answered = True
        request = self.request

        def answer():
            for name, value in self._refusal_headers:
                request.setHeader(name, value)
            finish_plain(request, code, text + "\n")

        self._finish_now(answer)

    def _finish_now(self, finish):
        if self._finished:
            return
        self._finished = True
        request = self.request
        if not visitor_gone(request):
            if self._answered and request.producer is self:
                request.unregisterProducer()
            finish()
        self._done()

    def _abort(self):
        request = self.request
        transport = request.channel.transport if request.channel is not None else None
        self._finished = True
        if transport is not None:
            transport.abortConnection()
        self._done()

    def _done(self):
        if self._over:
            return
        self._over = True
        self._cancel_head_timer()
        if self._idle_timer is not None:
            if self._idle_timer.active():
                self._idle_timer.cancel()
            self._idle_timer = None
        self._public.exchange_done(self)

    # -- the upload ----------------------------------------------------------

    def _pause_upload(self):
        transport = self.request.transport
        if transport is not None and not self._body_complete and not self._upload_paused:
            self._upload_paused = True
            transport.pauseProducing()

    def _resume_upload(self):
        transport = self.request.transport
        if self._upload_paused:
            self._upload_paused = False
            if transport is not None:
                transport.resumeProducing()

