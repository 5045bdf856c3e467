"""
What a failed tunnelled request becomes for its visitor: one ladder from a
failure to an HTTP status and a plain-text reason, used for HTTP requests
and websocket upgrades alike, and the websocket close codes (RFC 6455 7.4.1)
the proxy and the client send.
"""

from twisted.internet.defer import CancelledError, TimeoutError

from .bus.interface import BusUnavailable
from .correlation import TunnelGone

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009


class TunnelOffline(Exception):
    """
    No proxy instance holds a connection for this tunnel.
    """


class RemoteFailure(Exception):
    """
    The instance holding the tunnel reported that the request failed.
    """


def failure_answer(failure, client_id, request_timeout):
    """
    The answer for a visitor whose request to tunnel C{client_id} failed
    with C{failure}.

    @return: C{(status, text)} (text without a final newline), or L{None}
        when the visitor went away (C{CancelledError}: nothing to answer)
        or the failure is not one of the expected ones (a bug: the caller
        logs it and answers 500).
    """
    if failure.check(CancelledError):
        return None
    if failure.check(TunnelOffline):
        return 502, "tunnel {} is not connected".format(client_id)
    if failure.check(TimeoutError):
        return 504, "the tunnel did not answer within {:g} seconds".format(
            request_timeout)
    if failure.check(TunnelGone):
        return 502, "the tunnel's connection was lost before it answered"
    if failure.check(BusUnavailable):
        return 503, ("the tunnel cannot be reached: the bus between proxy "
                     "instances is unavailable right now")
    if failure.check(RemoteFailure):
        return 502, "tunnel {}: {}".format(client_id, failure.getErrorMessage())
    return None


INTERNAL_ERROR = (500, "internal error in the proxy")
