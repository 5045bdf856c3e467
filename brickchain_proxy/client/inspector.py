"""
The inspector's memory: the last exchanges between the client and the
local service (C{twistd brickclient --inspect}), and their replay.

The forwarders (L{forward.LocalForwarder} for v1 requests,
L{streamed.LocalStreamedRequest} for streamed ones) report what they do to
an L{IExchangeRecorder}.  With C{--inspect} that is an L{ExchangeLog}: a
bounded deque of L{Exchange}s whose bodies keep at most C{body_limit} bytes
each, with subscribers told of every change (the web page's live updates).
Without it, it is L{NO_RECORDER}, whose exchanges do nothing at all.

Nothing here knows about HTTP servers or web pages: L{inspector_web} serves
this log, L{Exchange.to_json} is its representation.
"""

import base64
import collections
import json
import re

from twisted.logger import Logger
from zope.interface import Interface, implementer

from ..messages import HttpRequest

#: How much of a binary body is given in hex (the rest only in base64).
HEX_LIMIT = 4096

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


class IExchange(Interface):
    """
    One request to the local service and its answer, as it happens.
    """

    def request_data(data):
        """
        More of the request body (L{bytes}) went to the local service.
        """

    def response_head(status, headers):
        """
        The answer's status (L{int}) and headers (wire form: name -> string
        or list of strings), as they go back to the visitor.
        """

    def response_data(data):
        """
        More of the answer's body (L{bytes}) went back to the visitor.
        """

    def finished(error=None):
        """
        The exchange is over: completely, or (C{error}, a L{str}) cut short.
        Later calls are ignored.
        """


class IExchangeRecorder(Interface):
    """
    Where the forwarders report each request they send to the local service.
    """

    def start(kind, method, url, query, headers, features):
        """
        A request to the local service begins.

        @param kind: C{"http"} (a v1 http-request) or C{"stream"}.
        @param url: the request's path as the proxy sent it (decoded, unless
            the tunnel speaks C{raw-path}).
        @param query: the raw query string, C{""} when there is none.
        @param headers: the visitor's headers in wire form, before
            C{--local-header} rewriting (so secrets added there are neither
            shown nor recorded twice).
        @param features: the tunnel's features (they say how C{url} is
            encoded, which a replay needs).
        @return: an L{IExchange} to report the rest to.
        """


@implementer(IExchange)
class _NullExchange:
    """
    An exchange nobody records.
    """

    def request_data(self, data):
        pass

    def response_head(self, status, headers):
        pass

    def response_data(self, data):
        pass

    def finished(self, error=None):
        pass


#: The one exchange of L{NO_RECORDER}.
NULL_EXCHANGE = _NullExchange()


@implementer(IExchangeRecorder)
class _NullRecorder:
    """
    The recorder when the inspector is off: every report costs a call that
    does nothing.
    """

    def start(self, kind, method, url, query, headers, features):
        return NULL_EXCHANGE


#: The recorder when C{--inspect} is not given.
NO_RECORDER = _NullRecorder()


class BodyCapture:
    """
    The first C{limit} bytes of a body of any size, and its total size;
    what is past the limit is counted and dropped, never held.
    """

    def __init__(self, limit):
        self._limit = limit
        self._kept = bytearray()
        #: every byte seen, kept or not
        self.size = 0

    @property
    def truncated(self):
        """
        Whether bytes past the limit were dropped.
        """
        return self.size > len(self._kept)

    @property
    def kept(self):
        """
        The bytes kept (L{bytes}).
        """
        return bytes(self._kept)

    def add(self, data):
        room = self._limit - len(self._kept)
        if room > 0:
            self._kept += memoryview(data)[:room]
        self.size += len(data)

    def to_json(self, content_type=""):
        """
        The body as the inspector's API gives it (see the README):
        C{{"size", "truncated", "text"}} (plus C{"pretty"}, indented JSON,
        when the whole body parsed as JSON) for UTF-8 text, else
        C{{"size", "truncated", "base64", "hex"}} (C{hex}: the first
        L{HEX_LIMIT} bytes).
        """
        data = bytes(self._kept)
        result = {"size": self.size, "truncated": self.truncated}
        text = _as_text(data, self.truncated)
        if text is None:
            result["base64"] = base64.b64encode(data).decode("ascii")
            result["hex"] = data[:HEX_LIMIT].hex()
            return result
        result["text"] = text
        if not self.truncated:
            pretty = _pretty_json(text, content_type)
            if pretty is not None:
                result["pretty"] = pretty
        return result


