"""
brickchain-proxy: publish an HTTP or WebSocket service from behind a firewall
or NAT through a central proxy, without opening an inbound port.
"""

__version__ = "0.1.0"
