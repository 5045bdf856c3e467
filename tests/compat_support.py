"""
Fixtures for the compatibility tier: third-party local services and
third-party visitors, each a subprocess (the programs are in
L{tests.compat}).

Processes are spawned with C{reactor.spawnProcess}; nothing here blocks the
reactor.  Every process started for a test is stopped by a cleanup
(SIGTERM, then SIGKILL if it lingers), and the cleanup waits until it has
ended, so no process or pipe outlives its test.
"""

import base64
import json
import os
import socket
import sys

import attr
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectError, ProcessExitedAlready
from twisted.internet.protocol import Factory, Protocol, ProcessProtocol
from twisted.logger import Logger

PROGRAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compat")

#: How long a stopped program may take to exit before it is killed.
STOP_GRACE = 10.0

_log = Logger()


def find_executable(name):
    """
    The path of program C{name} on C{PATH} or in the usual C{sbin}
    directories (which a non-root C{PATH} may lack), or L{None}.
    """
    directories = os.environ.get("PATH", "").split(os.pathsep)
    directories += ["/usr/local/sbin", "/usr/sbin", "/sbin"]
    for directory in directories:
        path = os.path.join(directory, name)
        if directory and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def free_port():
    """
    A TCP port on 127.0.0.1 that was free a moment ago (for programs that
    cannot listen on port 0 and say which port they got).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- processes -----------------------------------------------------------------


class ProgramFailed(Exception):
    """
    A program ended (or never said what it had to) unexpectedly.
    """


class Program(ProcessProtocol):
    """
    One spawned program: its output so far and its end.

    @ivar out: everything it wrote to stdout.
    @ivar err: everything it wrote to stderr.
    @ivar exit_code: its exit code once ended (L{None} if a signal ended it).
    @ivar signal: the signal that ended it, or L{None}.
    """

    def __init__(self, name):
        self.name = name
        self.out = bytearray()
        self.err = bytearray()
        self.ended = False
        self.exit_code = None
        self.signal = None
        self._line_waiters = []
        self._end_waiters = []

    def describe(self):
        """
        The program's name, how it ended and its stderr, for failure messages.
        """
        if not self.ended:
            how = "still running"
        elif self.signal is not None:
            how = "killed by signal {}".format(self.signal)
        else:
            how = "exit code {}".format(self.exit_code)
        return "{} ({}); stderr:\n{}".format(
            self.name, how, self.err.decode("utf-8", "replace"))

    def first_line(self):
        """
        A L{Deferred} firing with the first line of stdout (L{str}, without
        the newline), or failing with L{ProgramFailed} if it ends first.
        """
        d = defer.Deferred(lambda d: self._line_waiters.remove(d))
        self._line_waiters.append(d)
        self._deliver_line()
        return d

    def when_ended(self):
        """
        A L{Deferred} firing with this L{Program} once it has ended and its
        pipes are closed.
        """
        if self.ended:
            return defer.succeed(self)
        d = defer.Deferred(lambda d: self._end_waiters.remove(d))
        self._end_waiters.append(d)
        return d

    def stop(self):
        """
        Ask the program to end (SIGTERM); kill it after L{STOP_GRACE} seconds.

        @return: a L{Deferred} firing once it has ended.
        """
        if self.ended:
            return defer.succeed(self)
        self._signal("TERM")
        killer = reactor.callLater(STOP_GRACE, self._signal, "KILL")
        d = self.when_ended()

        def ended(result):
            if killer.active():
                killer.cancel()
            return result

        return d.addBoth(ended)

    def _signal(self, name):
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def _deliver_line(self):
        if self._line_waiters and b"\n" in self.out:
            line = bytes(self.out).split(b"\n", 1)[0].decode("utf-8", "replace")
            waiters, self._line_waiters = self._line_waiters, []
            for d in waiters:
                d.callback(line.strip())

    # -- ProcessProtocol ---------------------------------------------------

    def outReceived(self, data):
        self.out += data
        self._deliver_line()

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.ended = True
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.signal = getattr(reason.value, "signal", None)
        waiters, self._line_waiters = self._line_waiters, []
        for d in waiters:
            d.errback(ProgramFailed("ended before printing a line: "
                                    + self.describe()))
        waiters, self._end_waiters = self._end_waiters, []
        for d in waiters:
            d.callback(self)


def spawn(testcase, name, argv, supervised=False, env=None):
    """
    Start C{argv} (stdout and stderr read) and stop it at the end of the
    test, waiting until it has ended.

    @param supervised: run it under C{tests/compat/supervise.py} with its
        stdin a pipe we keep open, so that it dies with this process even
        if no cleanup runs (for services; a visitor ends by itself).
    @param env: variables to add to (or replace in) the environment.
    @return: its L{Program}.
    """
    if supervised:
        argv = [sys.executable, os.path.join(PROGRAMS, "supervise.py")] + list(argv)
    program = Program(name)
    reactor.spawnProcess(program, argv[0], argv, env=dict(os.environ, **(env or {})),
                         childFDs={0: "w", 1: "r", 2: "r"})
    if not supervised:
        program.transport.closeStdin()
    testcase.addCleanup(_stop, program)
    return program


async def _stop(program):
    await program.stop()
    if program.err:
        _log.info("{name} stderr: {stderr}", name=program.name,
                  stderr=program.err.decode("utf-8", "replace"))


def python_program(script, *args):
    """
    The argv running C{tests/compat/<script>} with this interpreter.
    """
    return [sys.executable, os.path.join(PROGRAMS, script)] + list(args)


async def start_service(testcase, name, argv):
    """
    Start a service program that prints its port as its first line.

    @return: C{(program, port)} once that line has arrived (the program
        listens by then).
    """
    program = spawn(testcase, name, argv, supervised=True)
    line = await program.first_line()
    if not line.isdigit():
        raise ProgramFailed("expected a port, got {!r}: {}".format(
            line, program.describe()))
    return program, int(line)


async def run(testcase, name, argv):
    """
    Run C{argv} to its end.

    @return: its stdout (L{bytes}), if it exited with 0.
    @raise ProgramFailed: if it did not.
    """
    program = spawn(testcase, name, argv)
    await program.when_ended()
    if program.exit_code != 0:
        raise ProgramFailed(program.describe())
    return bytes(program.out)


class _Probe(Protocol):
    def connectionMade(self):
        self.transport.loseConnection()


async def wait_for_listener(program, port):
    """
    Poll 127.0.0.1:C{port} until something accepts a connection there.

    @raise ProgramFailed: if C{program} ends first.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    while not program.ended:
        try:
            await endpoint.connect(Factory.forProtocol(_Probe))
        except ConnectError:
            await task.deferLater(reactor, 0.01, lambda: None)
        else:
            return
    raise ProgramFailed("ended before listening: " + program.describe())


