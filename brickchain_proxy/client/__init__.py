"""
The tunnel client: C{twistd brickclient}, and the same as a library.

    from brickchain_proxy.client import TunnelClientService

L{TunnelClientService} publishes a local URL, or a L{twisted.web} resource
served inside the program, through a brickproxy; C{when_registered()} gives
its L{Registration} (C{.url}, C{.hostname}, C{.client_id}).
"""

from .service import (
    IN_PROCESS_URL,
    ClientStopped,
    Registration,
    TunnelClientService,
)

__all__ = ["TunnelClientService", "Registration", "ClientStopped", "IN_PROCESS_URL"]
