"""
Where a tunnelled request goes on the local service.
"""

from urllib.parse import quote

from ..features import RAW_PATH

# Characters left alone when re-encoding a decoded (v1) path.
_PATH_SAFE = "/:@!$&'()*+,;=~"


def local_url(base, message, features):
    """
    The local URL for an http-request or ws-request C{message}.

    @param base: scheme, host, port and any path prefix of the local
        service, without a trailing slash (C{http://127.0.0.1:8080/app}).
    @param features: the tunnel's features; without C{raw-path} the
        message's C{url} is the decoded path (v1) and is re-encoded here.
    """
    path = message.url or "/"
    if RAW_PATH not in features:
        path = quote(path, safe=_PATH_SAFE)
    if not path.startswith("/"):
        path = "/" + path
    url = base + path
    if message.query:
        url += "?" + message.query
    return url