def _as_text(data, truncated):
    """
    C{data} as text if it is UTF-8 without control characters (a body cut
    inside a character still counts), else L{None}.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if not (truncated and e.reason == "unexpected end of data"):
            return None
        text = data[:e.start].decode("utf-8", "strict")
    if _CONTROL.search(text):
        return None
    return text


def _pretty_json(text, content_type):
    if "json" not in content_type.lower() and not text.lstrip().startswith(("{", "[")):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return json.dumps(value, indent=2, ensure_ascii=False)


def header_pairs(wire):
    """
    Wire-form headers (name -> string or list of strings) as
    C{[[name, value], ...]}, repeats kept in order.
    """
    pairs = []
    if type(wire) is not dict:
        return pairs
    for name, value in wire.items():
        for v in (value if isinstance(value, list) else (value,)):
            pairs.append([str(name), str(v)])
    return pairs


def _content_type(pairs):
    for name, value in pairs:
        if name.lower() == "content-type":
            return value
    return ""


@implementer(IExchange)
class Exchange:
    """
    One recorded exchange; L{ExchangeLog.start} makes them.

    @ivar id: its number in the log (L{int}, from 1).
    @ivar status: the answer's status, L{None} until its head is known.
    @ivar duration: seconds from start to finish, L{None} while pending.
    @ivar error: why it was cut short, if it was.
    """

    def __init__(self, log, exchange_id, kind, method, url, query, headers,
                 features, started, body_limit, replay_of=None):
        self._log = log
        self.id = exchange_id
        self.kind = kind
        # str(): a malformed head is recorded too, and answered 502.
        self.method = str(method)
        self.url = str(url)
        self.query = str(query)
        self.request_headers = header_pairs(headers)
        self.features = frozenset(features)
        self.started = started
        self.replay_of = replay_of
        self.request_body = BodyCapture(body_limit)
        self.response_body = BodyCapture(body_limit)
        self.status = None
        self.response_headers = []
        self.duration = None
        self.error = None
        self.done = False

    @property
    def path(self):
        """
        The path and query, as shown.
        """
        return self.url + ("?" + self.query if self.query else "")

    def request_data(self, data):
        self.request_body.add(data)

    def response_head(self, status, headers):
        self.status = status
        self.response_headers = header_pairs(headers)

    def response_data(self, data):
        self.response_body.add(data)

    def finished(self, error=None):
        if self.done:
            return
        self.done = True
        self.error = error
        self.duration = self._log.clock.seconds() - self.started
        self._log.changed(self)

    def replay_request(self):
        """
        The recorded request, as a v1 http-request with a new id.
        """
        return HttpRequest(
            url=self.url, method=self.method, query=self.query,
            headers={name: [v for n, v in self.request_headers if n == name]
                     for name, _ in self.request_headers},
            body=self.request_body.kept,
        )

    def to_json(self):
        """
        The item of C{GET /api/requests} (see the README).  It is made
        afresh each time (only the kept bytes are held, not their text,
        base64 and hex forms too).
        """
        return {
            "id": self.id,
            "kind": self.kind,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "state": ("pending" if not self.done
                      else "complete" if self.error is None else "error"),
            "error": self.error,
            "started": self.started,
            "duration_ms": None if self.duration is None else round(self.duration * 1000, 3),
            "replay_of": self.replay_of,
            "request_headers": self.request_headers,
            "response_headers": self.response_headers,
            "request_body": self.request_body.to_json(_content_type(self.request_headers)),
            "response_body": self.response_body.to_json(
                _content_type(self.response_headers)),
        }


@implementer(IExchangeRecorder)
class ExchangeLog:
    """
    The last C{keep} exchanges, newest last inside, bodies cut at
    C{body_limit} bytes; subscribers hear of every exchange when it starts
    and when it ends.

    @param clock: an L{IReactorTime} for starts and durations.
    """

    _log = Logger()

    def __init__(self, clock, keep=100, body_limit=64 * 1024):
        self.clock = clock
        self.keep = keep
        self.body_limit = body_limit
        self._exchanges = collections.deque()
        self._by_id = {}
        self._next_id = 1
        self._subscribers = []

    def __len__(self):
        return len(self._exchanges)

    def start(self, kind, method, url, query, headers, features, replay_of=None):
        exchange = Exchange(self, self._next_id, kind, method, url, query, headers,
                            features, self.clock.seconds(), self.body_limit,
                            replay_of=replay_of)
        self._next_id += 1
        self._exchanges.append(exchange)
        self._by_id[exchange.id] = exchange
        while len(self._exchanges) > self.keep:
            del self._by_id[self._exchanges.popleft().id]
        self.changed(exchange)
        return exchange

    def get(self, exchange_id):
        """
        @return: the L{Exchange} with this id, or L{None} (never recorded,
            or no longer kept).
        """
        return self._by_id.get(exchange_id)

    def newest_first(self):
        """
        @return: the kept exchanges, newest first (a new L{list}).
        """
        return list(reversed(self._exchanges))

    def subscribe(self, subscriber):
        """
        Call C{subscriber(exchange)} whenever a kept exchange starts or ends.

        @return: a function that unsubscribes it.
        """
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def changed(self, exchange):
        """
        Tell the subscribers about C{exchange} (if it is still kept).
        """
        if self._by_id.get(exchange.id) is not exchange:
            return
        for subscriber in list(self._subscribers):
            try:
                subscriber(exchange)
            except Exception:
                self._log.failure("inspector subscriber {subscriber!r} failed",
                                  subscriber=subscriber)


class UnknownExchange(KeyError):
    """
    No exchange with this id is kept.
    """


class NotReplayable(Exception):
    """
    The exchange cannot be sent again as it was (its request body was cut).
    """


class Replayer:
    """
    Sends a recorded request to the local service again, through the
    forwarder's own path (the same URL building, C{--local-header} and
    C{--local-host} rewriting, timeout and response limit), recording it as
    a new exchange whose C{replay_of} is the original's id.

    @param forwarder: a L{forward.LocalForwarder} (or anything with its
        C{forward(message, features, exchange=...)}).
    """

    def __init__(self, forwarder, log):
        self._forwarder = forwarder
        self._log = log

    def replay(self, exchange_id):
        """
        @return: a L{Deferred} firing with the new L{Exchange} once it is
            over.
        @raise UnknownExchange: no such exchange is kept.
        @raise NotReplayable: its request body was truncated.
        """
        original = self._log.get(exchange_id)
        if original is None:
            raise UnknownExchange(exchange_id)
        if original.request_body.truncated:
            raise NotReplayable(
                "only the first {} of the request body's {} bytes were kept".format(
                    len(original.request_body.kept), original.request_body.size))
        message = original.replay_request()
        exchange = self._log.start(
            "replay", original.method, original.url, original.query,
            message.headers, original.features, replay_of=original.id)
        d = self._forwarder.forward(message, original.features, exchange=exchange)
        d.addCallback(lambda _: exchange)
        return d
