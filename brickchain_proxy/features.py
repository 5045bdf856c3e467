"""
Negotiated protocol extensions (docs/protocol.rst, "Negotiated extensions").

A client lists the features it can use in its registration-request; the
proxy answers with the subset it will use on that tunnel.  A feature is only
used where both sides listed it, so v1 peers (which never send or read the
field) keep speaking pure v1.
"""

#: ws-message with messageType 2 carries "encoding": "base64" and a base64
#: body, so binary frames arrive byte-exact.
BINARY_WS = "binary-ws"

#: a header value may be a list of strings (all values, in order).
MULTI_HEADER = "multi-header"

#: http-request and ws-request "url" carry the path exactly as the visitor
#: sent it (percent-encoding intact) instead of the decoded path, so
#: "/a%2Fb" reaches the local service unchanged.
RAW_PATH = "raw-path"

#: ws-teardown carries the websocket close "code" (int) and "reason"
#: (string), so a close reaches the other side with its code.
WS_CLOSE = "ws-close"

#: ws-response carries "protocol": the subprotocol the local service chose,
#: which the proxy then completes the visitor's handshake with.
WS_SUBPROTOCOL = "ws-subprotocol"

#: HTTP requests travel as streams of binary frames (head once, raw body
#: bytes, per-stream flow control) rather than as http-request/-response
#: documents (docs/protocol.rst, "Streams").
STREAMS = "streams"

#: Several clients may register the same clientID as a pool: the proxy
#: keeps every member's connection and spreads the tunnel's requests over
#: them, instead of closing the older connection (newest wins).  Only with
#: STREAMS (a pool member's requests and websockets are streams).  Our
#: client offers it with --pool only.
POOL = "pool"

#: The extensions that change how the v1 documents are written.
MESSAGE_FEATURES = frozenset([BINARY_WS, MULTI_HEADER, RAW_PATH, WS_CLOSE,
                              WS_SUBPROTOCOL])

#: Everything this implementation speaks, in both roles.
SUPPORTED = MESSAGE_FEATURES | {STREAMS, POOL}

#: What our client offers by default (a pool is opt-in).
CLIENT_DEFAULT = SUPPORTED - {POOL}


def negotiate(offered, supported=SUPPORTED):
    """
    The features to use on a tunnel, given what the client offered.

    @param offered: the registration's C{features} list, or L{None} when the
        client sent none (a v1 client).
    @return: a L{frozenset}; empty for v1 clients.
    """
    if not offered:
        return frozenset()
    negotiated = frozenset(f for f in offered if isinstance(f, str)) & supported
    if POOL in negotiated and STREAMS not in negotiated:
        negotiated -= {POOL}
    return negotiated
