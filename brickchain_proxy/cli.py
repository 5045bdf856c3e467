"""
Helpers shared by the command-line options of both daemons.
"""

from twisted.python import usage


def positive(kind):
    """
    An option coercer: C{kind(text)}, which must be greater than 0.
    """

    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise usage.UsageError("not a number: {!r}".format(text))
        if not value > 0:
            raise usage.UsageError("must be greater than 0: {!r}".format(text))
        return value

    return convert


def check_server_endpoint(description, option):
    """
    Raise L{usage.UsageError} naming C{option} unless C{description} is a
    Twisted server endpoint string (nothing listens yet).
    """
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as e:
        raise usage.UsageError("bad {} {!r}: {}".format(option, description, e))
