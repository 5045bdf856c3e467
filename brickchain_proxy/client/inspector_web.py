"""
The inspector's web interface (C{twistd brickclient --inspect ENDPOINT}):
the Resource tree over an L{ExchangeLog}, and the service that listens.

  - C{GET /}: the page (L{inspector_page});
  - C{GET /api/requests}: the kept exchanges, newest first, as a JSON array
    of L{Exchange.to_json} items; C{GET /api/requests/<id>}: one of them;
  - C{POST /api/requests/<id>/replay}: send that request to the local
    service again; answers the new exchange once it is over (404 for an id
    not kept, 409 when its request body was truncated);
  - C{GET /api/events}: server-sent events, one C{exchange} event (data:
    the item) whenever an exchange starts or ends.

Recorded headers carry visitors' cookies and tokens, so the interface
answers only requests whose Host is an IP address or C{localhost} (a DNS
rebinding page cannot name either) and whose Origin, when a browser sends
one, is its own (no other site can make it replay requests).
"""

import ipaddress
from urllib.parse import urlsplit

import orjson
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer

from .inspector import NotReplayable, UnknownExchange
from .inspector_page import CONTENT_SECURITY_POLICY, page

#: The most event bytes held for one slow page before its stream is
#: closed (the page reconnects and reloads the list).
MAX_QUEUED = 1024 * 1024


def _json(request, value, code=200):
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return orjson.dumps(value)


class _Error(Resource):
    """
    A JSON C{{"error": ...}} answer with status C{code}, to any method.
    """

    isLeaf = True

    def __init__(self, code, message):
        Resource.__init__(self)
        self._code = code
        self._message = message

    def render(self, request):
        return _json(request, {"error": self._message}, self._code)


def _split_host(value):
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def refusal(request):
    """
    Why C{request} may not use the inspector, or L{None}.
    """
    host = (request.getHeader(b"host") or b"").decode("latin-1").strip().lower()
    if host:
        name = _split_host(host)
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if name != "localhost" and not name.endswith(".localhost"):
                return ("the inspector answers only at an IP address or localhost, "
                        "not {!r}".format(name))
    origin = request.getHeader(b"origin")
    if origin is not None:
        origin = origin.decode("latin-1").strip().lower()
        if urlsplit(origin).netloc != host or not host:
            return "cross-origin request from {!r} refused".format(origin)
    return None


class InspectorResource(Resource):
    """
    The root: the page at C{/}, the API under C{/api}.

    @ivar events: the L{EventsResource} (close its streams when stopping).
    """

    def __init__(self, log, replayer):
        Resource.__init__(self)
        self.events = EventsResource(log)
        api = Resource()
        api.putChild(b"requests", RequestsResource(log, replayer))
        api.putChild(b"events", self.events)
        self.putChild(b"", PageResource(log.keep))
        self.putChild(b"api", api)

    def getChildWithDefault(self, path, request):
        reason = refusal(request)
        if reason is not None:
            return _Error(403, reason)
        return Resource.getChildWithDefault(self, path, request)


class PageResource(Resource):
    """
    The page, under its Content-Security-Policy.
    """

    isLeaf = True

    def __init__(self, keep):
        Resource.__init__(self)
        self._page = page(keep)

    def render_GET(self, request):
        if request.postpath not in ([], [b""]):
            return _json(request, {"error": "no such page"}, 404)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Content-Security-Policy",
                          CONTENT_SECURITY_POLICY.encode("ascii"))
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Cache-Control", b"no-store")
        return self._page


class RequestsResource(Resource):
    """
    C{/api/requests}: the list; its children are the exchanges by id.
    """

    def __init__(self, log, replayer):
        Resource.__init__(self)
        self._log = log
        self._replayer = replayer

    def render_GET(self, request):
        return _json(request, [e.to_json() for e in self._log.newest_first()])

    def getChild(self, name, request):
        if name == b"":
            return self
        try:
            exchange_id = int(name)
        except ValueError:
            return _Error(404, "no such exchange")
        return ExchangeResource(self._log, self._replayer, exchange_id)


class ExchangeResource(Resource):
    """
    C{/api/requests/<id>}: one exchange; C{replay} below it.
    """

    def __init__(self, log, replayer, exchange_id):
        Resource.__init__(self)
        self._log = log
        self._id = exchange_id
        self.putChild(b"replay", ReplayResource(replayer, exchange_id))

    def render_GET(self, request):
        exchange = self._log.get(self._id)
        if exchange is None:
            return _json(request, {"error": "no such exchange"}, 404)
        return _json(request, exchange.to_json())


