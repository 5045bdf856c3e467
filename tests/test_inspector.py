"""
The client's inspector (C{twistd brickclient --inspect}): the bounded log
of exchanges on a L{Clock}, its web interface through C{StubTreq} and a
fake forwarder, its event stream on a fake request, the options, and end
to end over loopback: requests through a real proxy and tunnel to a real
local service are listed, followed live and replayed.
"""

import base64
import json

import orjson
import treq
from treq.testing import StubTreq
from twisted.internet import defer, endpoints, reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import server
from zope.interface.verify import verifyObject

from brickchain_proxy.client import tap
from brickchain_proxy.client.forward import LocalForwarder
from brickchain_proxy.client.inspector import (
    HEX_LIMIT,
    NO_RECORDER,
    NULL_EXCHANGE,
    BodyCapture,
    ExchangeLog,
    IExchange,
    IExchangeRecorder,
    Replayer,
)
from brickchain_proxy.client.inspector_page import CONTENT_SECURITY_POLICY, SCRIPT, STYLE
from brickchain_proxy.client.inspector_web import (
    MAX_QUEUED,
    EventsResource,
    InspectorResource,
    InspectorService,
)
from brickchain_proxy.features import MESSAGE_FEATURES
from brickchain_proxy.messages import HttpResponse
from tests.support import (
    RecordingResource,
    close_connections,
    pseudo_random_bytes,
    start_local_service,
    start_tunnel,
    track_connections,
    unused_local_url,
    visitor,
)


def record(log, method="GET", url="/", query="", headers=None, request=b"",
           status=200, response_headers=None, response=b"", kind="stream"):
    """
    One complete exchange in C{log}, as a forwarder reports it.
    """
    exchange = log.start(kind, method, url, query, headers or {}, frozenset())
    if request:
        exchange.request_data(request)
    exchange.response_head(status, response_headers or {})
    if response:
        exchange.response_data(response)
    exchange.finished()
    return exchange


def wait_for_exchange(log, predicate):
    """
    @return: a L{Deferred} firing with the first kept exchange (already
        there, or to come) for which C{predicate(exchange)} is true.
    """
    for exchange in log.newest_first():
        if predicate(exchange):
            return defer.succeed(exchange)
    d = defer.Deferred()

    def changed(exchange):
        if not d.called and predicate(exchange):
            unsubscribe()
            d.callback(exchange)

    unsubscribe = log.subscribe(changed)
    return d


# -- the log -------------------------------------------------------------------


class InterfaceTests(SynchronousTestCase):
    """
    The log and the no-op recorder keep the contract the forwarders rely on.
    """

    def test_exchange_log_is_a_recorder(self):
        """L{ExchangeLog} provides L{IExchangeRecorder}, its exchanges L{IExchange}."""
        log = ExchangeLog(Clock())
        self.assertTrue(verifyObject(IExchangeRecorder, log))
        self.assertTrue(verifyObject(
            IExchange, log.start("http", "GET", "/", "", {}, frozenset())))

    def test_no_recorder_is_a_recorder_that_keeps_nothing(self):
        """L{NO_RECORDER} provides the interface; its one exchange ignores everything."""
        self.assertTrue(verifyObject(IExchangeRecorder, NO_RECORDER))
        exchange = NO_RECORDER.start("http", "GET", "/", "", {}, frozenset())
        self.assertIs(exchange, NULL_EXCHANGE)
        self.assertTrue(verifyObject(IExchange, exchange))
        exchange.request_data(b"x")
        exchange.response_head(200, {})
        exchange.response_data(b"y")
        exchange.finished()

    def test_forwarder_reports_to_no_recorder_by_default(self):
        """Without a recorder the forwarder's is L{NO_RECORDER}."""
        forwarder = LocalForwarder(Clock(), "http://127.0.0.1:1")
        self.assertIs(forwarder.recorder, NO_RECORDER)


