"""
Run a service program for as long as our standard input stays open, so a
service cannot outlive the test process that started it, even one killed
before its cleanups ran::

    python supervise.py PROGRAM [ARGUMENT...]

The program inherits stdout and stderr (stdin is C{/dev/null}).  SIGTERM is
passed on to it; it is killed when our standard input reaches its end, or
when it is still running L{GRACE} seconds after a SIGTERM.  We exit with its
status (or 128 + the signal that ended it).
"""

import os
import signal
import subprocess
import sys
import threading

#: Seconds a program may take to exit after SIGTERM before it is killed.
GRACE = 5.0


def main(argv):
    child = None
    terminated = threading.Event()

    def terminate(signum=None, frame=None):
        terminated.set()
        if child is not None:
            child.terminate()
            timer = threading.Timer(GRACE, child.kill)
            timer.daemon = True
            timer.start()

    signal.signal(signal.SIGTERM, terminate)
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    if terminated.is_set():  # SIGTERM came before the child existed
        terminate()

    def watch_stdin():
        while os.read(0, 4096):
            pass
        child.kill()

    threading.Thread(target=watch_stdin, daemon=True).start()
    code = child.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
