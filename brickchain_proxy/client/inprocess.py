"""
A service inside this process, reached like one behind a socket: an
L{IStreamClientEndpoint} whose connections are pairs of in-memory
transports between the connecting protocol (Agent's HTTP client, the
Autobahn websocket client) and a protocol of a server factory (a
L{twisted.web.server.Site}).

Everything above the transport is the code that talks to a local service
over TCP, so the v1 forward, streamed bodies and websockets need no second
path.  What the transports do, as a TCP transport does:

- bytes written are delivered to the other side in a later reactor turn
  (C{callLater(0)}), never from inside C{write}: no reentrancy;
- C{pauseProducing} stops delivery to this side (reading stops); what the
  other side then writes waits, and past L{HIGH_WATER} bytes waiting the
  writer's registered producer is paused, and resumed once they are read;
- C{loseConnection} closes once what was written has been delivered;
  C{abortConnection} closes at once; both sides then get C{connectionLost},
  after their registered producers are stopped.

There is no half-close and no TLS (the connection never leaves the
process).  The peer address is C{127.0.0.1}, which it is in a way: the
caller is in this process.
"""

import itertools

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

#: Bytes waiting for the reader past which the writer's producer is paused.
HIGH_WATER = 64 * 1024

_ports = itertools.count(1024)


@implementer(ITransport, IConsumer, IPushProducer)
class InMemoryTransport:
    """
    One side of an in-memory connection.

    @ivar protocol: the protocol data is delivered to (assignable: Autobahn's
        L{WebSocketResource} takes the connection over from the HTTP channel
        this way).
    @ivar peer: the other side's transport.
    """

    _log = Logger()

    def __init__(self, reactor, protocol, host, peer_address):
        self._reactor = reactor
        self.protocol = protocol
        self.peer = None
        self._host = host
        self._peer_address = peer_address
        self._inbound = []  # bytes written by the peer, not yet delivered
        self._inbound_size = 0
        self._delivery = None  # the DelayedCall delivering them
        self._reading_paused = False
        self.producer = None
        self._streaming = False
        self._producer_paused = False
        self.disconnecting = False
        self.disconnected = False
        self._on_lost = None

    def __repr__(self):
        return "<{} {} -> {}>".format(type(self).__name__, self._host,
                                      self._peer_address)

    # -- ITransport ----------------------------------------------------------

    def write(self, data):
        if self.disconnecting or self.disconnected or not data:
            return
        self.peer._receive(bytes(data))
        if self.peer._inbound_size > HIGH_WATER:
            self._pause_producer()

    def writeSequence(self, data):
        self.write(b"".join(data))

    def loseConnection(self):
        if self.disconnecting or self.disconnected:
            return
        self.disconnecting = True
        # Reading stops, as on TCP; the connection closes once the peer has
        # read what we wrote (at once if the peer is closing too: neither
        # side reads any more).
        self._cancel_delivery()
        if not self.peer._inbound or self.peer.disconnecting:
            self._reactor.callLater(0, self._close, error.ConnectionDone())

    def abortConnection(self):
        if self.disconnected:
            return
        self._close(error.ConnectionAborted(), error.ConnectionLost())

    def getPeer(self):
        return self._peer_address

    def getHost(self):
        return self._host

    # -- IPushProducer: reading ----------------------------------------------

    def pauseProducing(self):
        self._reading_paused = True
        self._cancel_delivery()

    def resumeProducing(self):
        if self.disconnected:
            return
        self._reading_paused = False
        self._schedule_delivery()

    def stopProducing(self):
        self.loseConnection()

    # -- IConsumer: a producer of what we write ------------------------------

    def registerProducer(self, producer, streaming):
        if self.producer is not None:
            raise RuntimeError(
                "Cannot register producer {!r}, because producer {!r} was never "
                "unregistered.".format(producer, self.producer))
        if self.disconnected:
            producer.stopProducing()
            return
        self.producer = producer
        self._streaming = bool(streaming)
        self._producer_paused = False
        if self.peer._inbound_size > HIGH_WATER:
            self._pause_producer()
        elif not streaming:
            self._reactor.callLater(0, self._pull)

    def unregisterProducer(self):
        self.producer = None

    # -- delivery ------------------------------------------------------------

    def _receive(self, data):
        self._inbound.append(data)
        self._inbound_size += len(data)
        self._schedule_delivery()

    def _schedule_delivery(self):
        if (self._delivery is None and self._inbound and not self._reading_paused
                and not self.disconnecting and not self.disconnected):
            self._delivery = self._reactor.callLater(0, self._deliver)

    def _cancel_delivery(self):
        delivery, self._delivery = self._delivery, None
        if delivery is not None and delivery.active():
            delivery.cancel()

    def _deliver(self):
        self._delivery = None
        while (self._inbound and not self._reading_paused
               and not self.disconnecting and not self.disconnected):
            data = self._inbound.pop(0)
            self._inbound_size -= len(data)
            try:
                self.protocol.dataReceived(data)
            except Exception:
                self._log.failure("in-process protocol {protocol} failed",
                                  protocol=self.protocol)
                self.abortConnection()
                return
        self.peer._read_by_peer()

    def _read_by_peer(self):
        """
        The peer read some of what we wrote: resume our producer, or close
        if a close was waiting for it.
        """
        if self.disconnected:
            return
        if self.disconnecting:
            if not self.peer._inbound:
                self._close(error.ConnectionDone())
            return
        if self.peer._inbound_size <= HIGH_WATER // 2 and self.producer is not None:
            if not self._streaming:
                if not self.peer._inbound:
                    self._pull()
            elif self._producer_paused:
                self._producer_paused = False
                self.producer.resumeProducing()

    def _pull(self):
        if self.producer is not None and not self._streaming and not self.disconnected:
            self.producer.resumeProducing()

    def _pause_producer(self):
        if self.producer is not None and self._streaming and not self._producer_paused:
            self._producer_paused = True
            self.producer.pauseProducing()

    # -- closing -------------------------------------------------------------

    def _close(self, reason, peer_reason=None):
        """
        Close both sides: each stops its producer, then its protocol learns
        (this side with C{reason}, the peer with C{peer_reason}, by default
        the same).
        """
        if self.disconnected:
            return
        sides = [(self, reason), (self.peer, peer_reason or reason)]
        for side, _ in sides:
            side.disconnected = True
            side._cancel_delivery()
            side._inbound, side._inbound_size = [], 0
        for side, why in sides:
            side._lost(Failure(why))

    def _lost(self, reason):
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                self._log.failure("stopping {producer} failed", producer=producer)
        try:
            self.protocol.connectionLost(reason)
        except Exception:
            self._log.failure("in-process protocol {protocol} failed",
                              protocol=self.protocol)
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost(self)


