"""
Starting and stopping the benchmarks' processes: a L{Processes} registry
(every pid recorded with its start time for bench/run's trap), free ports,
waiting for a port to listen, and the programs every benchmark starts: the
websocket echo backend, C{twistd brickproxy} and C{twistd brickclient}.

Shared by bench/bench.py, bench/redis_paths.py and bench/ws_roundtrips.py.
"""

import json
import os
import signal
import socket
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
PYTHON = os.path.join(VENV_BIN, "python")
TWISTD = os.path.join(VENV_BIN, "twistd")


class SetupError(Exception):
    pass


def _start_time(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


class Processes:
    """
    Everything we start.  Each pid (with its start time, so the shell trap
    never signals a recycled pid) is appended to TMP/pids for bench/run's
    trap, the last line of defence.
    """

    def __init__(self, tmp):
        self.tmp = tmp
        self.running = []

    def start(self, name, argv, stdin=subprocess.DEVNULL, stdout=None, **kw):
        logfile = open(os.path.join(self.tmp, name + ".out"), "ab")
        proc = subprocess.Popen(
            argv, stdin=stdin, stdout=stdout if stdout is not None else logfile,
            stderr=logfile, cwd=self.tmp, **kw)
        logfile.close()
        proc.bench_name = name
        with open(os.path.join(self.tmp, "pids"), "a") as f:
            f.write("%d %s\n" % (proc.pid, _start_time(proc.pid) or "?"))
        self.running.append(proc)
        return proc

    def stop(self, proc, timeout=5.0):
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self):
        for proc in reversed(list(self.running)):
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 8
        for proc in reversed(list(self.running)):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.running = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError("%s exited (status %s) before listening" % (what, proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SetupError("%s did not listen on port %d within %gs" % (what, port, timeout))


# -- the programs ------------------------------------------------------------------


def start_echo(procs):
    """
    bench/ws_echo.py on a free port, once listening.

    @return: C{(process, port)}
    """
    port = free_port()
    proc = procs.start("ws-echo", [
        PYTHON, os.path.join(HERE, "ws_echo.py"), "--port", str(port)])
    wait_listening(port, proc, "the ws echo backend")
    return proc, port


def start_proxy(procs, name, port, extra=()):
    """
    C{twistd -n brickproxy} on 127.0.0.1:C{port}, with a rate limit too
    high to matter (and the options C{extra}); its log is TMP/C{name}.log.
    Not waited for.
    """
    return procs.start(name, [
        TWISTD, "-n", "--pidfile=", "--logfile=" + os.path.join(procs.tmp, name + ".log"),
        "brickproxy", "--domain", "localhost",
        "--listen", "tcp:%d:interface=127.0.0.1" % port,
        "--base", "http://127.0.0.1:%d" % port,
        "--rate-limit", "100000000/1"] + list(extra))


def start_client(procs, proxy, proxy_port, local_url, timeout=30):
    """
    C{twistd -n brickclient} to the proxy on C{proxy_port}, forwarding to
    C{local_url}; waits for its registration (TMP/state.json).

    @param proxy: the proxy's process, watched while waiting.
    @return: C{(process, clientID)}
    """
    tmp = procs.tmp
    state = os.path.join(tmp, "state.json")
    client = procs.start("client", [
        TWISTD, "-n", "--pidfile=", "--logfile=" + os.path.join(tmp, "client.log"),
        "brickclient", "--proxy", "http://127.0.0.1:%d" % proxy_port,
        "--local", local_url,
        "--key", os.path.join(tmp, "key.pem"), "--state", state])
    deadline = time.monotonic() + timeout
    while not os.path.exists(state):
        for proc in (proxy, client):
            if proc.poll() is not None:
                raise SetupError("%s exited (status %s)" % (proc.bench_name, proc.returncode))
        if time.monotonic() > deadline:
            raise SetupError("the client did not register within %d s" % timeout)
        time.sleep(0.05)
    with open(state) as f:
        return client, json.load(f)["clientID"]
