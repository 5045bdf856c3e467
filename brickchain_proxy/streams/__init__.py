"""
The negotiated stream layer (feature C{streams}): many flow-controlled
streams multiplexed on one tunnel websocket, in binary messages, between
this project's proxy and client (docs/protocol.rst, "Streams").
"""
