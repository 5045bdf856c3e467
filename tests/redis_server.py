"""
A throwaway C{redis-server} for tests: started on a free 127.0.0.1 port
with no persistence and its own working directory, stopped (SIGTERM, then
SIGKILL) by a test cleanup so none outlives its test, and restartable on the
same port to play "Redis went away and came back".

Also the small helpers tests need around it: a load-balancer-like TCP
forwarder (so a tunnel client can reconnect to another proxy instance, as it
would behind a real load balancer), a way to tell when a proxy instance is
really on the bus, and a reader for C{INFO commandstats}.

Nothing here blocks the reactor for more than a loopback connect.
"""

import atexit
import os
import shutil
import signal
import socket
import tempfile

from twisted.internet import defer, error, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest

from brickchain_proxy.proxy.hub import instance_channel


def free_port():
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_answers(port, probe=None, expect=None):
    """
    Whether something accepts connections on 127.0.0.1:C{port} (and, with
    C{probe}, answers it with bytes starting with C{expect}).  Loopback
    only, with a short timeout: never blocks the reactor for long.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            if probe is None:
                return True
            s.sendall(probe)
            return s.recv(64).startswith(expect)
    except OSError:
        return False


class ProcessWatcher(protocol.ProcessProtocol):
    """
    Knows when the child process has ended.
    """

    def __init__(self):
        self.ended = defer.Deferred()
        self.status = None

    def processEnded(self, reason):
        self.status = reason.value
        self.ended.callback(None)


class ProcessGone(Exception):
    """
    A child process exited before it was ready.
    """


@defer.inlineCallbacks
def wait_for_port(port, watcher, what, log_path=None, timeout=15.0,
                  probe=None, expect=None):
    """
    Poll (every 20 ms, with L{task.deferLater}) until 127.0.0.1:C{port}
    answers, failing early if the process behind C{watcher} exits.
    """
    clock = reactor.seconds
    deadline = clock() + timeout
    while clock() < deadline:
        if watcher.ended.called:
            raise ProcessGone("{} exited before listening ({}){}".format(
                what, watcher.status, _tail(log_path)))
        if port_answers(port, probe, expect):
            return
        yield task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("{} did not listen on port {} within {:g} s{}".format(
        what, port, timeout, _tail(log_path)))


def _tail(path, lines=20):
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    return "; log:\n" + "\n".join(text.splitlines()[-lines:])


@defer.inlineCallbacks
def end_process(process, watcher, grace=5.0, sig=signal.SIGTERM):
    """
    Send C{sig} to a spawned process and wait until it is gone, with SIGKILL
    if it has not exited after C{grace} seconds.
    """
    if watcher.ended.called:
        return
    try:
        process.signalProcess(int(sig))
        if sig != signal.SIGKILL:
            # A stopped (SIGSTOP) process acts on TERM only once continued.
            process.signalProcess(int(signal.SIGCONT))
    except error.ProcessExitedAlready:
        pass
    killer = reactor.callLater(grace, _kill, process)
    try:
        yield watcher.ended
    finally:
        if killer.active():
            killer.cancel()


def _kill(process):
    try:
        process.signalProcess("KILL")
    except error.ProcessExitedAlready:
        pass


#: Child processes still running, killed when the test process exits, even
#: if a test's cleanup never ran (trial interrupted, a crash): no
#: redis-server or proxy may outlive the test run.
_children = {}


def track_child(process, watcher):
    """
    Make sure C{process} is killed when this Python process exits.
    """
    pid = process.pid
    _children[pid] = process
    watcher.ended.addBoth(lambda result: (_children.pop(pid, None), result)[1])


@atexit.register
def _kill_children():
    for pid in list(_children):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class RedisServer:
    """
    One C{redis-server} child process.

    @ivar port: the TCP port (the same across L{restart}s).
    @ivar url: C{redis://127.0.0.1:<port>} (C{rediss://} over TLS).
    @ivar tls_files: the L{tests.tls_support.TLSFiles} it serves TLS with
        (then it has no plain port), or L{None}.
    @ivar password: its C{requirepass}, or L{None}.
    """

    _log = Logger()

    def __init__(self, executable, directory, tls_files=None, password=None,
                 extra=(), sentinel_conf=None):
        self._executable = executable
        self._directory = directory
        self.tls_files = tls_files
        self.password = password
        self._extra = list(extra)
        self._sentinel_conf = sentinel_conf  # text, with {port}: a sentinel
        self.port = None
        self._process = None
        self._watcher = None

    @classmethod
    def for_test(cls, testcase, tls_files=None, password=None):
        """
        Start a server for C{testcase}; a cleanup stops it and removes its
        directory.

        @param tls_files: serve TLS (only) with these key and certificate,
            trusting their authority for client certificates (none asked).
        @raise SkipTest: if C{redis-server} is not installed (or, with
            C{tls_files}, was built without TLS).
        @return: a L{Deferred} firing with the running L{RedisServer}.
        """
        server = cls.create(tls_files, password)
        testcase.addCleanup(server.remove)
        return server.start().addCallback(lambda _: server)

    @classmethod
    def create(cls, tls_files=None, password=None, extra=(), sentinel_conf=None):
        """
        A server, not started, with its own temporary directory.

        @param extra: more command-line options (e.g. C{--replicaof}).
        @param sentinel_conf: for a sentinel, its configuration file's text
            (C{{port}} is replaced by its port); it runs with
            C{--sentinel}.
        @raise SkipTest: if C{redis-server} is not installed.
        """
        executable = shutil.which("redis-server")
        if executable is None:
            raise SkipTest(
                "redis-server is not on PATH: install it (scripts/test does "
                "it with apt) to run the Redis bus tests")
        return cls(executable, tempfile.mkdtemp(prefix="brickproxy-redis-"),
                   tls_files, password, extra, sentinel_conf)

    @property
    def url(self):
        return "{}://127.0.0.1:{}".format(
            "redis" if self.tls_files is None else "rediss", self.port)

    @property
    def running(self):
        return self._watcher is not None and not self._watcher.ended.called

    @property
    def log_path(self):
        return os.path.join(self._directory, "redis.log")

    @defer.inlineCallbacks
    def start(self):
        """
        Start the server (on the port it had before, if it ran already) and
        wait until it answers PING.
        """
        if self.running:
            raise RuntimeError("redis-server is already running")
        attempts = 3 if self.port is None else 1
        for attempt in range(attempts):
            port = self.port or free_port()
            try:
                yield self._spawn(port)
            except ProcessGone:
                # Someone took the free port in the meantime: try another.
                if attempt == attempts - 1:
                    raise
                continue
            self.port = port
            return self

    def _spawn(self, port):
        if self.tls_files is None:
            listen = ["--port", str(port)]
            probe, expect = b"PING\r\n", b"+PONG"
        else:
            # Debian's redis-server is built with TLS (BUILD_TLS=yes).
            files = self.tls_files
            listen = ["--port", "0", "--tls-port", str(port),
                      "--tls-cert-file", files.cert, "--tls-key-file", files.key,
                      "--tls-ca-cert-file", files.ca, "--tls-auth-clients", "no"]
            probe = expect = None  # a plain PING would only get a TLS alert
        if self.password is not None:
            listen += ["--requirepass", self.password]
        args = [self._executable]
        if self._sentinel_conf is not None:
            # A sentinel rewrites its configuration file: give it its own.
            conf = os.path.join(self._directory, "sentinel.conf")
            with open(conf, "w") as f:
                f.write(self._sentinel_conf.format(port=port))
            args += [conf, "--sentinel"]
        args += [
            *listen,
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._directory,
            "--logfile", self.log_path,
            "--daemonize", "no",
            "--protected-mode", "no",
        ] + self._extra
        if self._sentinel_conf is not None:
            # Sentinels take no persistence options.
            for option in ("--save", "--appendonly"):
                at = args.index(option)
                del args[at:at + 2]
        self._watcher = ProcessWatcher()
        self._process = reactor.spawnProcess(
            self._watcher, self._executable, args, env=dict(os.environ),
            path=self._directory, childFDs={0: "w", 1: "r", 2: "r"})
        track_child(self._process, self._watcher)
        return wait_for_port(port, self._watcher, "redis-server",
                             self.log_path, probe=probe, expect=expect)

    def stop(self, sig=signal.SIGTERM):
        """
        Stop the server (SIGTERM, or C{sig}) and wait until it is gone.
        """
        if not self.running:
            return defer.succeed(None)
        return end_process(self._process, self._watcher, sig=sig)

    def pause(self):
        """
        Freeze the server (SIGSTOP): connections stay open but nothing is
        answered.  L{resume} or L{stop} undoes it.
        """
        self._process.signalProcess(int(signal.SIGSTOP))

    def resume(self):
        """
        Let a L{pause}d server run again.
        """
        if self.running:
            self._process.signalProcess(int(signal.SIGCONT))

    @defer.inlineCallbacks
    def restart(self):
        """
        Stop the server and start a fresh, empty one on the same port.
        """
        yield self.stop()
        yield self.start()

    @defer.inlineCallbacks
    def remove(self):
        """
        Stop the server and delete its directory.
        """
        yield self.stop()
        shutil.rmtree(self._directory, ignore_errors=True)


def redis_command(port, *args, timeout=1.0):
    """
    Send one command to the Redis (or sentinel) on 127.0.0.1:C{port} and
    return its raw reply bytes (loopback, a short timeout: never blocks the
    reactor for long).
    """
    data = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in
        (a if isinstance(a, bytes) else str(a).encode() for a in args))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return s.recv(65536)


#: A sentinel's configuration: master MASTER on 127.0.0.1:{master_port},
#: quorum 2, a master is down after 500 ms without an answer.
SENTINEL_CONF = """\
port {{port}}
bind 127.0.0.1
daemonize no
protected-mode no
sentinel monitor {master} 127.0.0.1 {master_port} 2
sentinel down-after-milliseconds {master} 500
sentinel failover-timeout {master} 2000
sentinel parallel-syncs {master} 1
"""


class SentinelCluster:
    """
    A master, a replica and three sentinels, each a child process.

    @ivar url: the C{--bus} URL (C{redis+sentinel://...}).
    """

    master_name = "mymaster"

    def __init__(self):
        self.master = None
        self.replica = None
        self.sentinels = []

    @classmethod
    @defer.inlineCallbacks
    def for_test(cls, testcase):
        cluster = cls()
        testcase.addCleanup(cluster.remove)
        cluster.master = RedisServer.create()
        yield cluster.master.start()
        cluster.replica = RedisServer.create(
            extra=["--replicaof", "127.0.0.1", str(cluster.master.port)])
        yield cluster.replica.start()
        for _ in range(3):
            sentinel = RedisServer.create(sentinel_conf=SENTINEL_CONF.format(
                master=cls.master_name, master_port=cluster.master.port))
            cluster.sentinels.append(sentinel)
            yield sentinel.start()
        return cluster

    @property
    def url(self):
        return "redis+sentinel://{}/{}".format(
            ",".join("127.0.0.1:{}".format(s.port) for s in self.sentinels),
            self.master_name)

    def master_port(self):
        """
        The master's port as the first sentinel that answers names it.
        """
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            try:
                reply = redis_command(sentinel.port, "SENTINEL",
                                      "get-master-addr-by-name", self.master_name)
            except OSError:
                continue
            lines = reply.split(b"\r\n")
            if lines[0] == b"*2":
                return int(lines[4])
        return None

    def replica_synced(self):
        try:
            reply = redis_command(self.replica.port, "INFO", "replication")
        except OSError:
            return False
        return b"master_link_status:up" in reply

    def sentinels_see_the_replica(self):
        for sentinel in self.sentinels:
            try:
                reply = redis_command(sentinel.port, "SENTINEL", "replicas",
                                      self.master_name)
            except OSError:
                return False
            if str(self.replica.port).encode() not in reply:
                return False
        return True

    @defer.inlineCallbacks
    def remove(self):
        for server in self.sentinels + [self.replica, self.master]:
            if server is not None:
                yield server.remove()


# -- around the proxy's Redis backend -----------------------------------------


def bus_ready(backend, channel=None):
    """
    @return: a L{Deferred} firing with whether C{backend} can send commands
        and receive messages, and (with C{channel}) Redis counts at least one
        subscriber on C{channel}.  Asks Redis itself (C{PUBSUB NUMSUB}), so
        it is true only once the subscription is really active.
    """
    if not (backend.connected and backend.listening):
        return defer.succeed(False)
    if channel is None:
        return defer.succeed(True)
    d = backend.command("PUBSUB", "NUMSUB", channel)
    d.addCallback(lambda reply: int(reply[1]) >= 1)
    d.addErrback(lambda _: False)
    return d


@defer.inlineCallbacks
def wait_for_bus(backend, channel=None, timeout=15.0, interval=0.02):
    """
    Wait until L{bus_ready}; fail the test after C{timeout} seconds.
    """
    deadline = reactor.seconds() + timeout
    while True:
        if (yield bus_ready(backend, channel)):
            return
        if reactor.seconds() > deadline:
            raise AssertionError(
                "Redis backend not ready within {:g} s (channel {})".format(
                    timeout, channel))
        yield task.deferLater(reactor, interval, lambda: None)


def wait_for_instance(proxy, timeout=15.0):
    """
    Wait until proxy instance C{proxy} (a L{ProxyService} on Redis) is
    connected and listening on its bus channel.
    """
    return wait_for_bus(proxy.backend, instance_channel(proxy.hub.instance_id),
                        timeout)


@defer.inlineCallbacks
def command_calls(backend, *commands):
    """
    How many times Redis has run each of C{commands} (lower case, e.g.
    C{"publish"}), from C{INFO commandstats}.

    @return: a L{Deferred} firing with a L{dict} name -> calls.
    """
    info = yield backend.command("INFO", "commandstats")
    if isinstance(info, bytes):
        info = info.decode("utf-8")
    calls = {name: 0 for name in commands}
    for line in info.splitlines():
        name, _, stats = line.partition(":")
        if not name.startswith("cmdstat_"):
            continue
        name = name[len("cmdstat_"):]
        if name in calls:
            fields = dict(f.split("=", 1) for f in stats.split(","))
            calls[name] = int(fields["calls"])
    return calls


# -- a load balancer -------------------------------------------------------------


class _Upstream(protocol.Protocol):
    def __init__(self, downstream):
        self.downstream = downstream

    def connectionMade(self):
        self.downstream.upstream_connected(self)

    def dataReceived(self, data):
        self.downstream.transport.write(data)

    def connectionLost(self, reason):
        self.downstream.transport.loseConnection()


class _Downstream(protocol.Protocol):
    upstream = None

    def connectionMade(self):
        self.transport.pauseProducing()
        self._buffer = []
        self.factory.connections.append(self)
        self._try(list(self.factory.backends()))

    def _try(self, candidates):
        if not candidates:
            self.transport.loseConnection()
            return
        port = candidates.pop(0)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2)
        d = endpoint.connect(protocol.Factory.forProtocol(lambda: _Upstream(self)))
        d.addErrback(lambda _: self._try(candidates))

    def upstream_connected(self, upstream):
        if self.transport.disconnected:
            upstream.transport.loseConnection()
            return
        self.upstream = upstream
        self.factory.upstreams.append(upstream)
        self.transport.resumeProducing()

    def dataReceived(self, data):
        self.upstream.transport.write(data)

    def connectionLost(self, reason):
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class LoadBalancer(protocol.Factory):
    """
    A TCP forwarder on 127.0.0.1 in front of several proxy instances, like
    the load balancer of a real deployment: each new connection goes to the
    first instance in L{backend_ports} that accepts it, so when an instance
    dies, reconnecting clients land on the next one.

    @ivar backend_ports: the instances' ports, in order of preference.
    """

    protocol = _Downstream

    def __init__(self, backend_ports):
        self.backend_ports = list(backend_ports)
        self.connections = []
        self.upstreams = []
        self.port = None

    def backends(self):
        return self.backend_ports

    def start(self, testcase):
        """
        Listen until the end of the test.

        @return: the URL clients use, C{http://127.0.0.1:<port>}.
        """
        listening = reactor.listenTCP(0, self, interface="127.0.0.1")
        self.port = listening.getHost().port
        testcase.addCleanup(self._stop, listening)
        return self.url

    @property
    def url(self):
        return "http://127.0.0.1:{}".format(self.port)

    @defer.inlineCallbacks
    def _stop(self, listening):
        yield listening.stopListening()
        protocols = self.connections + self.upstreams
        for p in protocols:
            p.transport.loseConnection()
        for _ in range(500):
            if all(p.transport.disconnected for p in protocols):
                return
            yield task.deferLater(reactor, 0.01, lambda: None)
        for p in protocols:
            p.transport.abortConnection()


__all__ = ["RedisServer", "ProcessWatcher", "free_port", "track_child", "port_answers", "wait_for_port",
           "end_process", "ProcessGone", "bus_ready", "wait_for_bus",
           "wait_for_instance", "command_calls", "LoadBalancer"]