class ExchangeLogTests(SynchronousTestCase):
    """
    The log keeps the last N exchanges, newest first, with bounded bodies.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)

    def test_keeps_only_the_last_n_exchanges(self):
        """Past C{keep} exchanges, the oldest ones are forgotten."""
        log = ExchangeLog(self.clock, keep=3)
        for n in range(5):
            record(log, url="/{}".format(n))
        self.assertEqual(len(log), 3)
        self.assertEqual([e.url for e in log.newest_first()], ["/4", "/3", "/2"])
        self.assertIsNone(log.get(1))
        self.assertEqual(log.get(5).url, "/4")

    def test_newest_first_with_increasing_ids(self):
        """Ids count up from 1; the list gives the newest first."""
        log = ExchangeLog(self.clock)
        for path in ["/a", "/b", "/c"]:
            record(log, url=path)
        self.assertEqual([(e.id, e.path) for e in log.newest_first()],
                         [(3, "/c"), (2, "/b"), (1, "/a")])

    def test_body_past_the_limit_is_counted_not_kept(self):
        """Only the first limit bytes are kept; the size counts them all."""
        log = ExchangeLog(self.clock, body_limit=10)
        exchange = record(log, request=b"0123", response=b"abcdefghijklmnopqrstuvwxyz")
        body = exchange.to_json()["response_body"]
        self.assertEqual(body, {"size": 26, "truncated": True, "text": "abcdefghij"})
        self.assertEqual(exchange.to_json()["request_body"],
                         {"size": 4, "truncated": False, "text": "0123"})

    def test_streamed_body_of_any_size_holds_only_the_limit(self):
        """A body of 64 MiB in 64 KiB chunks leaves exactly the limit in memory."""
        capture = BodyCapture(1000)
        chunk = b"x" * 65536
        for _ in range(1024):
            capture.add(chunk)
        self.assertEqual(len(capture.kept), 1000)
        self.assertEqual(capture.size, 64 * 1024 * 1024)
        self.assertTrue(capture.truncated)

    def test_body_exactly_at_the_limit_is_not_truncated(self):
        """A body of exactly the limit is whole."""
        capture = BodyCapture(4)
        capture.add(b"ab")
        capture.add(b"cd")
        self.assertEqual((capture.kept, capture.truncated), (b"abcd", False))

    def test_binary_body_is_shown_as_size_and_hex(self):
        """Bytes that are not text come as size, hex and base64."""
        log = ExchangeLog(self.clock)
        data = bytes(range(256)) * 2
        body = record(log, response=data).to_json()["response_body"]
        self.assertEqual(body["size"], 512)
        self.assertEqual(body["hex"], data.hex())
        self.assertEqual(base64.b64decode(body["base64"]), data)
        self.assertNotIn("text", body)

    def test_hex_is_given_for_the_first_bytes_only(self):
        """Past L{HEX_LIMIT} bytes, hex stops; base64 has every kept byte."""
        log = ExchangeLog(self.clock)
        data = pseudo_random_bytes(HEX_LIMIT * 2) + b"\x00"
        body = record(log, response=data).to_json()["response_body"]
        self.assertEqual(body["hex"], data[:HEX_LIMIT].hex())
        self.assertEqual(base64.b64decode(body["base64"]), data)

    def test_control_characters_make_a_body_binary(self):
        """UTF-8 with a NUL in it is binary, not text."""
        body = BodyCapture(100)
        body.add(b"abc\x00def")
        self.assertIn("hex", body.to_json())

    def test_json_body_is_pretty_printed(self):
        """A JSON body is given as it came (text) and indented (pretty)."""
        log = ExchangeLog(self.clock)
        raw = b'{"name":"caf\xc3\xa9","list":[1,2]}'
        body = record(log, response=raw, response_headers={
            "Content-Type": "application/json"}).to_json()["response_body"]
        self.assertEqual(body["text"], raw.decode("utf-8"))
        self.assertEqual(body["pretty"],
                         '{\n  "name": "caf\u00e9",\n  "list": [\n    1,\n    2\n  ]\n}')

    def test_json_without_a_json_content_type_is_recognised(self):
        """A body that starts like JSON and parses is pretty-printed too."""
        body = BodyCapture(100)
        body.add(b' [1, {"a": null}]')
        self.assertEqual(body.to_json()["pretty"], '[\n  1,\n  {\n    "a": null\n  }\n]')

    def test_truncated_or_invalid_json_is_plain_text(self):
        """A cut or invalid JSON body has no pretty form, only its text."""
        cut = BodyCapture(5)
        cut.add(b'{"a": 12345}')
        self.assertEqual(cut.to_json(), {"size": 12, "truncated": True, "text": '{"a":'})
        invalid = BodyCapture(100)
        invalid.add(b"{not json")
        self.assertNotIn("pretty", invalid.to_json())

    def test_text_cut_inside_a_character_is_still_text(self):
        """The limit falling inside a UTF-8 character drops that character only."""
        body = BodyCapture(4)
        body.add("ab\u00e9\u00e9".encode("utf-8"))
        self.assertEqual(body.to_json(), {"size": 6, "truncated": True, "text": "ab\u00e9"})

    def test_duration_comes_from_the_injected_clock(self):
        """The duration is clock time from start to finish, in milliseconds."""
        log = ExchangeLog(self.clock)
        exchange = log.start("http", "GET", "/", "", {}, frozenset())
        self.assertEqual(exchange.to_json()["state"], "pending")
        self.assertIsNone(exchange.to_json()["duration_ms"])
        self.clock.advance(0.25)
        exchange.response_head(204, {})
        exchange.finished()
        item = exchange.to_json()
        self.assertEqual((item["state"], item["status"], item["duration_ms"]),
                         ("complete", 204, 250.0))
        self.assertEqual(item["started"], 1000)

    def test_an_exchange_cut_short_says_why(self):
        """finished(error) marks the exchange an error; a second finish is ignored."""
        log = ExchangeLog(self.clock)
        exchange = log.start("stream", "GET", "/", "", {}, frozenset())
        exchange.finished("reset: the visitor went away")
        exchange.finished()
        item = exchange.to_json()
        self.assertEqual((item["state"], item["error"], item["status"]),
                         ("error", "reset: the visitor went away", None))

    def test_item_has_every_documented_field(self):
        """An item carries the fields the README documents, headers as pairs."""
        log = ExchangeLog(self.clock)
        exchange = record(log, method="POST", url="/a b", query="x=1",
                          headers={"Accept": "*/*", "X-Multi": ["1", "2"]},
                          response_headers={"Set-Cookie": ["a=1", "b=2"]})
        item = exchange.to_json()
        self.assertEqual(sorted(item), sorted([
            "id", "kind", "method", "path", "status", "state", "error", "started",
            "duration_ms", "replay_of", "request_headers", "response_headers",
            "request_body", "response_body"]))
        self.assertEqual(item["path"], "/a b?x=1")
        self.assertEqual(item["request_headers"],
                         [["Accept", "*/*"], ["X-Multi", "1"], ["X-Multi", "2"]])
        self.assertEqual(item["response_headers"], [["Set-Cookie", "a=1"], ["Set-Cookie", "b=2"]])
        self.assertEqual(json.loads(orjson.dumps(item)), item)

    def test_subscribers_hear_of_start_and_end(self):
        """A subscriber is called when an exchange starts and when it ends, until it unsubscribes."""
        log = ExchangeLog(self.clock)
        seen = []
        unsubscribe = log.subscribe(lambda e: seen.append((e.id, e.done)))
        exchange = log.start("http", "GET", "/", "", {}, frozenset())
        exchange.finished()
        unsubscribe()
        record(log)
        self.assertEqual(seen, [(1, False), (1, True)])

    def test_a_failing_subscriber_is_logged_and_others_still_hear(self):
        """One subscriber raising does not keep the next one from hearing."""
        observer = EventLoggingObserver.createWithCleanup(self, ExchangeLog._log.observer)
        log = ExchangeLog(self.clock)
        seen = []
        log.subscribe(lambda e: 1 / 0)
        log.subscribe(seen.append)
        record(log)
        self.assertEqual(len(seen), 2)
        failures = [e for e in observer if e["log_level"] == LogLevel.critical]
        self.assertEqual(len(failures), 2)
        self.flushLoggedErrors(ZeroDivisionError)

    def test_an_exchange_forgotten_before_it_ends_is_not_announced(self):
        """An exchange pushed out of the log while pending ends silently."""
        log = ExchangeLog(self.clock, keep=1)
        first = log.start("stream", "GET", "/slow", "", {}, frozenset())
        record(log)
        seen = []
        log.subscribe(seen.append)
        first.finished()
        self.assertEqual(seen, [])

    def test_malformed_head_values_are_recorded_as_text(self):
        """A head with a non-string method or url still makes a listable item."""
        log = ExchangeLog(self.clock)
        item = log.start("stream", 5, None, "", {}, frozenset()).to_json()
        self.assertEqual((item["method"], item["path"]), ("5", "None"))


# -- the web interface -----------------------------------------------------------


class FakeForwarder:
    """
    Stands in for L{LocalForwarder} in a replay: remembers each message and
    answers it 201 with C{replayed}, reporting to the exchange as the real
    one does.
    """

    def __init__(self):
        self.calls = []

    def forward(self, message, features=frozenset(), exchange=None):
        self.calls.append((message, features))
        exchange.request_data(message.body)
        exchange.response_head(201, {"Content-Type": "text/plain"})
        exchange.response_data(b"replayed")
        exchange.finished()
        return defer.succeed(HttpResponse(id=message.id, status=201, body=b"replayed"))


class InspectorResourceTests(TestCase):
    """
    The Resource tree, through C{StubTreq}, over a log on a L{Clock} and a
    fake forwarder.
    """

    def setUp(self):
        self.clock = Clock()
        self.log = ExchangeLog(self.clock, keep=10, body_limit=100)
        self.forwarder = FakeForwarder()
        self.resource = InspectorResource(self.log, Replayer(self.forwarder, self.log))
        self.treq = StubTreq(self.resource)

    async def get_json(self, path, code=200, **kwargs):
        response = await self.treq.get("http://127.0.0.1:4040" + path, **kwargs)
        self.assertEqual(response.code, code)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["application/json"])
        return json.loads(await response.content())

    async def post_json(self, path, code=200, **kwargs):
        response = await self.treq.post("http://127.0.0.1:4040" + path, **kwargs)
        self.assertEqual(response.code, code)
        return json.loads(await response.content())

    async def test_get_requests_lists_the_log_newest_first(self):
        """GET /api/requests is the kept exchanges, newest first."""
        record(self.log, url="/first", status=200, response=b"one")
        record(self.log, method="POST", url="/second", status=404, request=b"two")
        items = await self.get_json("/api/requests")
        self.assertEqual([(i["id"], i["method"], i["path"], i["status"]) for i in items],
                         [(2, "POST", "/second", 404), (1, "GET", "/first", 200)])
        self.assertEqual(items[0]["request_body"]["text"], "two")
        self.assertEqual(items[1]["response_body"]["text"], "one")
        self.assertEqual(await self.get_json("/api/requests/"), items)

    async def test_get_one_request_by_id(self):
        """GET /api/requests/<id> is that item; an unknown or bad id is 404."""
        record(self.log, url="/x")
        self.assertEqual((await self.get_json("/api/requests/1"))["path"], "/x")
        self.assertEqual(await self.get_json("/api/requests/7", 404),
                         {"error": "no such exchange"})
        await self.get_json("/api/requests/abc", 404)

    async def test_replay_of_an_unknown_id_is_404(self):
        """Replaying an id the log does not keep is 404, and nothing is sent."""
        body = await self.post_json("/api/requests/42/replay", 404)
        self.assertEqual(body, {"error": "no such exchange"})
        self.assertEqual(self.forwarder.calls, [])

    async def test_replay_sends_the_recorded_request_again(self):
        """Replay forwards the same method, path, query, headers and body, and answers the new item."""
        features = frozenset(["raw-path"])
        original = self.log.start("stream", "PUT", "/things/1", "a=b",
                                  {"X-One": "1", "X-Two": ["2", "3"]}, features)
        original.request_data(b"the body")
        original.response_head(200, {})
        original.finished()
        item = await self.post_json("/api/requests/1/replay")
        [(message, sent_features)] = self.forwarder.calls
        self.assertEqual((message.method, message.url, message.query, message.body),
                         ("PUT", "/things/1", "a=b", b"the body"))
        self.assertEqual(message.headers, {"X-One": ["1"], "X-Two": ["2", "3"]})
        self.assertEqual(sent_features, features)
        self.assertEqual((item["id"], item["replay_of"], item["kind"], item["status"]),
                         (2, 1, "replay", 201))
        self.assertEqual(item["response_body"]["text"], "replayed")
        self.assertEqual([i["id"] for i in await self.get_json("/api/requests")], [2, 1])

    async def test_replay_of_a_truncated_request_body_is_409(self):
        """A request whose body was cut cannot be replayed: 409 says why."""
        record(self.log, method="POST", request=b"x" * 150)
        body = await self.post_json("/api/requests/1/replay", 409)
        self.assertIn("first 100 of the request body's 150 bytes", body["error"])
        self.assertEqual(self.forwarder.calls, [])

    async def test_replay_needs_post(self):
        """GET on the replay URL is 405."""
        record(self.log)
        response = await self.treq.get("http://127.0.0.1:4040/api/requests/1/replay")
        self.assertEqual(response.code, 405)
        self.assertEqual(self.forwarder.calls, [])

    async def test_cross_origin_replay_is_refused(self):
        """A POST another site's page makes (its Origin) is 403 and replays nothing."""
        record(self.log)
        body = await self.post_json("/api/requests/1/replay", 403,
                                    headers={"Origin": "http://evil.example"})
        self.assertIn("cross-origin", body["error"])
        self.assertEqual(self.forwarder.calls, [])
        await self.post_json("/api/requests/1/replay",
                             headers={"Origin": "http://127.0.0.1:4040"})
        self.assertEqual(len(self.forwarder.calls), 1)

    async def test_a_dns_name_in_host_is_refused(self):
        """A Host that is a DNS name (a rebinding page's) gets 403; localhost and IPs work."""
        record(self.log)
        for host, code in [("rebind.evil.example:4040", 403), ("localhost:4040", 200),
                           ("[::1]:4040", 200), ("10.1.2.3", 200)]:
            response = await self.treq.get("http://127.0.0.1:4040/api/requests",
                                           headers={"Host": host})
            self.assertEqual(response.code, code, host)
            await response.content()

    async def test_page_is_self_contained_under_a_strict_policy(self):
        """GET / is the page; its CSP allows only its own inline script and style."""
        response = await self.treq.get("http://127.0.0.1:4040/")
        self.assertEqual(response.code, 200)
        page = (await response.content()).decode("utf-8")
        [policy] = response.headers.getRawHeaders("content-security-policy")
        self.assertEqual(policy, CONTENT_SECURITY_POLICY)
        self.assertIn("default-src 'none'", policy)
        self.assertNotIn("unsafe-inline", policy)
        self.assertIn("<script>" + SCRIPT + "</script>", page)
        self.assertIn("<style>" + STYLE + "</style>", page)
        self.assertNotIn("http://", page.replace('href="data:,"', ""))
        self.assertNotIn("https://", page)
        self.assertNotIn("innerHTML", SCRIPT)
        self.assertIn('data-keep="10"', page)

    async def test_unknown_paths_are_404(self):
        """Paths outside the page and the API are 404."""
        for path in ["/nothing", "/api/nothing", "/index.html"]:
            response = await self.treq.get("http://127.0.0.1:4040" + path)
            self.assertEqual(response.code, 404, path)
            await response.content()


