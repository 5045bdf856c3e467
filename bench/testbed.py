"""
The set-up bench/bench.py measures, all on 127.0.0.1 and free ports, all in
the temp dir: nginx with its content, the websocket echo backend behind
nginx's /ws, a proxy, and a client forwarding to nginx.  A L{TestBed} knows
their processes and URLs, meters their CPU, and checks they are alive.
Another target (bench/localtunnel.py) can be added with L{TestBed.add_target}.
"""

import os
import shutil

from backend import Content, start_nginx
from findings import log
from processes import (
    SetupError, free_port, start_client, start_echo, start_proxy, wait_listening)
from procfs import CpuMeter


class TestBed:
    """
    @ivar bases: C{{"direct": nginx, "tunnel": nginx through the tunnel}},
        HTTP URLs to append a path to.
    @ivar ws_urls: the same for the websocket echo.
    @ivar hosts: target -> the Host header its load must send (none for
        direct and tunnel).
    @ivar extra: name -> the process of an added target, metered and
        watched like ours.
    """

    def __init__(self, procs, content, echo, echo_port, nginx, nginx_port,
                 proxy, proxy_port, client, client_id):
        self.procs = procs
        self.tmp = procs.tmp
        self.content = content
        self.echo, self.echo_port = echo, echo_port
        self.nginx, self.nginx_port = nginx, nginx_port
        self.proxy, self.proxy_port = proxy, proxy_port
        self.client, self.client_id = client, client_id
        self.direct_base = "http://127.0.0.1:%d" % nginx_port
        self.tunnel_base = "http://127.0.0.1:%d/proxy/request/%s" % (proxy_port, client_id)
        self.bases = {"direct": self.direct_base, "tunnel": self.tunnel_base}
        self.ws_urls = {
            "direct": "ws://127.0.0.1:%d/ws" % nginx_port,
            "tunnel": "ws://127.0.0.1:%d/proxy/request/%s/ws" % (proxy_port, client_id),
        }
        self.hosts = {}
        self.extra = {}

    def add_target(self, target, base, ws_url, host, processes):
        """
        Measure C{target} too: C{base} and C{ws_url} with C{Host: host};
        C{processes} (name -> process) are metered and watched.
        """
        self.bases[target] = base
        self.ws_urls[target] = ws_url
        self.hosts[target] = host
        self.extra.update(processes)

    def meters(self):
        pids = {"proxy": self.proxy.pid, "client": self.client.pid,
                "nginx": self.nginx.pid, "echo": self.echo.pid}
        pids.update((name, proc.pid) for name, proc in self.extra.items())
        return CpuMeter(pids)

    def check_alive(self):
        for proc in [self.nginx, self.echo, self.proxy, self.client] + list(self.extra.values()):
            if proc.poll() is not None:
                raise SetupError("%s died (status %s)" % (proc.bench_name, proc.returncode))


def start_testbed(procs):
    """
    Start everything, in order, each once listening (the client once
    registered).

    @return: a L{TestBed}
    """
    tmp = procs.tmp
    os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin"
    missing = [tool for tool in ("nginx", "wrk", "ab", "curl") if not shutil.which(tool)]
    if missing:
        raise SetupError("not found on PATH: %s (bench/run installs them)" % ", ".join(missing))
    content = Content(tmp)
    content.write()
    os.chmod(tmp, 0o755)

    echo, echo_port = start_echo(procs)
    nginx, nginx_port = start_nginx(procs, echo_port)
    proxy_port = free_port()
    proxy = start_proxy(procs, "proxy", proxy_port)
    wait_listening(proxy_port, proxy, "the proxy")
    client, client_id = start_client(procs, proxy, proxy_port,
                                     "http://127.0.0.1:%d" % nginx_port)
    log("nginx :%d, ws echo :%d, proxy :%d, client %s (tmp %s)" % (
        nginx_port, echo_port, proxy_port, client_id, tmp))
    return TestBed(procs, content, echo, echo_port, nginx, nginx_port,
                   proxy, proxy_port, client, client_id)
