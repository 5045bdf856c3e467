"""
The contracts between the hub and its partners: the tunnel connections it
sends on, and the visitor websockets it delivers to.
"""

from zope.interface import Attribute, Interface


class ITunnelConnection(Interface):
    """
    One client's websocket to this proxy, carrying the tunnels it
    registered (L{brickchain_proxy.proxy.tunnel.TunnelServerProtocol}).
    """

    features = Attribute(
        "The negotiated extensions (a frozenset of names; empty for a v1 client).")
    backpressure = Attribute(
        "The push producer that pauses every visitor sending into this "
        "connection while its transport is backed up (TunnelBackpressure).")

    def send_raw(data):
        """
        Send one encoded protocol message (dropped once the connection is
        closing).
        """

    def send_frame(stream_id, data, last=False):
        """
        Send a ws-message, or with C{last} the ws-teardown, of visitor
        websocket C{stream_id} (L{None}: C{data} knows it); paced for a v1
        client.
        """

    def tunnel_taken_over(client_id):
        """
        A newer registration of C{client_id} exists elsewhere: stop
        carrying it (and close when it was the last).
        """


class IStreamVisitor(Interface):
    """
    A visitor's websocket on this instance
    (L{brickchain_proxy.proxy.visitor_ws.VisitorProtocol}).
    """

    def deliver(message):
        """
        A ws-message or ws-teardown for this visitor from its tunnel.
        """

    def tunnel_lost(reason):
        """
        The tunnel carrying this websocket is gone: close (1001) with
        C{reason}.
        """

    def throttle(paused):
        """
        Stop (C{paused}) or resume reading this visitor.
        """
