"""
Where the tests find the protocol vectors captured from the Go v1
implementation.

The vectors are kept in the repository, in C{tests/vectors/}: the pretty
C{<name>.json} documents, the exact wire bytes in C{raw/<name>.txt},
C{index.json} (type, direction, size and SHA-256 of each raw file),
C{identity.json} and C{client-key.pem}.  They are captured data: never edit
them by hand, and keep their bytes exact (C{raw/ping.txt} ends with a
newline, as the Go proxy sends it).

Setting C{$BRICKCHAIN_VECTORS} to another folder of the same layout makes
the tests read that one instead.  A missing folder fails the calling test; it
never skips it.
"""

import json
import os
from pathlib import Path

from twisted.trial.unittest import FailTest

#: The environment variable that points the tests at another vectors folder.
ENVIRONMENT = "BRICKCHAIN_VECTORS"

#: The copy kept in the repository.
IN_REPO = Path(__file__).resolve().parent / "vectors"


class VectorsMissing(FailTest):
    """
    The protocol vectors folder is not there: the checkout is incomplete or
    C{$BRICKCHAIN_VECTORS} names the wrong folder.
    """


def vectors_dir():
    """
    The protocol vectors folder: C{$BRICKCHAIN_VECTORS} when it is set,
    else C{tests/vectors/} in the repository.

    @raise VectorsMissing: the folder (its C{index.json}) is not there.
    """
    configured = os.environ.get(ENVIRONMENT)
    path = Path(configured) if configured else IN_REPO
    if not (path / "index.json").is_file():
        if configured:
            where = "$%s=%s" % (ENVIRONMENT, configured)
        else:
            where = "%s (restore tests/vectors/ from the repository)" % (path,)
        raise VectorsMissing("protocol vectors not found: %s" % (where,))
    return path


def vector_index(path=None):
    """
    The vectors folder and its parsed C{index.json}.

    @param path: the folder to read; by default L{vectors_dir}.
    """
    if path is None:
        path = vectors_dir()
    return path, json.loads((path / "index.json").read_text(encoding="utf-8"))


def read_vector(name, mode="r"):
    """
    The contents of the file C{name} (relative to the vectors folder), as
    text (C{mode="r"}) or bytes (C{mode="rb"}).
    """
    path = vectors_dir() / name
    if "b" in mode:
        return path.read_bytes()
    return path.read_text(encoding="utf-8")


def raw_vector(name):
    """
    The exact wire bytes of the vector called C{name} in C{index.json}.
    """
    path, index = vector_index()
    return (path / index[name]["raw_file"]).read_bytes()


def raw_vectors():
    """
    The exact bytes of every C{raw/*.txt} vector, keyed by file stem.

    @raise VectorsMissing: the folder is not there.
    """
    raw = vectors_dir() / "raw"
    return {p.stem: p.read_bytes() for p in sorted(raw.glob("*.txt"))}
