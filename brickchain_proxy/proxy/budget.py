"""
The byte budget of buffered (v1) requests: how many bytes of request and
response bodies the proxy holds in memory for requests waiting on tunnels,
in the whole process and per tunnel.

Each tunnel's pending requests are capped in number (C{--max-pending}) and
each body in size (C{--max-body}), but that still lets every tunnel hold
C{max_pending x max_body} bytes, with no bound across tunnels.  A request
takes its body's size from the budget before it is sent to the tunnel (or
is refused with 503), adds its response's size once that arrives (the
decoded body is held until the visitor has been written to), and gives
everything back exactly once when it finishes, however it finishes.

Plain object, no I/O.
"""

import attr

#: Which limit a refused reservation hit.
PROCESS = "process"
TUNNEL = "tunnel"


class ByteBudget:
    """
    @param per_process: the most bytes held across all tunnels (0: no
        limit).
    @param per_tunnel: the most bytes held for one tunnel (0: no limit).

    @ivar total: the bytes held now.
    @ivar by_tunnel: clientID -> bytes held for it now (absent when 0).
    """

    def __init__(self, per_process, per_tunnel):
        self.per_process = per_process
        self.per_tunnel = per_tunnel
        self.total = 0
        self.by_tunnel = {}

    def reserve(self, client_id, size):
        """
        Take C{size} bytes for a request of tunnel C{client_id}.

        @return: C{(reservation, None)}, or C{(None, PROCESS)} /
            C{(None, TUNNEL)} naming the limit that refuses it.
        """
        if size and self.per_process and self.total + size > self.per_process:
            return None, PROCESS
        if size and self.per_tunnel and \
                self.by_tunnel.get(client_id, 0) + size > self.per_tunnel:
            return None, TUNNEL
        reservation = Reservation(self, client_id)
        reservation.grow(size)
        return reservation, None

    def _add(self, client_id, size):
        self.total += size
        held = self.by_tunnel.get(client_id, 0) + size
        if held:
            self.by_tunnel[client_id] = held
        else:
            self.by_tunnel.pop(client_id, None)


@attr.s(slots=True, eq=False)
class Reservation:
    """
    The bytes one request holds.
    """

    _budget = attr.ib()
    client_id = attr.ib()
    size = attr.ib(default=0)
    released = attr.ib(default=False)

    def grow(self, size):
        """
        Hold C{size} more bytes (a response that has arrived: it is in
        memory already, so this never refuses).
        """
        if self.released or not size:
            return
        self.size += size
        self._budget._add(self.client_id, size)

    def release(self, _result=None):
        """
        Give everything back; only the first call counts.  Returns its
        argument, to sit in a callback chain.
        """
        if not self.released:
            self.released = True
            size, self.size = self.size, 0
            if size:
                self._budget._add(self.client_id, -size)
        return _result


#: A budget that never refuses (for embedders that do not want one).
def unlimited():
    return ByteBudget(0, 0)
