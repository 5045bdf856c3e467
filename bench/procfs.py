"""
What /proc says about our processes and the machine: RSS (VmRSS, VmHWM),
CPU ticks of a process and its children, the machine's busy time, and a
L{CpuMeter} that turns them into CPU % (and CPU us per request) over a run.
"""

import os
import resource
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: "others" CPU (% of one core) above which a row is flagged as noisy.
NOISE_PERCENT = 25


def proc_status(pid, field):
    """VmRSS / VmHWM of a process, in KiB (None if gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_ticks(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except OSError:
        return None


def cpu_ticks_tree(pid):
    """CPU ticks of a process and its direct children (nginx master+worker)."""
    total = cpu_ticks(pid) or 0
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    for child in children:
        total += cpu_ticks(child) or 0
    return total


def machine_ticks():
    """
    (busy, total) jiffies of the whole machine, from /proc/stat.  Busy is
    user + nice + system + steal: time that processes account for.  irq and
    softirq are left out, as they are not in any process's utime/stime, and
    on loopback they are mostly our own traffic.
    """
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = [
            int(v) for v in f.readline().split()[1:9]]
    return (user + nice + system + steal,
            user + nice + system + idle + iowait + irq + softirq + steal)


class CpuMeter:
    """CPU used by our processes, and by the whole machine, over a run."""

    def __init__(self, pids):
        self.pids = pids
        self.start = {name: cpu_ticks_tree(pid) for name, pid in pids.items()}
        self.machine = machine_ticks()
        self.children = self._children()
        self.t0 = time.monotonic()

    @staticmethod
    def _children():
        # The load generator (wrk, ab, wsbench.py) is a child we wait for.
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def read(self, requests=None):
        elapsed = time.monotonic() - self.t0
        busy0, total0 = self.machine
        busy1, total1 = machine_ticks()
        machine = 100.0 * (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)
        out = {"percent": {}, "seconds": {}}
        for name, pid in self.pids.items():
            seconds = (cpu_ticks_tree(pid) - self.start[name]) / float(CLK_TCK)
            out["seconds"][name] = round(seconds, 2)
            out["percent"][name] = round(100.0 * seconds / elapsed, 1)
        loadgen = self._children() - self.children
        out["seconds"]["load generator"] = round(loadgen, 2)
        out["percent"]["load generator"] = round(100.0 * loadgen / elapsed, 1)
        # Everything else on the machine (other users' jobs, kernel threads):
        # noise to keep in mind when reading the numbers.
        out["machine_busy_percent"] = round(machine, 1)
        out["others_percent"] = round(max(0.0, machine - sum(out["percent"].values())), 1)
        if requests:
            out["us_per_request"] = {name: round(sec * 1e6 / requests, 1)
                                     for name, sec in out["seconds"].items()}
        return out
