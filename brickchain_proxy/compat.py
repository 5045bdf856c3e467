"""
Every use of a Twisted or Autobahn private name, one small shim each.

Private names change without deprecation.  Keeping them here, each shim
with a test of its own (C{tests/test_compat.py}) that runs against the
installed releases -- and in CI against the newest ones too -- means a
release that breaks one fails that test by name, instead of some protocol
misbehaving somewhere else.  Where a shim has a safe fallback it says so.
"""

from twisted.internet.abstract import FileDescriptor
from twisted.protocols.policies import ProtocolWrapper


def http_channel(protocol):
    """
    The L{twisted.web.http.HTTPChannel} behind what C{Site.buildProtocol}
    returned: Site wraps it in a C{_GenericHTTPChannelProtocol} (for HTTP/2
    negotiation) that does not pass attributes such as C{maxHeaders} on.

    Private: C{_GenericHTTPChannelProtocol._channel}; without it, the
    protocol itself.
    """
    return getattr(protocol, "_channel", protocol)


def answer_bad_requests_with(channel, respond):
    """
    Make C{channel} (an C{HTTPChannel}) call C{respond()} instead of writing
    its bare C{400 Bad Request} for a malformed request or one over the
    header limits.  C{respond} must answer and close the connection.

    Private: C{HTTPChannel._respondToBadRequestAndDisconnect}.
    """
    if not hasattr(channel, "_respondToBadRequestAndDisconnect"):
        raise RuntimeError("twisted.web.http.HTTPChannel has no "
                           "_respondToBadRequestAndDisconnect any more")
    channel._respondToBadRequestAndDisconnect = respond


def request_line(request):
    """
    The method, target and version of a request whose headers are in but
    whose body is not (twisted.web sets them on the request only once the
    whole body is read, in C{requestReceived}).

    Private: C{HTTPChannel._command}, C{_path} and C{_version}.
    """
    channel = request.channel
    return channel._command, channel._path, channel._version


def visitor_gone(request):
    """
    Whether the visitor of a twisted.web C{request} has disconnected.

    Private: C{Request._disconnected} (the public way, C{notifyFinish}, only
    says so asynchronously).
    """
    return request._disconnected


def hand_over_connection(request, protocol):
    """
    Give a twisted.web request's connection to C{protocol} (a websocket
    protocol) and replay the request's head to it, as Autobahn's
    C{WebSocketResource.render} does; also stop the HTTP channel's idle
    timer and unregister it as the transport's producer, so the new
    protocol can register its own and owns the connection, and free the
    channel and request at once (they only hold each other afterwards).

    Private: C{HTTPChannel._networkProducer}, and the swap of the
    transport's protocol (C{transport.protocol}, or a TLS wrapper's
    C{wrappedProtocol}).
    """
    channel = request.channel
    channel.setTimeout(None)
    transport, channel.transport = channel.transport, None
    network = getattr(channel, "_networkProducer", None)
    if network is not None:
        network.unregisterProducer()
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
    protocol.makeConnection(transport)
    if network is not None:
        network.resumeProducing()
    elif hasattr(transport, "resumeProducing"):
        transport.resumeProducing()
    data = [request.method, b" ", request.uri, b" HTTP/1.1\r\n"]
    for name, values in request.requestHeaders.getAllRawHeaders():
        data += [name, b": ", b",".join(values), b"\r\n"]
    data.append(b"\r\n")
    channel.requests = []
    request.channel = None
    protocol.dataReceived(b"".join(data))


def connection_header_names(response):
    """
    The lower-case header names the server listed in its response's
    C{Connection} header (hop-by-hop by declaration, RFC 7230 6.1).  Twisted's
    client keeps connection-control headers out of C{response.headers}; they
    are only on the response's parser.

    Private: C{Response._transport._producer.protocol._parser.connHeaders}
    (through a C{_wrappedProtocol} for TLS).  Fallback when that is gone:
    the empty set (only the standard hop-by-hop headers are then dropped).
    """
    try:
        protocol = response._transport._producer.protocol
        protocol = getattr(protocol, "_wrappedProtocol", protocol)
        values = protocol._parser.connHeaders.getRawHeaders(b"connection") or ()
    except AttributeError:
        return frozenset()
    return frozenset(
        token.strip().lower().decode("latin-1")
        for value in values
        for token in value.split(b",")
        if token.strip()
    )


