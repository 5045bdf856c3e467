"""
Graceful stops and restarts of the proxy (L{ProxyService.stopService}):
it stops listening, lets requests in flight finish for up to
C{shutdown_grace} seconds while new requests on connections already open get
503, sends tunnel clients away with close code 1001 so they reconnect, and
only then releases the bus.

Everything runs on loopback with real sockets: a recording local service, a
real tunnel client, and the proxy -- in-process, or as a real C{twistd
brickproxy} process stopped with SIGTERM -- except the timing of the grace
itself (L{GraceOnAClockTests}), which runs on a L{MemoryReactorClock}.
"""

import collections
import json
import os
import signal
import socket
import sys

import treq
from twisted.internet import defer, error, protocol, reactor, task
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
)

from brickchain_proxy.features import CLIENT_DEFAULT
from brickchain_proxy.proxy.service import ProxyService
from tests.support import (
    RecordingResource,
    close_connections,
    start_client,
    start_local_service,
    start_proxy,
    start_tunnel,
    stop_client,
    visitor,
    wait_until,
)
from tests.support_http import MemoryVisitor
from tests.support_hub import CLIENT, FakeConnection

#: A client-side bound on every request: reaching it means a request hung.
REQUEST_TIMEOUT = 10.0

CLOSE_GOING_AWAY = 1001


async def within(d, seconds, what):
    """
    Wait for C{d}, failing the test if it takes more than C{seconds}.
    """

    def timed_out(result, timeout):
        return Failure(AssertionError("{} took more than {:g} s".format(what, seconds)))

    return await d.addTimeout(seconds, reactor, onTimeoutCancel=timed_out)


class RawConnection(protocol.Protocol):
    """
    A visitor's TCP connection, opened ahead of time, that sends whatever
    the test says and records the answer.
    """

    def __init__(self):
        self.received = b""
        self.closed = False

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed = True


