"""
What the proxy needs from a message bus and a tunnel directory.

A proxy *instance* holds the websocket of some tunnels.  The **directory** says
which instance holds which tunnel; the **bus** carries messages between
instances.  With one instance (the in-memory backend) neither is on the
request path: a tunnel held by this instance is served straight from a dict.
"""

from zope.interface import Attribute, Interface


class BusUnavailable(Exception):
    """
    The bus (or directory) cannot be reached right now.
    """


class IBus(Interface):
    """
    Publish/subscribe of opaque byte strings by channel name.

    Delivery is asynchronous (never inside ``publish``), in publish order per
    channel, at most once.
    """

    def publish(channel, payload):
        """
        Send C{payload} (L{bytes}) to every current subscriber of C{channel}
        (L{str}).

        @return: a L{Deferred} firing with the number of subscribers that
            received it (0: nobody listens there), or failing with
            L{BusUnavailable}.
        """

    def subscribe(channel, handler):
        """
        Call C{handler(payload)} for every message later published on
        C{channel}.  A channel may have several handlers.

        @return: a L{Deferred} that fires once the subscription is active.
        """

    def unsubscribe(channel, handler):
        """
        Stop calling C{handler} for C{channel}; the backend drops the channel
        when it has no handler left.

        @return: a L{Deferred} that fires once done.
        """


class ITunnelDirectory(Interface):
    """
    Which proxy instance holds the connection of which tunnel (clientID).
    """

    ttl = Attribute("Seconds an entry lives unless renewed (None: forever).")

    def claim(client_id, instance_id):
        """
        Record that C{instance_id} now holds C{client_id}: the newest
        registration wins.

        @return: a L{Deferred} firing with the instance that held it before
            (L{str}), or L{None}.
        """

    def claim_if_free(client_id, instance_id):
        """
        Record that C{instance_id} holds C{client_id} unless another
        instance does (a pool member joining, L{features.POOL}); renews the
        entry when it is ours.

        @return: a L{Deferred} firing with the instance that holds it now
            (C{instance_id} itself, or the other one).
        """

    def renew(client_id, instance_id):
        """
        Extend the life of an entry this instance still holds.

        @return: a L{Deferred} firing with L{True} if the entry was still
            ours, L{False} if another instance has taken it over.
        """

    def release(client_id, instance_id):
        """
        Remove the entry if (and only if) C{instance_id} still holds it.

        @return: a L{Deferred} firing when done.
        """

    def lookup(client_id):
        """
        @return: a L{Deferred} firing with the instance id holding
            C{client_id}, or L{None} if the tunnel is offline.
        """


class IBackend(Interface):
    """
    A bus, its directory and their connections, chosen by C{--bus}
    (L{brickchain_proxy.bus.open_backend}).
    """

    bus = Attribute("The L{IBus}.")
    directory = Attribute("The L{ITunnelDirectory}.")

    def start():
        """
        Start connecting.  Fails (or returns a failing L{Deferred}) only for
        a configuration that can never work; a backend that is merely
        unreachable keeps trying.
        """

    def stop():
        """
        Close every connection.

        @return: a L{Deferred} that fires when they are closed.
        """

    def on_reconnect(listener):
        """
        Call C{listener()} whenever the backend is back after an outage
        (what it held may be lost).
        """

    def on_interrupted(listener):
        """
        Call C{listener()} whenever messages published to this instance may
        have been lost: the connection that receives them dropped.
        """

    def rate_limiter(local_limiter):
        """
        The L{brickchain_proxy.ratelimit.IRateLimiter} to use: shared
        through the backend, or C{local_limiter} itself.
        """

    def replay_guard():
        """
        The L{brickchain_proxy.replay.IReplayGuard} that remembers the
        mandate tokens used to register: shared through the backend by
        every instance on it, or this process's own.
        """
