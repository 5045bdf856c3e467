"""
Redis Sentinel for the bus: C{--bus
redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER[/db]}.

The Redis backend connects through L{MasterEndpoint}, which asks the
sentinels for the current master's address before every connection attempt;
L{MasterWatch} asks them again every few seconds and drops the connections
when the master has moved (a failover), so they reconnect to the new one by
themselves.  The hub then re-claims its tunnels, as after any Redis outage.

The sentinels are asked with C{SENTINEL get-master-addr-by-name}, over a
short-lived connection each time (a few bytes of RESP, parsed here), all of
them at once: the first address wins.  Sentinels are not authenticated (the
password in the URL is the master's).
"""

from urllib.parse import unquote, urlsplit

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from ..endpoints import client_endpoint
from .interface import BusUnavailable

SCHEME = "redis+sentinel"


def parse_sentinel_url(url):
    """
    Parse a C{redis+sentinel://} URL into keyword arguments: C{sentinels}
    (a list of C{(host, port)}), C{master}, C{db}, C{username},
    C{password}.

    @raise ValueError: with a message fit for a command line.
    """
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        raise ValueError("not a redis+sentinel:// URL: {!r}".format(url))
    credentials, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if credentials:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) if user else None
        password = unquote(secret) if colon else None
    sentinels = []
    for address in hosts.split(","):
        host, colon, port = address.rpartition(":")
        if not colon or not host:
            raise ValueError("sentinel {!r} in {!r} needs host:port".format(address, url))
        try:
            port = int(port)
        except ValueError:
            raise ValueError("bad port in sentinel {!r}".format(address))
        if not 0 < port < 65536:
            raise ValueError("bad port in sentinel {!r}".format(address))
        sentinels.append((host.strip("[]"), port))
    path = [part for part in parts.path.split("/") if part]
    if not path or len(path) > 2:
        raise ValueError("name the master: redis+sentinel://host:port[,host:port]/MASTER[/db] "
                         "(got {!r})".format(url))
    db = None
    if len(path) == 2:
        try:
            db = int(path[1])
        except ValueError:
            raise ValueError("database must be a number in {!r}".format(url))
    return dict(sentinels=sentinels, master=unquote(path[0]), db=db,
                username=username, password=password)


class _MasterQuery(protocol.Protocol):
    """
    Asks one sentinel for the master's address and hangs up.
    """

    def __init__(self, master):
        self._master = master.encode("utf-8")
        self._buffer = b""
        self.answer = defer.Deferred()

    def connectionMade(self):
        args = [b"SENTINEL", b"get-master-addr-by-name", self._master]
        self.transport.write(b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args))

    def dataReceived(self, data):
        self._buffer += data
        try:
            reply = parse_address_reply(self._buffer)
        except ValueError as e:
            self._done(failure=e)
            return
        if reply is not _INCOMPLETE:
            self._done(reply)

    def connectionLost(self, reason):
        self._done(failure=BusUnavailable("the sentinel hung up"))

    def _done(self, address=None, failure=None):
        if self.answer.called:
            return
        if self.transport is not None:
            self.transport.loseConnection()
        if failure is not None:
            self.answer.errback(failure)
        else:
            self.answer.callback(address)


_INCOMPLETE = object()


def parse_address_reply(data):
    """
    The reply to C{SENTINEL get-master-addr-by-name}: C{(host, port)}, or
    L{None} when the sentinel does not know the master; C{_INCOMPLETE}
    while bytes are missing.

    @raise ValueError: an error reply, or not that reply's shape.
    """
    if not data.endswith(b"\r\n"):
        return _INCOMPLETE
    if data.startswith(b"-"):
        raise ValueError("sentinel error: " + data[1:-2].decode("utf-8", "replace"))
    if data == b"*-1\r\n" or data == b"$-1\r\n":
        return None
    lines = data.split(b"\r\n")
    if lines[0] != b"*2":
        raise ValueError("unexpected sentinel reply {!r}".format(data[:60]))
    if len(lines) < 6:
        return _INCOMPLETE
    if not (lines[1].startswith(b"$") and lines[3].startswith(b"$")):
        raise ValueError("unexpected sentinel reply {!r}".format(data[:60]))
    host, port = lines[2].decode("ascii", "replace"), lines[4]
    try:
        return host, int(port)
    except ValueError:
        raise ValueError("bad port in sentinel reply {!r}".format(data[:60]))


