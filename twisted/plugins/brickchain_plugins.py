# twistd plugins for brickchain-proxy.  Kept tiny on purpose: the modules are
# named as strings, so `twistd --help` imports nothing heavy.
from twisted.application.service import ServiceMaker

brickproxy = ServiceMaker(
    "brickchain tunnel proxy",
    "brickchain_proxy.proxy.tap",
    "Tunneling proxy: publish services behind NAT through websocket tunnels.",
    "brickproxy",
)

brickclient = ServiceMaker(
    "brickchain tunnel client",
    "brickchain_proxy.client.tap",
    "Tunnel client: publish a local HTTP/WebSocket service through a brickproxy.",
    "brickclient",
)
