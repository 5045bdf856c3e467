"""
HTTP header handling shared by the proxy and the client.

On the wire (docs/protocol.rst) headers are a JSON object with canonical
C{Title-Case} names (as Go's C{textproto.CanonicalMIMEHeaderKey}) and one
string per header; under the C{multi-header} extension a value may be a list
of strings.  Hop-by-hop headers never cross the tunnel.
"""

# RFC 7230 section 6.1, plus the non-standard Proxy-Connection / Keep-Alive.
HOP_BY_HOP = frozenset(
    [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ]
)

# Headers that are joined with "; " rather than ", " when several values must
# travel as one string to a v1 peer.
_JOIN_WITH_SEMICOLON = frozenset(["cookie"])

_canonical_cache = {}


def canonical_name(name):
    """
    Canonical form of a header name, as Go writes it: first letter and every
    letter after a hyphen upper case, the rest lower case
    (C{x-forwarded-for} -> C{X-Forwarded-For}).

    @type name: L{str}
    """
    cached = _canonical_cache.get(name)
    if cached is not None:
        return cached
    result = "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))
    if len(_canonical_cache) < 4096:
        _canonical_cache[name] = result
    return result


def decode_value(value):
    """
    Header bytes to a wire string: UTF-8 when valid, else Latin-1 (which maps
    every byte), so nothing is replaced on the way.
    """
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _connection_tokens(values):
    tokens = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token.decode("latin-1"))
    return tokens


def is_hop_by_hop(lower_name):
    """
    Whether a lower-case header name must not be forwarded by a proxy.
    """
    return lower_name in HOP_BY_HOP or lower_name.startswith("proxy-")


def headers_to_wire(raw_headers, multi=False, drop=frozenset()):
    """
    Convert Twisted headers to the wire's JSON object.

    @param raw_headers: a L{twisted.web.http_headers.Headers}.
    @param multi: keep every value as a list when a header has several
        (the C{multi-header} extension); otherwise join them into one string.
    @param drop: further lower-case names to leave out (e.g. C{host}).
    @return: L{dict} of canonical name to L{str} (or L{list} of L{str}).
    """
    connection = raw_headers.getRawHeaders(b"connection")
    also_drop = _connection_tokens(connection) if connection else ()
    wire = {}
    for name, values in raw_headers.getAllRawHeaders():
        lower = name.decode("latin-1").lower()
        if is_hop_by_hop(lower) or lower in drop or lower in also_drop:
            continue
        strings = [decode_value(v) for v in values]
        key = canonical_name(lower)
        if len(strings) == 1:
            wire[key] = strings[0]
        elif multi:
            wire[key] = strings
        else:
            wire[key] = join_values(lower, strings)
    return wire


def join_values(lower_name, values):
    """
    Several values of one header as the one string a v1 peer takes:
    joined with C{", "}, or C{"; "} for Cookie.
    """
    return ("; " if lower_name in _JOIN_WITH_SEMICOLON else ", ").join(values)


def wire_to_pairs(wire, drop=frozenset()):
    """
    Yield C{(name_bytes, [value_bytes, ...])} from a wire headers object,
    leaving out hop-by-hop headers and the lower-case names in C{drop}.
    Values are sent as UTF-8; CR and LF are removed (header injection).
    """
    # Any spelling of the name, and a list value under multi-header.
    connection = [
        v.encode("utf-8")
        for k, value in wire.items() if k.lower() == "connection"
        for v in (value if isinstance(value, list) else (value,))
        if isinstance(v, str)
    ]
    also_drop = _connection_tokens(connection) if connection else ()
    for name, value in wire.items():
        lower = name.lower()
        if is_hop_by_hop(lower) or lower in drop or lower in also_drop:
            continue
        if not _valid_name(name):
            continue
        values = value if isinstance(value, list) else (value,)
        yield name.encode("ascii"), [_clean(v) for v in values]


_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789"
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


_valid_names = set()


def _valid_name(name):
    """
    Whether C{name} is an HTTP token (remembered: the same few names come
    with every response).
    """
    if name in _valid_names:
        return True
    if not name or not _TOKEN_CHARS.issuperset(name):
        return False
    if len(_valid_names) < 4096:
        _valid_names.add(name)
    return True


def is_header_name(name):
    """
    Whether C{name} (L{str}) is a valid HTTP header name (an RFC 7230 token).
    """
    return _valid_name(name)


def _clean(value):
    if "\r" in value or "\n" in value:
        value = value.replace("\r", " ").replace("\n", " ")
    return value.encode("utf-8")


def add_forwarded_headers(request, headers, trust_forwarded=False):
    """
    Add X-Forwarded-For (appended to any the visitor sent), -Proto and -Host
    for a twisted.web C{request} to a wire headers object.

    @param trust_forwarded: the peer is a load balancer we trust (TLS
        terminated there): keep the X-Forwarded-Proto and -Host it set
        rather than describing our own hop.
    """
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    if host:
        previous = headers.get("X-Forwarded-For")
        if isinstance(previous, list):
            previous = ", ".join(previous)
        headers["X-Forwarded-For"] = (
            previous + ", " + host if previous else host
        )
    if not (trust_forwarded and "X-Forwarded-Proto" in headers):
        headers["X-Forwarded-Proto"] = "https" if request.isSecure() else "http"
    if not (trust_forwarded and "X-Forwarded-Host" in headers):
        visitor_host = request.getHeader(b"host")
        if visitor_host:
            headers["X-Forwarded-Host"] = visitor_host.decode("latin-1")
