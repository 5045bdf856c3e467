"""
The copy of the Go v1 protocol vectors kept in the repository
(C{tests/vectors/}) is complete and byte-exact: every raw file has the size
and SHA-256 that C{index.json} records for it.

These tests read the in-repository copy even when C{$BRICKCHAIN_VECTORS}
points elsewhere, so a damaged copy is noticed whatever the environment.
"""

import hashlib

from twisted.trial.unittest import SynchronousTestCase

from tests import protocol_vectors


class InRepoVectorsTests(SynchronousTestCase):
    """
    C{tests/vectors/} matches its C{index.json}.
    """

    def setUp(self):
        self.path = protocol_vectors.IN_REPO
        self.assertTrue((self.path / "index.json").is_file(),
                        "%s/index.json is missing" % (self.path,))
        _, self.index = protocol_vectors.vector_index(self.path)

    def test_raw_files_match_index_hash_and_size(self):
        """
        Each raw file listed in index.json has its recorded C{payload_bytes}
        and C{payload_sha256}.
        """
        self.assertTrue(self.index)
        checked = 0
        for name, entry in sorted(self.index.items()):
            if "raw_file" not in entry:
                continue
            raw = (self.path / entry["raw_file"]).read_bytes()
            if "payload_bytes" in entry:
                self.assertEqual(len(raw), entry["payload_bytes"], name)
            if "payload_sha256" in entry:
                self.assertEqual(hashlib.sha256(raw).hexdigest(),
                                 entry["payload_sha256"], name)
            checked += 1
        self.assertTrue(checked)

    def test_every_listed_vector_has_its_pretty_form(self):
        """
        Each vector in index.json has its C{<name>.json} beside it.
        """
        missing = [name for name in self.index
                   if not (self.path / (name + ".json")).is_file()]
        self.assertEqual(missing, [])

    def test_identity_material_is_present(self):
        """
        The identity example and its key are part of the copy.
        """
        for name in ["identity.json", "client-key.pem",
                     "registration-request.decoded.json"]:
            self.assertTrue((self.path / name).is_file(), name)

    def test_ping_keeps_its_trailing_newline(self):
        """
        raw/ping.txt is the ping exactly as v1 sends it, newline included.
        """
        self.assertEqual(
            (self.path / "raw" / "ping.txt").read_bytes(),
            b'{"@type":"https://proxy.brickchain.com/v1/ping.json"}\n')