class FakeRequest:
    """
    Just what an event stream uses of a request.
    """

    def __init__(self):
        self.written = []
        self.headers = {}
        self.producer = None
        self.finished = False
        self._finish_waiters = []

    def setHeader(self, name, value):
        self.headers[name] = value

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        assert not self.finished
        self.written.append(data)

    def finish(self):
        self.finished = True
        for d in self._finish_waiters:
            d.callback(None)

    def notifyFinish(self):
        d = defer.Deferred()
        self._finish_waiters.append(d)
        return d

    def lose(self):
        for d in self._finish_waiters:
            d.errback(Exception("connection lost"))

    def events(self):
        """
        The items of the C{exchange} events written so far.
        """
        text = b"".join(self.written).decode("utf-8")
        return [json.loads(block.split("data: ", 1)[1])
                for block in text.split("\n\n") if block.startswith("event: exchange")]


class EventStreamTests(SynchronousTestCase):
    """
    C{/api/events}: one server-sent event per change, bounded when the page
    does not keep up.
    """

    def setUp(self):
        self.log = ExchangeLog(Clock(), body_limit=1000)
        self.resource = EventsResource(self.log)
        self.request = FakeRequest()
        self.assertEqual(self.resource.render_GET(self.request), server.NOT_DONE_YET)

    def test_every_start_and_end_is_an_event(self):
        """An exchange starting and ending gives two events with the item."""
        self.assertEqual(self.request.headers[b"Content-Type"],
                         b"text/event-stream; charset=utf-8")
        record(self.log, url="/live", status=200)
        events = self.request.events()
        self.assertEqual([(e["path"], e["state"]) for e in events],
                         [("/live", "pending"), ("/live", "complete")])
        self.assertTrue(self.request.written[0].startswith(b"retry: "))

    def test_a_paused_stream_queues_then_delivers_in_order(self):
        """While the connection is backed up events wait, and go out in order on resume."""
        self.request.producer.pauseProducing()
        record(self.log, url="/a")
        record(self.log, url="/b")
        self.assertEqual(self.request.events(), [])
        self.request.producer.resumeProducing()
        self.assertEqual([e["path"] for e in self.request.events()], ["/a", "/a", "/b", "/b"])

    def test_a_stream_that_falls_too_far_behind_is_closed(self):
        """Past MAX_QUEUED waiting bytes the stream ends and stops listening."""
        self.request.producer.pauseProducing()
        body = b"x" * 1000
        while not self.request.finished:
            record(self.log, response=body)
        self.assertEqual(len(self.resource), 0)
        self.assertEqual(self.log._subscribers, [])
        self.assertLess(len(self.log) * 1000, MAX_QUEUED * 2)

    def test_a_page_that_goes_away_unsubscribes(self):
        """When the connection is lost the stream stops listening to the log."""
        self.request.lose()
        record(self.log)
        self.assertEqual(self.request.events(), [])
        self.assertEqual(len(self.resource), 0)

    def test_close_all_ends_every_stream(self):
        """close_all finishes each open stream (stopping the service)."""
        other = FakeRequest()
        self.resource.render_GET(other)
        self.resource.close_all()
        self.assertTrue(self.request.finished and other.finished)
        self.assertEqual(len(self.resource), 0)
        self.assertEqual(self.log._subscribers, [])