class ReplayResource(Resource):
    """
    C{POST /api/requests/<id>/replay}.
    """

    isLeaf = True
    _logger = Logger()

    def __init__(self, replayer, exchange_id):
        Resource.__init__(self)
        self._replayer = replayer
        self._id = exchange_id

    def render_POST(self, request):
        try:
            d = self._replayer.replay(self._id)
        except UnknownExchange:
            return _json(request, {"error": "no such exchange"}, 404)
        except NotReplayable as e:
            return _json(request, {"error": "cannot replay: {}".format(e)}, 409)
        # A page that goes away does not take the replay with it: the
        # request is on its way to the local service, and is recorded.
        gone = []
        request.notifyFinish().addErrback(gone.append)

        def answer(exchange):
            if not gone:
                request.write(_json(request, exchange.to_json()))
                request.finish()

        def failed(failure):
            self._logger.failure("replay of exchange {id} failed", failure, id=self._id)
            if not gone:
                request.write(_json(request, {"error": "replay failed"}, 500))
                request.finish()

        d.addCallbacks(answer, failed)
        return server.NOT_DONE_YET


@implementer(IPushProducer)
class _EventStream:
    """
    One page's C{/api/events}: an C{exchange} event per change.  While the
    connection is backed up, events wait (up to L{MAX_QUEUED} bytes); past
    that the stream ends and the page, reconnecting, reloads the list.
    """

    def __init__(self, request, log, streams):
        self._request = request
        self._streams = streams
        self._paused = False
        self._queued = []
        self._queued_size = 0
        self._open = True
        streams.add(self)
        self._unsubscribe = log.subscribe(self.send)
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._ended)
        request.write(b"retry: 1000\n: live\n\n")

    def send(self, exchange):
        event = b"event: exchange\ndata: " + orjson.dumps(exchange.to_json()) + b"\n\n"
        if not self._paused:
            self._request.write(event)
            return
        self._queued.append(event)
        self._queued_size += len(event)
        if self._queued_size > MAX_QUEUED:
            self.close()

    def close(self):
        """
        End the stream (the page reconnects by itself).
        """
        if self._open:
            self._ended(None)
            self._request.unregisterProducer()
            self._request.finish()

    def _ended(self, result):
        if self._open:
            self._open = False
            self._unsubscribe()
            self._streams.discard(self)
            self._queued = []

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        queued, self._queued, self._queued_size = self._queued, [], 0
        for event in queued:
            if self._open:
                self._request.write(event)

    def stopProducing(self):
        self._ended(None)


class EventsResource(Resource):
    """
    C{/api/events}: server-sent events.
    """

    isLeaf = True

    def __init__(self, log):
        Resource.__init__(self)
        self._log = log
        self._streams = set()

    def __len__(self):
        return len(self._streams)

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        _EventStream(request, self._log, self._streams)
        return server.NOT_DONE_YET

    def close_all(self):
        """
        End every open event stream.
        """
        for stream in list(self._streams):
            stream.close()


def inspector_site(resource):
    """
    A L{server.Site} for an L{InspectorResource}; its requests are not
    logged (the page's own polling would drown the client's log).
    """
    site = server.Site(resource)
    site.displayTracebacks = False
    site.log = lambda request: None
    return site


class InspectorService(service.Service):
    """
    Serves the inspector on C{endpoint} while running.  A listen that fails
    at once raises from L{startService}, so twistd says why and exits.

    @param description: the endpoint string, for the log.
    """

    _log = Logger()

    def __init__(self, endpoint, description, log, replayer):
        self._endpoint = endpoint
        self.description = description
        self.resource = InspectorResource(log, replayer)
        self.site = inspector_site(self.resource)
        self.port = None
        self._waiters = []

    def startService(self):
        service.Service.startService(self)
        failures = []
        d = self._endpoint.listen(self.site)
        d.addCallbacks(self._listened, failures.append)
        if failures:
            failures[0].raiseException()
        d.addErrback(lambda f: self._log.failure(
            "cannot serve the inspector on {endpoint}", f, endpoint=self.description))

    def _listened(self, port):
        self.port = port
        address = port.getHost()
        self._log.info("inspector at http://{host}:{port}/ (--inspect {endpoint})",
                       host=getattr(address, "host", "?"),
                       port=getattr(address, "port", "?"),
                       endpoint=self.description)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(port)

    def when_listening(self):
        """
        @return: a L{Deferred} firing with the L{IListeningPort}.
        """
        if self.port is not None:
            return defer.succeed(self.port)
        d = defer.Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        return d

    def stopService(self):
        service.Service.stopService(self)
        self.resource.events.close_all()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
