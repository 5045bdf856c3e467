"""
Prototype of the stream layer's hot path, two ways, by measurement
(docs/protocol.rst, "Streams"): HTTP/2 framing with the h2 library against
a yamux-like 12-byte header, for a DATA frame sent, received and granted
back (WINDOW_UPDATE).  Run: .venv/bin/pip install h2 && .venv/bin/python
bench/frame_codecs.py
"""
import struct, time
import h2.connection, h2.config, h2.events

N = 20000
CHUNK = 16384
data = b"x" * CHUNK

# -- h2: a client and a server connection, DATA frames on one stream, with
#    flow control acknowledged as the receiver consumes.
def h2_roundtrip(n, size):
    cfg_c = h2.config.H2Configuration(client_side=True)
    cfg_s = h2.config.H2Configuration(client_side=False)
    c = h2.connection.H2Connection(cfg_c); s = h2.connection.H2Connection(cfg_s)
    c.initiate_connection(); s.initiate_connection()
    s.receive_data(c.data_to_send()); c.receive_data(s.data_to_send())
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31-1}); s.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31-1})
    s.receive_data(c.data_to_send()); c.receive_data(s.data_to_send()); s.receive_data(c.data_to_send())
    c.send_headers(1, [(":method","GET"),(":path","/"),(":scheme","http"),(":authority","x")])
    s.receive_data(c.data_to_send())
    s.increment_flow_control_window(2**30); c.receive_data(s.data_to_send())
    payload = b"x" * size
    t = time.perf_counter()
    got = 0
    for _ in range(n):
        c.send_data(1, payload)
        for ev in s.receive_data(c.data_to_send()):
            if isinstance(ev, h2.events.DataReceived):
                got += len(ev.data)
                s.acknowledge_received_data(ev.flow_controlled_length, 1)
        c.receive_data(s.data_to_send())
    return time.perf_counter() - t

HDR = struct.Struct(">BBHII")
def yamux_roundtrip(n, size):
    payload = b"x" * size
    window = {1: 2**30}
    t = time.perf_counter()
    got = 0
    for _ in range(n):
        frame = HDR.pack(0, 0, 0, 1, len(payload)) + payload     # sender
        window[1] -= len(payload)
        v, typ, flags, sid, length = HDR.unpack_from(frame)       # receiver
        body = memoryview(frame)[12:]
        got += len(body)
        upd = HDR.pack(0, 1, 0, sid, length)                       # window update back
        _, _, _, sid2, delta = HDR.unpack_from(upd)
        window[sid2] += delta
    return time.perf_counter() - t

for size in (100, 16384):
    n = 20000 if size == 100 else 5000
    th = h2_roundtrip(n, size); ty = yamux_roundtrip(n, size)
    print(f"{size:6d} B frames: h2 {th/n*1e6:7.2f} us/frame ({n*size/th/1e6:7.1f} MB/s)   12-byte header {ty/n*1e6:6.2f} us/frame ({n*size/ty/1e6:8.1f} MB/s)")
