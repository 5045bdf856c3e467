"""
Running a benchmark script from a test: as a subprocess of the checkout,
with a deadline after which it gets SIGTERM (so it stops every process it
started) and then SIGKILL.
"""

import os
import signal
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(testcase, argv, timeout, what):
    """
    Run C{argv} in the checkout; fail C{testcase} if it takes more than
    C{timeout} seconds.

    @return: C{(returncode, stdout, detail)}: the exit status, standard
        output as text, and that output with the tail of standard error
        (for assertion messages).
    """
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        testcase.fail("%s took more than %d s:\n%s" % (
            what, timeout, stderr.decode("utf-8", "replace")[-3000:]))
    text = stdout.decode("utf-8", "replace")
    detail = "%s\n--- stderr:\n%s" % (text, stderr.decode("utf-8", "replace")[-3000:])
    return proc.returncode, text, detail