# -- options -----------------------------------------------------------------------


class OptionsTests(SynchronousTestCase):
    """
    --inspect, --inspect-keep and --inspect-body-limit.
    """

    def test_the_inspector_is_off_by_default(self):
        """Without --inspect there is no inspector service and no recorder."""
        options = tap.Options()
        options.parseOptions([])
        self.assertIsNone(options["inspect"])
        self.assertEqual((options["inspect-keep"], options["inspect-body-limit"]),
                         (100, 65536))
        client = tap.makeService(options, reactor=Clock())
        self.assertEqual(list(client), [])
        self.assertIs(client.forwarder.recorder, NO_RECORDER)

    def test_inspect_adds_the_service_and_the_log(self):
        """--inspect composes an inspector service over the forwarder's log."""
        options = tap.Options()
        options.parseOptions(["--inspect", "tcp:4040:interface=127.0.0.1",
                              "--inspect-keep", "7", "--inspect-body-limit", "99"])
        client = tap.makeService(options, reactor=Clock())
        [inspector] = list(client)
        self.assertIsInstance(inspector, InspectorService)
        log = client.forwarder.recorder
        self.assertIsInstance(log, ExchangeLog)
        self.assertEqual((log.keep, log.body_limit), (7, 99))
        self.assertEqual(inspector.description, "tcp:4040:interface=127.0.0.1")

    def test_bad_values_are_usage_errors(self):
        """A malformed endpoint or a non-positive limit stops with a usage error."""
        for args in [["--inspect", "nonsense:1"], ["--inspect-keep", "0"],
                     ["--inspect-body-limit", "-5"]]:
            self.assertRaises(usage.UsageError, tap.Options().parseOptions, args)