# -- local services -------------------------------------------------------------


@attr.s(frozen=True)
class LocalService:
    """
    A running local service.

    @ivar url: C{http://127.0.0.1:<port>}, for the tunnel client.
    @ivar static: for nginx, C{{path: bytes}} of the static files it serves.
    """

    name = attr.ib()
    url = attr.ib()
    programs = attr.ib()
    static = attr.ib(factory=dict)


async def start_python_service(testcase, script):
    """
    Start C{tests/compat/<script>} (one of the Python apps) on a free port.
    """
    program, port = await start_service(testcase, script, python_program(script))
    return LocalService(script, "http://127.0.0.1:{}".format(port), [program])


def start_aiohttp(testcase):
    """
    The aiohttp.web app (see L{tests.compat.aiohttp_app}).
    """
    return start_python_service(testcase, "aiohttp_app.py")


def start_asgi(testcase):
    """
    The Starlette app under uvicorn (see L{tests.compat.asgi_app}).
    """
    return start_python_service(testcase, "asgi_app.py")


def start_twisted(testcase):
    """
    The twisted.web + Autobahn app (see L{tests.compat.twisted_app}).
    """
    return start_python_service(testcase, "twisted_app.py")


#: nginx's path, or L{None} when it is not installed.
NGINX = find_executable("nginx")