def cancel_close_handshake_timer(protocol):
    """
    Cancel Autobahn's closing-handshake timer of a websocket C{protocol}:
    Autobahn leaves it running when the TCP connection goes before the
    peer's close frame arrives.

    Private: C{WebSocketProtocol.closeHandshakeTimeoutCall} (undocumented).
    """
    call = getattr(protocol, "closeHandshakeTimeoutCall", None)
    if call is not None:
        # A txaio batched call: it has cancel(), and no active().
        call.cancel()
        protocol.closeHandshakeTimeoutCall = None


def tls_server_options(endpoint):
    """
    The TLS options (a C{CertificateOptions}) that an C{ssl:} server
    endpoint from C{serverFromString} listens with.

    Private: C{SSL4ServerEndpoint._sslContextFactory}.
    """
    return endpoint._sslContextFactory


def use_tls_server_options(endpoint, creator):
    """
    Make an C{ssl:} server endpoint listen with C{creator} (an
    C{IOpenSSLServerConnectionCreator}) instead of its own TLS options.

    Private: C{SSL4ServerEndpoint._sslContextFactory}, which C{listen} passes
    to C{listenSSL}.
    """
    if not hasattr(endpoint, "_sslContextFactory"):
        raise RuntimeError("twisted.internet.endpoints.SSL4ServerEndpoint has no "
                           "_sslContextFactory any more")
    endpoint._sslContextFactory = creator


def flush_now(transport):
    """
    Send what C{transport} has buffered now, instead of at the reactor's
    next turn.

    A Twisted TCP transport only buffers on C{write}; the data goes out
    when the reactor next polls the socket writable.  A hop that answers a
    batch of reads (sixteen visitors' requests in one turn, say) so holds
    all its writes until the whole batch is read, and the process at the
    other end waits meanwhile: the two end up working in turn, not at
    once.  Writing at once, as asyncio does, lets the next hop start on
    the first while this one reads the rest.

    Only a TCP transport (or, under TLS, the TCP transport below, which
    has the ciphertext TLS wrote), connected and not closing, is flushed:
    closing is left to the reactor, which must see what C{doWrite} returns
    then.  Anything else (an in-memory or test transport) keeps its own
    timing; so does one with nothing queued (no empty C{send}).
    C{doWrite} is public (C{IWriteDescriptor}); the checks are private:
    C{FileDescriptor._writeDisconnecting} (for a half-close), without which
    nothing is flushed, and the queue (C{_tempDataBuffer}, C{dataBuffer},
    C{offset}).
    """
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    if _can_send(transport) and (transport._tempDataBuffer
                                 or transport.offset < len(transport.dataBuffer)):
        transport.doWrite()


def write_now(transport, data):
    """
    C{transport.write(data)}, but a plain TCP transport with nothing queued
    sends at once what the socket takes (the rest is queued as usual).

    The same reason as L{flush_now}, without the two C{epoll_ctl} calls
    that a C{write} and then a flush cost: C{write} registers the socket
    for writing and the flush takes it off again.  The checks are private:
    C{FileDescriptor.dataBuffer}, C{offset} and C{_tempDataBuffer} (that
    nothing is queued, so the order is kept) and C{_writeDisconnecting};
    without them, C{write} as usual.  Only a C{FileDescriptor} itself: a
    TLS transport (a C{ProtocolWrapper}) passes unknown attributes on to
    the TCP transport below it, whose socket must only get ciphertext.
    """
    if (_can_send(transport) and not transport._tempDataBuffer
            and transport.offset == len(transport.dataBuffer)):
        sent = transport.writeSomeData(data)
        if type(sent) is int and sent >= 0:  # else an error, which write finds again
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


def _can_send(transport):
    """
    Whether C{transport} is a socket's own C{FileDescriptor}, connected and
    closing neither way (then the reactor must see what C{doWrite}
    returns).  Private: C{_writeDisconnecting}; without it, L{False}.
    """
    return (isinstance(transport, FileDescriptor) and transport.connected
            and not transport.disconnecting
            and getattr(transport, "_writeDisconnecting", True) is False)
