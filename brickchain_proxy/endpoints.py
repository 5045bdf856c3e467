"""
Client endpoints, built one way for every outgoing connection: the
proxy's websocket, the local service (HTTP and websockets) and Redis.
"""

from twisted.internet import endpoints
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IStreamClientEndpoint, ITCPTransport
from zope.interface import implementer


def no_delay(transport):
    """
    Turn Nagle's algorithm off on a TCP C{transport}: a request or an answer
    written in several pieces (a head, then body frames) would otherwise
    have its last small piece held until the peer's delayed ACK, ~40 ms.
    """
    if ITCPTransport.providedBy(transport):
        transport.setTcpNoDelay(True)


@implementer(IStreamClientEndpoint)
class _NoDelay:
    """
    An endpoint whose connections have Nagle's algorithm off.
    """

    def __init__(self, endpoint):
        self._endpoint = endpoint

    def connect(self, factory):
        def connected(protocol):
            no_delay(protocol.transport)
            return protocol

        return self._endpoint.connect(factory).addCallback(connected)


def client_endpoint(reactor, host, port, tls=None, timeout=30, nodelay=True):
    """
    A stream client endpoint for C{host}:C{port}: plain TCP for an IP
    address (no resolver thread), a L{endpoints.HostnameEndpoint} for a
    name; wrapped in TLS when C{tls} is given.

    @param tls: L{None} for plain TCP, or the client TLS options (e.g. from
        L{twisted.internet.ssl.optionsForClientTLS}), which verify the peer.
    """
    if isIPAddress(host):
        endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    elif isIPv6Address(host):
        endpoint = endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    else:
        endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
    if nodelay:
        # Around the TCP endpoint, so the TCP transport gets it under TLS too.
        endpoint = _NoDelay(endpoint)
    if tls is not None:
        endpoint = endpoints.wrapClientTLS(tls, endpoint)
    return endpoint


def verifying_tls(host, trust_root=None):
    """
    Client TLS options that verify C{host}'s certificate against the
    system's trust store (or C{trust_root}), its name or IP address checked
    strictly with service-identity: see L{brickchain_proxy.tls}.
    """
    from .tls import verifying_tls

    return verifying_tls(host, trust_root)
