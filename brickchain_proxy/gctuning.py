"""
Garbage-collector settings for the daemons (C{twistd brickproxy} and
C{twistd brickclient}; a program that embeds the client keeps its own).

CPython's cyclic collector runs a young-generation pass every 700 net
allocations and, every so often, a full pass over every object that is
tracked -- the daemon's whole start-up state (modules, classes, the
tunnels' and connections' objects) included.  Under load those full
passes are the slowest reactor turns: the tail of the latency.  Two
settings, as is usual for long-running servers:

  - C{gc.freeze()} once the reactor runs: what exists after start-up is
    moved to a permanent generation that no pass scans;
  - a higher young-generation threshold: fewer passes, each over the
    short-lived objects of a few hundred requests, which are mostly freed
    by reference counting anyway (the collector is only for cycles).
"""

import gc

#: The young-generation threshold (CPython's default is 700).
YOUNG_THRESHOLD = 20000


def tune(reactor):
    """
    Apply the settings once C{reactor} runs (so a service built but never
    run, or built on a test clock, changes nothing).
    """
    when_running = getattr(reactor, "callWhenRunning", None)
    if when_running is not None:
        when_running(apply)


def apply():
    """
    Raise the young threshold and freeze what exists now.
    """
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    gc.freeze()
