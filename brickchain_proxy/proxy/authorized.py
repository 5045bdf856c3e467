"""
Who may register (C{--authorized-keys FILE}).

The file holds one entry per line: a clientID (52 characters of lowercase
base32, as in the hostname: the key's thumbprint id or a session id) or a
key's RFC 7638 thumbprint in base64url (43 characters, as C{jose} tools
print it).  C{#} starts a comment; blank lines are ignored.  The file is
read at start and again on SIGHUP.
"""

import base64
import hashlib

from twisted.logger import Logger

from ..identity import rfc7638_input
from ..mandate_tokens import RegistrationRefused

NOT_AUTHORIZED = "client not authorized on this proxy"


def jwk_thumbprint(jwk):
    """
    The RFC 7638 SHA-256 thumbprint of a public JWK, base64url, unpadded.
    """
    digest = hashlib.sha256(rfc7638_input(jwk).encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def parse_authorized_keys(text):
    """
    The set of entries in an authorized-keys file's C{text}.

    @raise ValueError: naming the first line that is not a valid entry.
    """
    entries = set()
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if len(entry) == 52 and all(c in "abcdefghijklmnopqrstuvwxyz234567"
                                    for c in entry.lower()):
            entries.add(entry.lower())
        elif len(entry) == 43 and all(
                c.isalnum() or c in "-_" for c in entry) and entry.isascii():
            entries.add(entry)
        else:
            raise ValueError(
                "line {}: not a clientID (52 base32 characters) or a key "
                "thumbprint (43 base64url characters): {!r}".format(number, entry)
            )
    return frozenset(entries)


class AuthorizedKeys:
    """
    The registration policy read from a file.
    """

    _log = Logger()

    def __init__(self, path):
        self.path = path
        self.entries = frozenset()

    def load(self):
        """
        (Re-)read the file.  On error the previous entries stay in force.

        @raise OSError, ValueError: if the file cannot be read or parsed.
        """
        with open(self.path, encoding="utf-8") as f:
            entries = parse_authorized_keys(f.read())
        self.entries = entries
        self._log.info("authorized keys: {count} entries from {path}",
                       count=len(entries), path=self.path)
        return entries

    def allows(self, client_id, token_client_id, jwk):
        entries = self.entries
        return (
            client_id in entries
            or token_client_id in entries
            or jwk_thumbprint(jwk) in entries
        )

    def __call__(self, client_id, token):
        """
        The proxy's authorizer: raise L{RegistrationRefused} unless allowed.
        """
        if not self.allows(client_id, token.client_id, token.jwk):
            raise RegistrationRefused(NOT_AUTHORIZED)