async def start_nginx(testcase, static, attempts=3):
    """
    Start nginx on a free port, in front of a fresh aiohttp app: it serves
    C{static} (C{{path: bytes}}, paths under C{/static/}) from a temporary
    directory and proxies every other path, websockets included, to the app.
    """
    app = await start_aiohttp(testcase)
    prefix = os.path.abspath(testcase.mktemp())
    for directory in ["www", "tmp"]:
        os.makedirs(os.path.join(prefix, directory))
    for path, content in static.items():
        assert path.startswith("/static/"), path
        filename = os.path.join(prefix, "www", *path.lstrip("/").split("/"))
        os.makedirs(os.path.dirname(filename), exist_ok=True)
        with open(filename, "wb") as f:
            f.write(content)
    with open(os.path.join(PROGRAMS, "nginx.conf.in")) as f:
        template = f.read()
    conf = os.path.join(prefix, "nginx.conf")
    for attempt in range(attempts):
        # free_port() races with everything else on the machine; a port
        # taken meanwhile makes nginx exit at once, and we try another.
        port = free_port()
        with open(conf, "w") as f:
            f.write(template.replace("@PREFIX@", prefix)
                    .replace("@PORT@", str(port))
                    .replace("@APP_PORT@", app.url.rsplit(":", 1)[1]))
        program = spawn(testcase, "nginx", [
            NGINX, "-p", prefix, "-c", conf, "-e", "stderr", "-g", "daemon off;"],
            supervised=True)
        try:
            await wait_for_listener(program, port)
        except ProgramFailed:
            if b"Address already in use" not in program.err or attempt + 1 == attempts:
                raise
        else:
            return LocalService("nginx", "http://127.0.0.1:{}".format(port),
                                [program] + app.programs, dict(static))


# -- visitors ---------------------------------------------------------------------


@attr.s(frozen=True)
class HTTPAnswer:
    """
    What an HTTP visitor received.

    @ivar headers: C{[(name, value), ...]} in the order they arrived.
    """

    status = attr.ib()
    headers = attr.ib()
    body = attr.ib()

    def header(self, name):
        """
        Every value of header C{name}, in order.
        """
        return [v for n, v in self.headers if n.lower() == name.lower()]


def _write_temp(testcase, content):
    path = os.path.abspath(testcase.mktemp())
    with open(path, "wb") as f:
        f.write(content)
    return path


#: curl's path, or L{None} when it is not installed.
CURL = find_executable("curl")


async def curl(testcase, url, method="GET", host=None, headers=(), data=None):
    """
    One request made by curl (C{curl -s -D - ...}).

    @param host: a Host header to send (the URL still says where to connect).
    @param headers: more C{(name, value)} headers.
    @param data: a body to send (L{bytes}), sent as C{--data-binary}.
    @return: an L{HTTPAnswer} (after any C{1xx} interim answers).
    """
    argv = [CURL, "-s", "-S", "--noproxy", "*", "--http1.1", "-D", "-",
            "-X", method]
    if host is not None:
        argv += ["-H", "Host: " + host]
    for name, value in headers:
        argv += ["-H", "{}: {}".format(name, value)]
    if data is not None:
        argv += ["--data-binary", "@" + _write_temp(testcase, data)]
    output = await run(testcase, "curl", argv + [url])
    return parse_curl_output(output)


def parse_curl_output(output):
    """
    Headers then body, as C{curl -D -} writes them to stdout.
    """
    while True:
        head, _, output = output.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if not 100 <= status < 200:
            break
    headers = [tuple(part.strip() for part in line.split(":", 1))
               for line in lines[1:]]
    return HTTPAnswer(status, headers, output)


