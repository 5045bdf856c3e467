"""
Client identity: EC P-256 keys and client ids.

A tunnel client owns an EC P-256 key. Its *client id* is the lowercase,
unpadded base32 of the SHA-256 of the key's RFC 7638 thumbprint input (52
characters, so ``<client id>.<domain>`` is a valid DNS name). A client proves
that it owns the key by sending a *mandate token* in its registration: a
compact JWS (ES256) whose protected header embeds the public key and whose
payload names the proxy endpoint, a timestamp and a time-to-live.

L{ClientKey} is the client's side: it loads or creates the key file and
signs mandate tokens. The proxy's side, checking them, is
L{brickchain_proxy.mandate_tokens}.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from typing import Optional

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk as _jwk
from jwcrypto import jws as _jws

from .timestamps import format_timestamp

#: The C{@type} of a mandate token's payload.
MANDATE_TOKEN_TYPE = "https://schema.brickchain.com/v2/mandate-token.json"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b32id(digest: bytes) -> str:
    return base64.b32encode(digest).rstrip(b"=").decode("ascii").lower()


def rfc7638_input(jwk: dict) -> str:
    """
    Return the RFC 7638 thumbprint input of an EC public JWK: the required
    members C{crv}, C{kty}, C{x}, C{y} as compact JSON, keys sorted.
    """
    try:
        members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    except (KeyError, TypeError):
        raise ValueError("an EC JWK needs crv, kty, x and y") from None
    if not all(isinstance(value, str) for value in members.values()):
        raise ValueError("JWK members crv, kty, x and y must be strings")
    return json.dumps(members, sort_keys=True, separators=(",", ":"))


def client_id_from_jwk(jwk: dict) -> str:
    """
    Return the client id of an EC public JWK: lowercase unpadded base32 of
    the SHA-256 of its RFC 7638 thumbprint input.
    """
    digest = hashlib.sha256(rfc7638_input(jwk).encode("ascii")).digest()
    return _b32id(digest)


def session_client_id(client_id: str, session: str) -> str:
    """
    Return the client id of a registration that names a C{session}: the
    hash of the thumbprint client id I{string} followed by the session.
    """
    data = client_id.encode("ascii") + session.encode("utf-8")
    return _b32id(hashlib.sha256(data).digest())


def derive_client_id(jwk: dict, session: Optional[str]) -> str:
    """
    Return the client id a registration gets: the thumbprint id, or the
    session id when C{session} is a non-empty string.
    """
    client_id = client_id_from_jwk(jwk)
    if session:
        return session_client_id(client_id, session)
    return client_id


class ClientKey:
    """An EC P-256 private key and what derives from it."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise ValueError("not an EC private key")
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError(
                "EC key on curve %s, expected P-256" % (private_key.curve.name,)
            )
        self._key = private_key
        self._jwk = _jwk.JWK.from_pyca(private_key)
        numbers = private_key.public_key().public_numbers()
        self._public_jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
        }
        self._client_id = client_id_from_jwk(self._public_jwk)

    @classmethod
    def generate(cls) -> "ClientKey":
        """Create a new random P-256 key."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, data: bytes) -> "ClientKey":
        """
        Load an unencrypted SEC1 (C{EC PRIVATE KEY}) or PKCS#8
        (C{PRIVATE KEY}) PEM. Raise ValueError for anything else.
        """
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ValueError("encrypted private keys are not supported") from None
        except Exception as exc:  # ValueError, UnsupportedAlgorithm, ...
            raise ValueError("not a PEM private key (%s)" % (exc,)) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(
                "not an EC private key (%s); a P-256 key is needed"
                % (type(key).__name__,)
            )
        return cls(key)

    @classmethod
    def load_or_create(cls, path: str) -> "ClientKey":
        """
        Load the key PEM at C{path}; if there is no such file, create a new
        key and write it there as SEC1 PEM, readable by its owner only.

        The file appears atomically with mode 0600 and an existing file is
        never overwritten (if another process creates it first, its key is
        used). Raise ValueError naming C{path} if the file is not a usable key.
        """
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            key = cls.generate()
            if key._write_new(path):
                return key
            with open(path, "rb") as f:
                data = f.read()
        try:
            return cls.from_pem(data)
        except ValueError as exc:
            raise ValueError("client key %s: %s" % (path, exc)) from None

    def _write_new(self, path: str) -> bool:
        """
        Write this key to C{path}, which must not exist: a temporary file
        in the same directory is created with mode 0600, filled, synced and
        hard-linked into place. Return False if C{path} appeared meanwhile.
        """
        directory = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(
            directory, ".%s.%s.tmp" % (os.path.basename(path), uuid.uuid4().hex)
        )
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self._sec1_pem())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp)

    def _sec1_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    def public_jwk(self) -> dict:
        """Return the public key as a JWK: kty, crv, x, y (32-byte coordinates)."""
        return dict(self._public_jwk)

    @property
    def client_id(self) -> str:
        """The thumbprint client id (52 characters)."""
        return self._client_id

    def sign_mandate_token(
        self, uri: str, ttl: int = 60, now: Optional[float] = None
    ) -> str:
        """
        Return a compact ES256 JWS mandate token for the proxy endpoint
        C{uri}, valid for C{ttl} seconds from C{now} (default: the current
        time). The header embeds the public key as v1 clients do.
        """
        if now is None:
            now = time.time()
        header = json.dumps(
            {"alg": "ES256", "jwk": self._public_jwk}, separators=(",", ":")
        )
        payload = json.dumps(
            {
                "@type": MANDATE_TOKEN_TYPE,
                "@timestamp": format_timestamp(now),
                "uri": uri,
                "ttl": ttl,
            },
            separators=(",", ":"),
        )
        token = _jws.JWS(payload.encode("utf-8"))
        token.add_signature(self._jwk, alg="ES256", protected=header)
        return token.serialize(compact=True)
