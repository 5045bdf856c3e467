"""
The correctness checks of bench/bench.py: tunnelled bodies equal direct ones
byte for byte (curl, sha256), every upload reached nginx whole, and every
load run was free of errors and non-2xx answers.  Each failed check goes to
L{findings.Findings.fail}.
"""

import hashlib
import os
import subprocess

from backend import SIZE_100K, upload_lengths
from findings import log


def curl(tmp, url, post=None):
    out_file = os.path.join(tmp, "curl.body")
    argv = ["curl", "-sS", "--max-time", "30", "-o", out_file, "-w", "%{http_code}"]
    if post:
        argv += ["-H", "Content-Type: application/octet-stream", "--data-binary", "@" + post]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True)
    try:
        with open(out_file, "rb") as f:
            body = f.read()
    except OSError:
        body = b""
    return out.stdout.strip(), body, out.stderr.strip()


def check_bodies(bed, findings):
    """GET 1 KB, GET 100 KB and POST 100 KB, once direct and once tunnelled."""
    content = bed.content
    checks = []
    for path, post in (("/1k.bin", None), ("/100k.bin", None), ("/upload", content.post_file)):
        expected = content.files[path]
        digests = {}
        for target, base in bed.bases.items():
            before = len(upload_lengths(bed.tmp))
            status, body, err = curl(bed.tmp, base + path, post)
            digests[target] = hashlib.sha256(body).hexdigest()
            what = "%s %s %s" % ("POST" if post else "GET", path, target)
            if status != "200":
                findings.fail("%s: HTTP status %s %s" % (what, status, err))
            elif body != expected:
                findings.fail("%s: body differs from the file (%d bytes, sha256 %s)"
                              % (what, len(body), digests[target][:16]))
            if post:
                lengths = upload_lengths(bed.tmp)[before:]
                if not lengths or lengths[-1] < SIZE_100K:
                    findings.fail("%s: nginx did not receive the 100 KB body (%s)"
                                  % (what, lengths))
        same = digests["direct"] == digests["tunnel"]
        if not same:
            findings.fail("%s %s: tunnel body sha256 %s != direct %s" % (
                "POST" if post else "GET", path, digests["tunnel"], digests["direct"]))
        checks.append({"path": path, "method": "POST" if post else "GET",
                       "sha256_direct": digests["direct"],
                       "sha256_tunnel": digests["tunnel"], "equal": same})
    findings.results["body_checks"] = checks
    log("bodies: tunnel == direct for %s" % ", ".join(
        "%s %s" % (c["method"], c["path"]) for c in checks if c["equal"]))


def check_row(row, findings):
    """A load run: no errors, no non-2xx, some requests.  Drops its raw output."""
    if row["errors"] or row["non2xx"] or not row["requests"]:
        findings.fail("%s %s c=%d %s: %d errors, %d non-2xx, %d requests%s" % (
            row["test"], row.get("mode", ""), row["concurrency"], row["target"],
            row["errors"], row["non2xx"], row["requests"],
            (" (" + row["failure"] + ")") if row.get("failure") else ""))
    row.pop("raw", None)


def check_uploads(bed, findings):
    """Every POST nginx answered during the whole run carried the full body."""
    lengths = upload_lengths(bed.tmp)
    short = [n for n in lengths if n < SIZE_100K]
    findings.results["uploads"] = {"answered": len(lengths), "short_bodies": len(short)}
    if short:
        findings.fail("nginx answered %d uploads without the full 100 KB body" % len(short))
    log("uploads: nginx answered %d POSTs, each after reading the full body" % len(lengths))
