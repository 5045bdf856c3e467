"""
What the operator adds to every request and websocket the client sends to
the local service: C{--local-header "Name: value"} (repeatable; adds the
header, or replaces the visitor's) and C{--local-host NAME} (the Host header;
by default the C{--local} URL's host).  Deployed Go clients do this in code
(Brickchain's hass-proxy sends Home Assistant's C{X-HA-ACCESS} token and its
own Host).
"""

from ..headers import is_header_name


def parse_local_header(text):
    """
    C{"Name: value"} as C{(name, value)}.

    @raise ValueError: with a message fit for a command line.
    """
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not name or not is_header_name(name):
        raise ValueError("--local-header must look like 'Name: value': {!r}".format(text))
    if "\r" in value or "\n" in value:
        raise ValueError("--local-header value has a line break: {!r}".format(text))
    if name.lower() in ("host", "content-length", "transfer-encoding", "connection",
                        "upgrade"):
        raise ValueError("--local-header cannot set {} (use --local-host for "
                         "Host)".format(name))
    return name, value


class LocalRewrite:
    """
    The headers to add or replace, and the Host to send, on every local
    request and websocket.

    @param headers: C{[(name, value)]}, strings.
    @param host: the Host header, or L{None} (the local URL's own).
    """

    def __init__(self, headers=(), host=None):
        self.headers = [(name, value) for name, value in headers]
        self.host = host
        self._lower = frozenset(name.lower() for name, _ in self.headers)

    def __bool__(self):
        return bool(self.headers) or self.host is not None

    def apply_to_headers(self, headers):
        """
        Add or replace them on a L{twisted.web.http_headers.Headers}.
        """
        for name, value in self.headers:
            headers.setRawHeaders(name.encode("ascii"), [value.encode("utf-8")])
        if self.host is not None:
            headers.setRawHeaders(b"Host", [self.host.encode("idna")])

    def apply_to_dict(self, headers):
        """
        Add or replace them in a name -> value C{dict} (the websocket
        handshake's extra headers), whatever the case of the names there.
        """
        for key in [k for k in headers if k.lower() in self._lower]:
            del headers[key]
        headers.update(self.headers)
        return headers
