"""
HTTP through a site without sockets: a visitor connection that feeds
request bytes to the site's own protocol (a real L{twisted.web.http}
channel and the site's request class) on a L{StringTransport}, and a strict
parser for what comes back.
"""

import re

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

_STATUS_LINE = re.compile(rb"\AHTTP/1\.1 (\d{3}) [^\r\n]*\Z")
_HEADER_LINE = re.compile(rb"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [^\r\n]*\Z")

#: Where in-memory visitors connect from, and to.
VISITOR_ADDRESS = IPv4Address("TCP", "203.0.113.7", 40000)
SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 8080)


def parse_response(data, head_request):
    """
    Parse one HTTP/1.1 response strictly: status line, header lines, and a
    body of exactly Content-Length bytes.

    @return: C{(status, headers, body)}, headers as C{[(name, value)]}
        with lower-case names.
    """
    head, separator, body = data.partition(b"\r\n\r\n")
    assert separator, data
    lines = head.split(b"\r\n")
    match = _STATUS_LINE.match(lines[0])
    assert match, lines[0]
    status = int(match.group(1))
    pairs = []
    for line in lines[1:]:
        assert _HEADER_LINE.match(line), line
        name, _, value = line.partition(b": ")
        pairs.append((name.lower(), value))
    lengths = [value for name, value in pairs if name == b"content-length"]
    assert len(lengths) <= 1, lengths
    assert all(value.isdigit() for value in lengths), lengths
    assert b"transfer-encoding" not in [name for name, _ in pairs], pairs
    if head_request or status in (204, 304):
        assert body == b"", body
    else:
        assert lengths, pairs
        assert int(lengths[0]) == len(body), (lengths, len(body))
    return status, pairs, body


class Answer:
    """
    One parsed HTTP response.

    @ivar status: the status code.
    @ivar pairs: the header lines, C{[(lower-case name, value)]}, in order.
    @ivar body: the body.
    """

    def __init__(self, status, pairs, body):
        self.status = status
        self.pairs = pairs
        self.body = body

    def header(self, name):
        """
        Every value of header C{name} (bytes, any case), in order.
        """
        name = name.lower()
        return [value for n, value in self.pairs if n == name]

    def __repr__(self):
        return "<Answer {} {!r} {!r}>".format(self.status, self.pairs, self.body[:200])


class _TCPLikeTransport(StringTransport):
    """
    A L{StringTransport} that, like a TCP transport
    (L{twisted.internet.abstract.FileDescriptor}), lets a protocol
    unregister a producer when none is registered (Autobahn does so when
    it closes a connection handed over to it).
    """

    def unregisterProducer(self):
        self.producer = None
        self.streaming = None


class MemoryVisitor:
    """
    One visitor connection to C{site}, in memory: the site builds its
    protocol as for a TCP connection from L{VISITOR_ADDRESS}, and reads what
    L{send} gives it.
    """

    def __init__(self, site, peer=VISITOR_ADDRESS):
        self.transport = _TCPLikeTransport(hostAddress=SERVER_ADDRESS, peerAddress=peer)
        self.protocol = site.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)
        self._head_requests = []
        self.closed = False

    @property
    def owner(self):
        """
        The protocol that owns the connection now: the site's, or the one
        it handed the connection over to (a websocket upgrade sets the
        transport's C{protocol}, as it would a TCP transport's).
        """
        return getattr(self.transport, "protocol", self.protocol)

    def send(self, data):
        """
        Bytes from the visitor.
        """
        self.owner.dataReceived(data)

    def request(self, method, target, headers=(), body=None, host=b"proxy.test"):
        """
        Send one HTTP/1.1 request; a C{body} gets a Content-Length.

        @param headers: C{[(name, value)]}, bytes.
        """
        lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + host]
        lines += [name + b": " + value for name, value in headers]
        if body is not None:
            lines.append(b"Content-Length: %d" % (len(body),))
        self._head_requests.append(method == b"HEAD")
        self.send(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))

    def answered(self):
        """
        Whether any response bytes came back (and were not read yet).
        """
        return self.transport.value() != b""

    def answer(self):
        """
        The response to the oldest request not read yet, parsed strictly
        (it must be all there, and nothing more).
        """
        data = self.transport.value()
        self.transport.clear()
        return Answer(*parse_response(data, self._head_requests.pop(0)))

    @property
    def closing(self):
        """
        Whether the site closed (or is closing) the connection.
        """
        return self.transport.disconnecting

    def close(self):
        """
        The connection is gone (the visitor hung up, or the site's close
        completed).
        """
        if not self.closed:
            self.closed = True
            self.owner.connectionLost(Failure(ConnectionDone()))


__all__ = ["parse_response", "Answer", "MemoryVisitor", "VISITOR_ADDRESS",
           "SERVER_ADDRESS"]