@implementer(IStreamClientEndpoint)
class InProcessEndpoint:
    """
    Connects to C{server_factory} inside this process over in-memory
    transports.

    @param host: the address the server listens on, as its protocols see it
        (C{getHost}); the port is the one its URLs name.
    """

    def __init__(self, reactor, server_factory, port=80):
        self._reactor = reactor
        self._server_factory = server_factory
        self._host = IPv4Address("TCP", "127.0.0.1", port)
        self._started = False
        #: the client sides of the connections still open
        self.connections = set()

    def connect(self, factory):
        client_address = IPv4Address("TCP", "127.0.0.1", next(_ports))
        if not self._started:
            self._server_factory.doStart()
            self._started = True
        try:
            server = self._server_factory.buildProtocol(client_address)
            if server is None:
                raise error.ConnectionRefusedError("the in-process service refused")
            client = factory.buildProtocol(self._host)
            if client is None:
                raise error.ConnectError("the connecting factory built no protocol")
        except Exception:
            return fail()
        client_side = InMemoryTransport(self._reactor, client, client_address,
                                        self._host)
        server_side = InMemoryTransport(self._reactor, server, self._host,
                                        client_address)
        client_side.peer, server_side.peer = server_side, client_side
        client_side._on_lost = self.connections.discard
        self.connections.add(client_side)
        server.makeConnection(server_side)
        client.makeConnection(client_side)
        return succeed(client)

    def close(self):
        """
        Abort the connections still open and stop the server factory.
        """
        for transport in list(self.connections):
            transport.abortConnection()
        if self._started:
            self._started = False
            self._server_factory.doStop()
