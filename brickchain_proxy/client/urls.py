"""
Where a tunnelled request goes on the local service, and the boundary it
must stay within: the path prefix of C{--local}.

The visitor's path is appended to the prefix as it came (re-encoded only
for v1, whose paths arrive decoded).  A path that some local server could
read as leaving the prefix is refused instead (L{PathEscapesPrefix}): one
with a dot segment (C{.} or C{..}), once percent-encoded dots, slashes and
backslashes are decoded (in either case), backslashes are read as slashes
and C{;parameters} are dropped from each segment, or one that starts with
C{//}.  Nothing is normalised: a path that is let through reaches the local
service byte for byte.
"""

import re
from urllib.parse import quote

from ..features import RAW_PATH

# Characters left alone when re-encoding a decoded (v1) path.
_PATH_SAFE = "/:@!$&'()*+,;=~"

# What a lenient local server decodes into a dot or a path separator.
_DOT_OR_SEPARATOR = re.compile(r"%(2[eE]|2[fF]|5[cC])")
_DOT_SEGMENTS = frozenset([".", ".."])

#: What the visitor is told (with status 400) when its path is refused.
ESCAPES_PREFIX = "path escapes the local prefix"


class PathEscapesPrefix(ValueError):
    """
    The visitor's path could leave the local service's path prefix.

    @ivar path: the path as it would have been sent.
    """

    def __init__(self, path):
        ValueError.__init__(self, "{}: {}".format(ESCAPES_PREFIX, path[:200]))
        self.path = path


def escapes_prefix(path):
    """
    Whether C{path} (as it would go on the wire, after the prefix) could be
    read by a local server as leaving the prefix: read leniently -- C{%2e},
    C{%2f} and C{%5c} decoded, C{\\} taken for C{/}, a segment's
    C{;parameters} ignored (as Tomcat does) -- it holds a dot segment, or it
    starts with C{//} (which some servers take for a host name).
    """
    lenient = _DOT_OR_SEPARATOR.sub(
        lambda match: chr(int(match.group(1), 16)), path).replace("\\", "/")
    if lenient.startswith("//"):
        return True
    return any(segment.partition(";")[0] in _DOT_SEGMENTS
               for segment in lenient.split("/"))


def local_url(base, message, features):
    """
    The local URL for an http-request or ws-request C{message}.

    @param base: scheme, host, port and any path prefix of the local
        service, without a trailing slash (C{http://127.0.0.1:8080/app}).
    @param features: the tunnel's features; without C{raw-path} the
        message's C{url} is the decoded path (v1) and is re-encoded here.
    @raise PathEscapesPrefix: when the path could leave the prefix
        (L{escapes_prefix}).
    """
    path = message.url or "/"
    if RAW_PATH not in features:
        path = quote(path, safe=_PATH_SAFE)
    if not path.startswith("/"):
        path = "/" + path
    if escapes_prefix(path):
        raise PathEscapesPrefix(path)
    url = base + path
    if message.query:
        url += "?" + message.query
    return url
