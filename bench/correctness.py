"""
The correctness checks of bench/bench.py: tunnelled bodies equal direct ones
byte for byte (curl, sha256), every upload reached nginx whole, and every
load run was free of errors and non-2xx answers.  Each failed check goes to
L{findings.Findings.fail} (localtunnel's apart from ours).
"""

import hashlib
import os
import subprocess

from backend import SIZE_100K, upload_lengths
from findings import log


def curl(tmp, url, post=None, host=None, max_time=30):
    out_file = os.path.join(tmp, "curl.body")
    argv = ["curl", "-sS", "--max-time", str(max_time), "-o", out_file, "-w", "%{http_code}"]
    if post:
        argv += ["-H", "Content-Type: application/octet-stream", "--data-binary", "@" + post]
    if host:
        argv += ["-H", "Host: " + host]
    argv.append(url)
    if os.path.exists(out_file):
        os.unlink(out_file)  # curl leaves it alone when nothing came back
    out = subprocess.run(argv, capture_output=True, text=True)
    try:
        with open(out_file, "rb") as f:
            body = f.read()
    except OSError:
        body = b""
    return out.stdout.strip(), body, out.stderr.strip()


def check_bodies(bed, findings):
    """
    GET 1 KB, GET 100 KB and POST 100 KB, once direct and once through each
    other target (the tunnel; localtunnel with --localtunnel).
    """
    content = bed.content
    checks = []
    for path, post in (("/1k.bin", None), ("/100k.bin", None), ("/upload", content.post_file)):
        expected = content.files[path]
        digests = {}
        for target, base in bed.bases.items():
            before = len(upload_lengths(bed.tmp))
            status, body, err = curl(bed.tmp, base + path, post, bed.hosts.get(target))
            digests[target] = hashlib.sha256(body).hexdigest()
            what = "%s %s %s" % ("POST" if post else "GET", path, target)
            if status != "200":
                findings.fail("%s: HTTP status %s %s" % (what, status, err), target)
            elif body != expected:
                findings.fail("%s: body differs from the file (%d bytes, sha256 %s)"
                              % (what, len(body), digests[target][:16]), target)
            if post:
                lengths = upload_lengths(bed.tmp)[before:]
                if not lengths or lengths[-1] < SIZE_100K:
                    findings.fail("%s: nginx did not receive the 100 KB body (%s)"
                                  % (what, lengths), target)
        check = {"path": path, "method": "POST" if post else "GET"}
        for target, digest in digests.items():
            check["sha256_" + target] = digest
            if target == "direct":
                continue
            same = digest == digests["direct"]
            check["equal" if target == "tunnel" else "equal_" + target] = same
            if not same:
                findings.fail("%s %s: %s body sha256 %s != direct %s" % (
                    check["method"], path, target, digest, digests["direct"]), target)
        checks.append(check)
    findings.results["body_checks"] = checks
    for target in bed.bases:
        if target != "direct":
            key = "equal" if target == "tunnel" else "equal_" + target
            log("bodies: %s == direct for %s" % (target, ", ".join(
                "%s %s" % (c["method"], c["path"]) for c in checks if c.get(key))))


def row_ok(row):
    return bool(row["requests"]) and not (row["errors"] or row["non2xx"])


def check_row(row, findings):
    """A load run: no errors, no non-2xx, some requests.  Drops its raw output."""
    if not row_ok(row):
        findings.fail("%s %s c=%d %s: %d errors, %d non-2xx, %d requests%s" % (
            row["test"], row.get("mode", ""), row["concurrency"], row["target"],
            row["errors"], row["non2xx"], row["requests"],
            (" (" + row["failure"] + ")") if row.get("failure") else ""),
            row["target"])
    row.pop("raw", None)


def check_uploads(bed, findings):
    """Every POST nginx answered during the whole run carried the full body."""
    lengths = upload_lengths(bed.tmp)
    short = [n for n in lengths if n < SIZE_100K]
    findings.results["uploads"] = {"answered": len(lengths), "short_bodies": len(short)}
    if short:
        findings.fail("nginx answered %d uploads without the full 100 KB body" % len(short))
    log("uploads: nginx answered %d POSTs, each after reading the full body" % len(lengths))