# -- end to end ----------------------------------------------------------------------


class InspectorEndToEndTests(TestCase):
    """
    A real proxy, tunnel client and local service on loopback, with the
    inspector listening on a free port: what goes through the tunnel is
    listed, followed live and replayed for real.
    """

    async def start(self, features=None, body_limit=64 * 1024, local_down=False):
        """
        Start the local service (unless C{local_down}), the tunnel (with
        C{--local-header X-Token: secret}) and the inspector; return the
        inspector's URL.
        """
        self.local = RecordingResource()
        local_url = unused_local_url() if local_down else start_local_service(
            self, self.local)
        self.log = ExchangeLog(reactor, keep=50, body_limit=body_limit)
        client_kwargs = {"recorder": self.log, "local_headers": [("X-Token", "secret")]}
        if features is not None:
            client_kwargs["features"] = features
        self.tunnel = await start_tunnel(self, local_url, client_kwargs)
        service = InspectorService(
            endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1"),
            "tcp:0:interface=127.0.0.1", self.log,
            Replayer(self.tunnel.client.forwarder, self.log))
        self.inspector = service
        transports = track_connections(service.site)
        service.startService()
        self.addCleanup(close_connections, transports)
        self.addCleanup(service.stopService)
        port = await service.when_listening()
        self.visitor = visitor(self)
        return "http://127.0.0.1:{}".format(port.getHost().port)

    async def through_tunnel(self, method, path, body=None):
        response = await self.visitor.request(method, self.tunnel.path_url(path), data=body)
        return response.code, await response.content()

    async def inspector_json(self, method, url):
        response = await self.visitor.request(method, url)
        return response.code, json.loads(await response.content())

    async def wait_done(self, path):
        """
        Wait until an exchange for C{path} is over (the visitor may have
        the whole answer a moment before the client has recorded its end).
        """
        return await wait_for_exchange(self.log, lambda e: e.done and e.path == path)

    async def check_listed_and_replayed(self, kind):
        inspector = await self.start(
            features=None if kind == "stream" else MESSAGE_FEATURES)
        code, body = await self.through_tunnel("POST", "/echo-body?q=1", b"hello inspector")
        self.assertEqual((code, body), (200, b"hello inspector"))
        code, _ = await self.through_tunnel("GET", "/status/404")
        self.assertEqual(code, 404)
        await self.wait_done("/echo-body?q=1")
        await self.wait_done("/status/404")

        code, items = await self.inspector_json("GET", inspector + "/api/requests")
        self.assertEqual(code, 200)
        self.assertEqual([(i["method"], i["path"], i["status"], i["kind"]) for i in items],
                         [("GET", "/status/404", 404, kind),
                          ("POST", "/echo-body?q=1", 200, kind)])
        echo = items[1]
        self.assertEqual(echo["request_body"], {"size": 15, "truncated": False,
                                                "text": "hello inspector"})
        self.assertEqual(echo["response_body"], {"size": 15, "truncated": False,
                                                 "text": "hello inspector"})
        self.assertEqual(items[0]["response_body"]["text"], "status 404\n")
        self.assertIn(["Content-Type", "application/octet-stream"], echo["response_headers"])
        # The visitor's headers, not what --local-header adds.
        self.assertNotIn("x-token", [name.lower() for name, _ in echo["request_headers"]])
        self.assertGreaterEqual(echo["duration_ms"], 0)

        code, replayed = await self.inspector_json(
            "POST", inspector + "/api/requests/{}/replay".format(echo["id"]))
        self.assertEqual(code, 200, replayed)
        self.assertEqual((replayed["replay_of"], replayed["status"], replayed["path"]),
                         (echo["id"], 200, "/echo-body?q=1"))
        self.assertEqual(replayed["response_body"]["text"], "hello inspector")
        received = self.local.requests_to(b"/echo-body")
        self.assertEqual([(r.method, r.uri, r.body, r.header("X-Token")) for r in received],
                         [(b"POST", b"/echo-body?q=1", b"hello inspector", ["secret"])] * 2)
        code, items = await self.inspector_json("GET", inspector + "/api/requests")
        self.assertEqual(items[0]["id"], replayed["id"])

    async def test_streamed_requests_are_listed_and_replayed(self):
        """Streamed requests show up with status and bodies; a replay reaches the local service again."""
        await self.check_listed_and_replayed("stream")

    async def test_v1_requests_are_listed_and_replayed(self):
        """So do v1 (buffered) requests, on a tunnel without streams."""
        await self.check_listed_and_replayed("http")

    async def test_a_large_streamed_body_keeps_only_the_limit(self):
        """A 3 MiB upload and download are listed with their sizes, 1 KiB kept; replay is 409."""
        inspector = await self.start(body_limit=1024)
        upload = pseudo_random_bytes(3 * 1024 * 1024)
        code, body = await self.through_tunnel("POST", "/echo-body", upload)
        self.assertEqual(code, 200)
        self.assertTrue(body == upload)
        exchange = await self.wait_done("/echo-body")
        self.assertEqual((len(exchange.request_body.kept), len(exchange.response_body.kept)),
                         (1024, 1024))
        _, items = await self.inspector_json("GET", inspector + "/api/requests")
        for name in ["request_body", "response_body"]:
            self.assertEqual((items[0][name]["size"], items[0][name]["truncated"]),
                             (len(upload), True))
            self.assertEqual(base64.b64decode(items[0][name]["base64"]), upload[:1024])
        code, answer = await self.inspector_json(
            "POST", inspector + "/api/requests/{}/replay".format(items[0]["id"]))
        self.assertEqual(code, 409)
        self.assertEqual(len(self.local.requests_to(b"/echo-body")), 1)

    async def check_local_failure_recorded(self, kind):
        inspector = await self.start(
            features=None if kind == "stream" else MESSAGE_FEATURES, local_down=True)
        code, body = await self.through_tunnel("GET", "/down")
        self.assertEqual(code, 502)
        await self.wait_done("/down")
        _, [item] = await self.inspector_json("GET", inspector + "/api/requests")
        self.assertEqual((item["kind"], item["status"], item["state"]),
                         (kind, 502, "complete"))
        self.assertEqual(item["response_body"]["text"], body.decode("utf-8"))
        self.assertIn("could not be reached", body.decode("utf-8"))

    async def test_a_streamed_answer_from_the_client_itself_is_recorded(self):
        """The client's own 502 (local service down) is listed as the visitor got it."""
        await self.check_local_failure_recorded("stream")

    async def test_a_v1_answer_from_the_client_itself_is_recorded(self):
        """So is the v1 path's."""
        await self.check_local_failure_recorded("http")

    async def test_a_visitor_hanging_up_is_recorded_as_cut_short(self):
        """A streamed request the visitor gives up on ends as an error, with the reason."""
        await self.start()
        started = wait_for_exchange(self.log, lambda e: e.path == "/slow")
        arrived = self.local.wait_for_request(b"/slow")
        request = self.visitor.get(self.tunnel.path_url("/slow"))
        request.addErrback(lambda f: None)
        await started
        await arrived
        request.cancel()
        exchange = await self.wait_done("/slow")
        item = exchange.to_json()
        self.assertEqual((item["state"], item["status"]), ("error", None))
        self.assertTrue(item["error"].startswith("reset: "), item["error"])

    async def test_event_stream_announces_requests_live(self):
        """An /api/events reader gets the exchange as it starts and as it ends."""
        inspector = await self.start()
        response = await self.visitor.get(inspector + "/api/events", unbuffered=True)
        self.assertEqual(response.code, 200)
        received = bytearray()
        complete = defer.Deferred()

        def chunk(data):
            received.extend(data)
            if b'"state":"complete"' in received and not complete.called:
                complete.callback(None)

        collected = treq.collect(response, chunk)
        code, _ = await self.through_tunnel("GET", "/status/201")
        self.assertEqual(code, 201)
        await complete
        events = [json.loads(block.split(b"data: ", 1)[1])
                  for block in bytes(received).split(b"\n\n")
                  if block.startswith(b"event: exchange")]
        self.assertEqual([(e["path"], e["state"], e["status"]) for e in events],
                         [("/status/201", "pending", None),
                          ("/status/201", "complete", 201)])
        # Stopping the inspector ends the stream.
        self.inspector.resource.events.close_all()
        await collected