async def aiohttp_request(testcase, url, method="GET", host=None, headers=(),
                          data=None):
    """
    One request made by aiohttp's client (C{tests/compat/visit_aiohttp.py}).

    Arguments and result as for L{curl}.
    """
    argv = python_program("visit_aiohttp.py", "http", url, "--method", method)
    argv += _common_options(host, headers)
    if data is not None:
        argv += ["--data", _write_temp(testcase, data)]
    result = json.loads(await run(testcase, "visit_aiohttp.py", argv))
    return HTTPAnswer(result["status"],
                      [tuple(pair) for pair in result["headers"]],
                      base64.b64decode(result["body"]))


def _common_options(host, headers):
    options = []
    if host is not None:
        options += ["--host", host]
    for name, value in headers:
        options += ["--header", "{}: {}".format(name, value)]
    return options


# Websocket visits: the visitor plays these steps, in order, then closes
# normally (unless the service closed first).


def send_text(text):
    """
    A step: send C{text} as a text message.
    """
    return ["text", text]


def send_binary(payload):
    """
    A step: send C{payload} as a binary message.
    """
    return ["binary", base64.b64encode(payload).decode("ascii")]


#: A step: wait for the next message (or the close) and record it.
RECEIVE = ["receive"]

#: A step: wait until the service closes the websocket and record its code.
AWAIT_CLOSE = ["await_close"]


@attr.s(frozen=True)
class WebSocketVisit:
    """
    What a websocket visitor saw.

    @ivar status: 101 if the handshake completed, else the HTTP status.
    @ivar subprotocol: the subprotocol the handshake completed with.
    @ivar messages: C{[(payload, is_binary), ...]} received, text as L{str}.
    @ivar close: C{(code, reason)} if the service closed, else L{None}.
    @ivar body: the refusal's body (or reason) when C{status} is not 101.
    """

    status = attr.ib()
    subprotocol = attr.ib(default=None)
    messages = attr.ib(factory=list)
    close = attr.ib(default=None)
    body = attr.ib(default=None)


async def visit_websocket(testcase, client, url, steps=(), host=None,
                          subprotocols=(), headers=(), user_agent=None,
                          origin=None):
    """
    One websocket visit.

    @param client: C{"websockets"} (C{tests/compat/visit_ws.py}) or
        C{"aiohttp"} (C{tests/compat/visit_aiohttp.py}).
    @param url: where to connect, C{ws://127.0.0.1:<port>/...}.
    @param steps: what to do once open (L{send_text}, L{send_binary},
        L{RECEIVE}, L{AWAIT_CLOSE}).
    @param host: another host for the request's Host header.
    @param user_agent: the User-Agent to send (else the client's own).
    @return: a L{WebSocketVisit}.
    """
    headers = list(headers)
    if client == "websockets":
        name = "visit_ws.py"
        argv = python_program(name, url)
        if user_agent is not None:
            argv += ["--user-agent", user_agent]
    elif client == "aiohttp":
        name = "visit_aiohttp.py"
        argv = python_program(name, "ws", url)
        if user_agent is not None:
            headers.append(("User-Agent", user_agent))
    else:
        raise ValueError(client)
    argv += _common_options(host, headers)
    for subprotocol in subprotocols:
        argv += ["--subprotocol", subprotocol]
    if origin is not None:
        argv += ["--origin", origin]
    argv += ["--steps", _write_temp(testcase, json.dumps(list(steps)).encode())]
    result = json.loads(await run(testcase, name, argv))
    if result["status"] != 101:
        return WebSocketVisit(result["status"], body=result.get("body"))
    messages = [
        (text, False) if kind == "text" else (base64.b64decode(text), True)
        for kind, text in result["messages"]
    ]
    close = tuple(result["close"]) if result["close"] is not None else None
    return WebSocketVisit(101, result["subprotocol"], messages, close)


__all__ = [
    "find_executable", "free_port", "ProgramFailed", "Program", "spawn",
    "python_program", "start_service", "run", "wait_for_listener",
    "LocalService", "start_python_service", "start_aiohttp", "start_asgi",
    "start_twisted", "NGINX", "start_nginx", "HTTPAnswer", "CURL", "curl",
    "parse_curl_output", "aiohttp_request", "send_text", "send_binary",
    "RECEIVE", "AWAIT_CLOSE", "WebSocketVisit", "visit_websocket",
]