class _QueryFactory(protocol.Factory):
    def __init__(self, master):
        self._master = master

    def buildProtocol(self, addr):
        query = _MasterQuery(self._master)
        query.factory = self
        return query


class Sentinels:
    """
    The sentinels of one master.

    @param connect_to: C{connect_to(host, port)} returns a client endpoint.
    """

    _log = Logger()

    def __init__(self, clock, addresses, master, connect_to, timeout=2.0):
        self._clock = clock
        self.addresses = list(addresses)
        self.master = master
        self._connect_to = connect_to
        self.timeout = timeout

    def __str__(self):
        return "master {} via sentinels {}".format(
            self.master, ",".join("{}:{}".format(h, p) for h, p in self.addresses))

    def master_address(self):
        """
        Ask every sentinel; the first address wins.

        @return: a L{Deferred} firing with C{(host, port)}, or failing with
            L{BusUnavailable} when no sentinel names a master within the
            timeout.
        """
        result = defer.Deferred()
        pending = [len(self.addresses)]
        errors = []

        def answered(address, sentinel):
            if address is None:
                errors.append("{}:{} does not know {}".format(sentinel[0], sentinel[1],
                                                             self.master))
            elif not result.called:
                result.callback(address)
            finish()

        def failed(failure, sentinel):
            errors.append("{}:{}: {}".format(sentinel[0], sentinel[1],
                                             failure.getErrorMessage()))
            finish()

        def finish():
            pending[0] -= 1
            if pending[0] == 0 and not result.called:
                result.errback(BusUnavailable("no sentinel names master {}: {}".format(
                    self.master, "; ".join(errors))))

        for sentinel in self.addresses:
            d = self._ask(sentinel)
            d.addCallbacks(answered, failed, callbackArgs=(sentinel,),
                           errbackArgs=(sentinel,))
        return result

    def _ask(self, sentinel):
        factory = _QueryFactory(self.master)
        d = self._connect_to(*sentinel).connect(factory)
        d.addCallback(lambda query: query.answer)
        d.addTimeout(self.timeout, self._clock)
        return d


@implementer(IStreamClientEndpoint)
class MasterEndpoint:
    """
    Connects to the master the sentinels name at the time of each
    connection attempt.

    @ivar address: the master's address of the latest connection.
    """

    def __init__(self, sentinels, connect_to):
        self._sentinels = sentinels
        self._connect_to = connect_to
        self.address = None

    def connect(self, factory):
        d = self._sentinels.master_address()

        def found(address):
            self.address = address
            return self._connect_to(*address).connect(factory)

        return d.addCallback(found)


class MasterWatch:
    """
    Asks the sentinels every C{interval} seconds where the master is, and
    calls C{moved(address)} when it is no longer where the connections
    were made (a failover happened, even one the connections did not
    notice: a demoted master keeps its clients).
    """

    _log = Logger()

    def __init__(self, clock, sentinels, endpoint, moved, interval=2.0):
        self._clock = clock
        self._sentinels = sentinels
        self._endpoint = endpoint
        self._moved = moved
        self.interval = interval
        self._call = None
        self._asking = None
        self._running = False

    def start(self):
        self._running = True
        self._schedule()

    def stop(self):
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._asking is not None:
            self._asking.cancel()

    def _schedule(self):
        self._call = self._clock.callLater(self.interval, self._check)

    def _check(self):
        self._call = None
        self._asking = d = self._sentinels.master_address()
        d.addCallbacks(self._found, self._failed)
        d.addBoth(self._again)

    def _found(self, address):
        current = self._endpoint.address
        if current is not None and address != current:
            self._log.info("Redis master {master} moved from {old} to {new}: "
                           "reconnecting", master=self._sentinels.master,
                           old="{}:{}".format(*current), new="{}:{}".format(*address))
            self._moved(address)

    def _failed(self, failure):
        if not failure.check(BusUnavailable, defer.CancelledError, defer.TimeoutError):
            self._log.failure("asking the sentinels failed", failure)

    def _again(self, _):
        self._asking = None
        if self._running and self._call is None:
            self._schedule()


def sentinel_endpoint(reactor, config, timeout=5):
    """
    The L{Sentinels} and L{MasterEndpoint} for a parsed sentinel URL.
    """
    def connect_to(host, port):
        return client_endpoint(reactor, host, port, timeout=timeout)

    sentinels = Sentinels(reactor, config["sentinels"], config["master"], connect_to)
    return sentinels, MasterEndpoint(sentinels, connect_to)