async def open_raw(testcase, port):
    """
    Open a L{RawConnection} to 127.0.0.1:C{port}; it is closed at the end
    of the test.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    connection = await endpoint.connect(
        protocol.Factory.forProtocol(RawConnection))

    async def close():
        connection.transport.loseConnection()
        await wait_until(lambda: connection.closed, what="raw connection closed")

    testcase.addCleanup(lambda: defer.ensureDeferred(close()))
    return connection


class _GracefulFixture:
    """
    A recording local service, a visitor, an observer of every log event,
    and helpers.
    """

    timeout = 60

    def setUp(self):
        self.local = RecordingResource()
        self.local_url = start_local_service(self, self.local)
        self.http = visitor(self)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    async def fetch(self, url, **kwargs):
        """
        GET C{url}; return the response and its whole body, failing the
        test if either takes longer than L{REQUEST_TIMEOUT}.
        """
        response = await within(self.http.get(url, **kwargs), REQUEST_TIMEOUT,
                                "response to {}".format(url))
        body = await within(response.content(), REQUEST_TIMEOUT,
                            "body of {}".format(url))
        return response, body

    def client_close_codes(self):
        """
        The close codes of the tunnel client's registered connections, as
        its service logged them.
        """
        return [e["code"] for e in self.events
                if "client.service" in e.get("log_namespace", "") and "code" in e]


class InFlightTests(_GracefulFixture, TestCase):
    """
    Requests that were already being answered when the stop began.
    """

    async def test_in_flight_request_finishes_during_a_graceful_stop(self):
        """A slow request in flight still gets its 200; the stop completes; the client is sent away with 1001."""
        self.local.slow_delay = 0.3
        tunnel = await start_tunnel(self, self.local_url, shutdown_grace=5.0)
        arrived = self.local.wait_for_request(b"/slow")
        pending = defer.ensureDeferred(self.fetch(tunnel.path_url("/slow")))
        await within(arrived, REQUEST_TIMEOUT, "the slow request reaching the service")

        stopped = defer.ensureDeferred(tunnel.proxy.stopService())

        response, body = await pending
        self.assertEqual((response.code, body), (200, b"slow\n"))
        await within(stopped, 5.0, "the graceful stop")
        await wait_until(lambda: CLOSE_GOING_AWAY in self.client_close_codes(),
                         what="the client saw close code 1001")
        self.assertEqual(len(tunnel.proxy.hub.pending), 0)
        self.assertEqual(tunnel.proxy.hub.local, {})

    async def test_new_request_on_an_open_connection_gets_503_during_the_grace(self):
        """While the stop waits for requests in flight, a new request on an open connection gets 503 and Connection: close."""
        tunnel = await start_tunnel(self, self.local_url, shutdown_grace=5.0)
        idle = await open_raw(self, tunnel.port)
        arrived = self.local.wait_for_request(b"/slow")
        pending = defer.ensureDeferred(self.fetch(tunnel.path_url("/slow")))
        await within(arrived, REQUEST_TIMEOUT, "the slow request reaching the service")
        stopped = defer.ensureDeferred(tunnel.proxy.stopService())
        await wait_until(lambda: tunnel.proxy.public.shutting_down,
                         what="the stop began")

        idle.transport.write(
            "GET /proxy/request/{}/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            .format(tunnel.client_id).encode("ascii"))

        # It answers and, as its Connection: close says, closes.
        await wait_until(lambda: idle.closed, what="the proxy answered and closed")
        head = idle.received.partition(b"\r\n\r\n")[0].lower()
        self.assertTrue(head.startswith(b"http/1.1 503 "), idle.received)
        self.assertIn(b"\r\nconnection: close", head)
        self.assertEqual(self.local.requests_to(b"/echo"), [])
        self.local.answer_slow()
        response, body = await pending
        self.assertEqual((response.code, body), (200, b"finally\n"))
        await within(stopped, 5.0, "the graceful stop")


class GraceDeadlineTests(_GracefulFixture, TestCase):
    """
    Requests that do not finish within the grace.
    """

    async def test_request_slower_than_the_grace_gets_502_not_a_hang(self):
        """A request still unanswered when the grace runs out gets an explicit 502 (when: L{GraceOnAClockTests})."""
        tunnel = await start_tunnel(self, self.local_url, shutdown_grace=0.3)
        arrived = self.local.wait_for_request(b"/slow")  # never answered
        pending = defer.ensureDeferred(self.fetch(tunnel.path_url("/slow")))
        await within(arrived, REQUEST_TIMEOUT, "the slow request reaching the service")

        stopped = defer.ensureDeferred(tunnel.proxy.stopService())

        response, body = await pending
        self.assertEqual(
            (response.code, body),
            (502, b"the tunnel's connection was lost before it answered\n"))
        await within(stopped, 5.0, "the stop")
        self.assertEqual(len(tunnel.proxy.hub.pending), 0)
        self.assertIn(CLOSE_GOING_AWAY, self.client_close_codes())


class GraceOnAClockTests(SynchronousTestCase):
    """
    When a stop ends, on a L{MemoryReactorClock}: the proxy service listens
    on the memory reactor, its tunnel is a L{FakeConnection} attached to
    its hub, and one visitor, connected in memory, has a request waiting
    for the tunnel when the stop begins.
    """

    GRACE = 5.0

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.proxy = ProxyService(
            self.reactor, ["tcp:0:interface=127.0.0.1"], "proxy.test",
            "http://proxy.test", shutdown_grace=self.GRACE)
        self.successResultOf(defer.maybeDeferred(self.proxy.startService))
        self.tunnel = FakeConnection(features=CLIENT_DEFAULT)
        self.successResultOf(self.proxy.hub.attach(CLIENT, self.tunnel))
        self.visitor = MemoryVisitor(self.proxy.site)
        self.visitor.request(
            b"GET", b"/proxy/request/" + CLIENT.encode("ascii") + b"/slow")
        self.assertEqual(len(self.tunnel.sent), 1)
        self.addCleanup(self.assertNothingLeft)

    def assertNothingLeft(self):
        """
        Nothing waits for a tunnel; once the visitor's connection is gone,
        no timer is left.
        """
        self.assertEqual(len(self.proxy.hub.pending), 0)
        self.assertEqual(self.proxy.public.in_flight, {})
        self.assertEqual(self.proxy.hub.local, {})
        self.visitor.close()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stop_ends_as_soon_as_the_request_in_flight_is_answered(self):
        """The request in flight gets its answer within the grace, and the stop completes at that moment, without waiting out the grace."""
        stopped = self.proxy.stopService()
        self.reactor.advance(1.0)
        self.assertNoResult(stopped)

        self.tunnel.answer(self.proxy.hub, self.tunnel.sent[0], body=b"slow\n")

        answer = self.visitor.answer()
        self.assertEqual((answer.status, answer.body), (200, b"slow\n"))
        self.successResultOf(stopped)

    def test_request_slower_than_the_grace_gets_502_when_the_grace_runs_out(self):
        """A request unanswered when the grace runs out gets 502 at that moment, not before; then the stop completes."""
        stopped = self.proxy.stopService()

        self.reactor.advance(self.GRACE - 0.001)
        self.assertFalse(self.visitor.answered())
        self.assertNoResult(stopped)
        self.reactor.advance(0.001)

        answer = self.visitor.answer()
        self.assertEqual(
            (answer.status, answer.body),
            (502, b"the tunnel's connection was lost before it answered\n"))
        self.successResultOf(stopped)


class RestartUnderLoadTests(_GracefulFixture, TestCase):
    """
    A proxy restarted on the same port while visitors keep sending.
    """

    timeout = 90
    _log = Logger()

    #: concurrent visitor loops
    VISITORS = 8
    #: successes wanted before the restart, and after the re-registration
    SUCCESSES = 40
    #: the most requests all loops together may send
    MAX_REQUESTS = 3000
    #: seconds a visitor waits after a failed request
    RETRY_DELAY = 0.02

    async def test_restart_under_steady_load_answers_every_request_once(self):
        """Under steady load across a restart, every request ends in 200, an explicit 502/503 or a refused connection while the port is closed; none hangs, none is answered twice."""
        tunnel = await start_tunnel(self, self.local_url, shutdown_grace=2.0,
                                    rate_limit=(100000, 1.0))
        self.tunnel = tunnel
        # Half the visitors keep their connections open between requests
        # (those meet the 503s of the grace); none retries by itself, so
        # every attempt is counted.
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.retryAutomatically = False
        self.addCleanup(pool.closeCachedConnections)
        self.clients = [self.http, treq.client.HTTPClient(Agent(reactor, pool=pool))]
        self.outcomes = {}  # request id -> (outcome, started, ended, detail)
        self.issued = 0
        self.done = False
        self.stop_began = self.listening_again = None
        loops = [defer.ensureDeferred(self.visitor_loop(n)) for n in range(self.VISITORS)]
        try:
            await wait_until(lambda: self.count("200") >= self.SUCCESSES,
                             tries=1000, what="successes before the restart")

            # The restart: stop gracefully, then a new proxy on the same port.
            self.stop_began = reactor.seconds()
            await within(defer.ensureDeferred(tunnel.proxy.stopService()), 10.0,
                         "the graceful stop")
            await close_connections(tunnel.proxy_transports)
            new_proxy, _, _ = await start_proxy(self, port=tunnel.port, shutdown_grace=2.0,
                                                rate_limit=(100000, 1.0))
            self.listening_again = reactor.seconds()
            # Stop the client before the new proxy (cleanups run last first).
            self.addCleanup(stop_client, tunnel.client)
            await within(tunnel.client.when_registered(), 20.0, "the re-registration")
            registered_again = reactor.seconds()
            await wait_until(
                lambda: self.count("200", after=registered_again) >= self.SUCCESSES,
                tries=1000, what="successes after the restart")
        finally:
            self.done = True
            await within(defer.gatherResults(loops, consumeErrors=True), 2 * REQUEST_TIMEOUT,
                         "the visitor loops ending")

        counts = collections.Counter(outcome for outcome, _, _, _ in self.outcomes.values())
        reasons = collections.Counter(
            "{} {}".format(outcome, detail.decode("utf-8", "replace").split(";")[0].strip()
                           if isinstance(detail, bytes) else "")
            for outcome, _, _, detail in self.outcomes.values() if outcome in ("502", "503"))
        self._log.info("restart under load: {issued} requests, outcomes {counts}, "
                       "explicit errors {reasons}", issued=self.issued,
                       counts=dict(sorted(counts.items())), reasons=dict(reasons))
        self.assertEqual(len(self.outcomes), self.issued)
        self.assertLessEqual(set(counts), {"200", "502", "503", "refused", "reset"},
                             self.unexpected())
        self.assertGreater(self.count("200", after=registered_again), 0)

        # Nothing was answered twice: each id reached the local service at
        # most once, and exactly once when the visitor got its 200.
        seen = collections.Counter(r.path for r in self.local.requests)
        self.assertEqual([path for path, n in seen.items() if n > 1], [])
        for request_id, (outcome, started, ended, _) in self.outcomes.items():
            path = "/load/{}".format(request_id).encode("ascii")
            if outcome == "200":
                self.assertEqual(seen[path], 1, request_id)
            elif outcome in ("refused", "reset"):
                # Only while the port was closed (or the old proxy was
                # closing the connections it had).
                self.assertLessEqual(self.stop_began, ended, request_id)
                self.assertLessEqual(started, self.listening_again, request_id)
        for proxy in (tunnel.proxy, new_proxy):
            self.assertEqual(len(proxy.hub.pending), 0)
            self.assertEqual(proxy.public.in_flight, {})

    def count(self, outcome, after=None):
        return sum(1 for o, started, _, _ in self.outcomes.values()
                   if o == outcome and (after is None or started >= after))

    def unexpected(self):
        return [(request_id, outcome, detail)
                for request_id, (outcome, _, _, detail) in sorted(self.outcomes.items())
                if outcome not in ("200", "502", "503", "refused", "reset")][:10]

    async def visitor_loop(self, number):
        """
        Send one request after another, each with a unique id in its path,
        and record how each ended.
        """
        sequence = 0
        while not self.done and self.issued < self.MAX_REQUESTS:
            request_id = "v{}-{}".format(number, sequence)
            sequence += 1
            self.issued += 1
            started = reactor.seconds()
            outcome, detail = await self.one_request(
                self.clients[number % len(self.clients)], request_id)
            self.outcomes[request_id] = (outcome, started, reactor.seconds(), detail)
            if outcome != "200":
                # A visitor pauses before trying again.
                await task.deferLater(reactor, self.RETRY_DELAY, lambda: None)

    async def one_request(self, http, request_id):
        path = "/load/{}".format(request_id)
        try:
            response = await http.get(self.tunnel.path_url(path),
                                           timeout=REQUEST_TIMEOUT)
            body = await response.content().addTimeout(REQUEST_TIMEOUT, reactor)
        except error.ConnectionRefusedError:
            return "refused", None
        except (ResponseNeverReceived, ResponseFailed) as e:
            if any(reason.check(CancelledError) for reason in e.reasons):
                return "hung", repr(e)
            return "reset", repr(e.reasons)
        except (error.ConnectionLost, error.ConnectionDone) as e:
            return "reset", repr(e)
        except (CancelledError, error.ConnectingCancelledError, defer.TimeoutError):
            return "hung", "timed out"
        if response.code == 200:
            uri = json.loads(body)["uri"]
            return ("200", None) if uri == path else ("wrong body", uri)
        if response.code in (502, 503) and body:
            return str(response.code), body
        return "status {}".format(response.code), body


class ProcessRecorder(protocol.ProcessProtocol):
    """
    Collects a child process's output and its exit.
    """

    def __init__(self):
        self.output = b""
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        # (exit code, terminating signal): one of them is None.
        self.ended.callback((reason.value.exitCode, reason.value.signal))


def free_port():
    """
    A loopback TCP port that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SigtermTests(_GracefulFixture, TestCase):
    """
    A real C{twistd brickproxy} process stopped with SIGTERM.
    """

    async def test_sigterm_lets_the_slow_request_finish_then_exits_cleanly(self):
        """On SIGTERM twistd lets the in-flight request finish with 200, sends the client away with 1001, and exits cleanly."""
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            raise SkipTest("no twistd next to {}".format(sys.executable))
        port = free_port()
        base = "http://127.0.0.1:{}".format(port)
        workdir = self.mktemp()
        os.makedirs(workdir)
        process = ProcessRecorder()
        reactor.spawnProcess(
            process, twistd,
            [twistd, "-n", "--pidfile=", "brickproxy",
             "--listen", "tcp:{}:interface=127.0.0.1".format(port),
             "--base", base, "--domain", "localhost", "--shutdown-grace", "5"],
            env=os.environ.copy(), path=workdir)
        self.addCleanup(self.kill, process)

        await self.until_serving(base, process)
        client = start_client(self, base, self.local_url)
        registration = await within(client.when_registered(), 20.0, "the registration")
        self.local.slow_delay = 0.5
        arrived = self.local.wait_for_request(b"/slow")
        pending = defer.ensureDeferred(self.fetch(
            "{}/proxy/request/{}/slow".format(base, registration.key_id)))
        await within(arrived, REQUEST_TIMEOUT, "the slow request reaching the service")

        process.transport.signalProcess("TERM")

        response, body = await pending
        self.assertEqual((response.code, body), (200, b"slow\n"))
        code, sig = await within(process.ended, 15.0, "the proxy process exiting")
        output = process.output.decode("utf-8", "replace")
        # A clean exit: status 0, or -- what twistd does since Twisted 21.2
        # after a clean shutdown on a signal -- the signal raised again, so
        # the parent sees how it ended (systemd counts SIGTERM as success).
        self.assertIn((code, sig), [(0, None), (None, signal.SIGTERM)], output)
        self.assertIn("Server Shut Down.", output)
        self.assertNotIn("Traceback", output)
        await wait_until(lambda: CLOSE_GOING_AWAY in self.client_close_codes(),
                         what="the client saw close code 1001")

    async def until_serving(self, base, process):
        """
        Wait until the proxy process answers C{GET /}.
        """
        for _ in range(200):
            if process.ended.called:
                self.fail("twistd exited: " + process.output.decode("utf-8", "replace"))
            try:
                response, _ = await self.fetch(base + "/")
            except (error.ConnectionRefusedError, ResponseNeverReceived):
                await task.deferLater(reactor, 0.1, lambda: None)
            else:
                if response.code == 200:
                    return
        self.fail("twistd did not start serving: "
                  + process.output.decode("utf-8", "replace"))

    async def kill(self, process):
        """
        Make sure the child is gone at the end of the test.
        """
        if not process.ended.called:
            try:
                process.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass
            await within(process.ended, 10.0, "the killed proxy process exiting")
