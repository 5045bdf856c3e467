"""
Client identity: EC P-256 keys, client ids and mandate tokens.

A tunnel client owns an EC P-256 key. Its *client id* is the lowercase,
unpadded base32 of the SHA-256 of the key's RFC 7638 thumbprint input (52
characters, so ``<client id>.<domain>`` is a valid DNS name). A client proves
that it owns the key by sending a *mandate token* in its registration: a
compact JWS (ES256) whose protected header embeds the public key and whose
payload names the proxy endpoint, a timestamp and a time-to-live.

This module knows nothing about websockets: L{ClientKey} is the client's side,
L{TokenVerifier} the proxy's side, and L{RegistrationRefused} carries the
plain-text reason the proxy sends back (in v1's wording where v1 has one).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import time
import uuid
from typing import Optional
from urllib.parse import unquote, urlsplit

import attr
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk as _jwk
from jwcrypto import jws as _jws
from jwcrypto.common import JWException

MANDATE_TOKEN_TYPE = "https://schema.brickchain.com/v2/mandate-token.json"

#: Refusal reasons. The first four are v1's exact wording (Go clients log them).
EXPIRED = "Token has expired"
WRONG_ENDPOINT = "Token not for this endpoint"
NO_JWK = "no jwk in token"
VERIFY_FAILED = "failed to verify token"
MALFORMED = "malformed token"
UNSUPPORTED_ALG = "unsupported algorithm"
FUTURE = "token timestamp is in the future"

#: Longest mandate token we look at; a real one is about 450 characters.
MAX_TOKEN_LENGTH = 8192

_B64URL = re.compile(r"\A[A-Za-z0-9_-]*\Z")
_RFC3339 = re.compile(
    r"\A(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})"
    r"(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})\Z"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# ws and wss name the same endpoints as http and https.
_SCHEME_FAMILY = {"http": "http", "ws": "http", "https": "https", "wss": "https"}


class RegistrationRefused(Exception):
    """
    A mandate token was refused.

    C{str(exc)} and C{exc.reason} are the short plain-text reason sent to the
    client.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url strictly; raise ValueError otherwise."""
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


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


def format_timestamp(now: float) -> str:
    """Format an epoch time as RFC 3339 UTC, trailing zeros trimmed (as Go)."""
    moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += (".%06d" % moment.microsecond).rstrip("0")
    return text + "Z"


def parse_timestamp(text: str) -> float:
    """
    Parse an RFC 3339 timestamp to epoch seconds. Fractions finer than a
    microsecond (Go writes nanoseconds) are truncated. Raise ValueError.
    """
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError("not an RFC 3339 timestamp: %r" % (text,))
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7), match.group(8)
    microsecond = int((fraction or "0")[:6].ljust(6, "0"))
    if zone in ("Z", "z"):
        offset = datetime.timedelta(0)
    else:
        sign = -1 if zone[0] == "-" else 1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError("bad UTC offset: %r" % (zone,))
        offset = sign * datetime.timedelta(hours=hours, minutes=minutes)
    moment = datetime.datetime(
        year, month, day, hour, minute, second, microsecond,
        tzinfo=datetime.timezone(offset),
    )
    return moment.timestamp()


def _public_ec_jwk(candidate: object) -> Optional[dict]:
    """
    Return the public members of C{candidate} if it is an EC P-256 JWK
    (key order kty, crv, x, y), else None. Private members are dropped.
    """
    if not isinstance(candidate, dict):
        return None
    if candidate.get("kty") != "EC" or candidate.get("crv") != "P-256":
        return None
    x, y = candidate.get("x"), candidate.get("y")
    if not (isinstance(x, str) and isinstance(y, str)):
        return None
    return {"kty": "EC", "crv": "P-256", "x": x, "y": y}


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


@attr.s(frozen=True)
class MandateToken:
    """
    A verified mandate token.

    @ivar jwk: the signer's public JWK (kty, crv, x, y).
    @ivar client_id: the thumbprint client id (no session applied).
    @ivar uri: the endpoint the token was made for.
    @ivar timestamp: when it was made, epoch seconds.
    @ivar ttl: its lifetime in seconds, after capping to the verifier's limit.
    """

    jwk = attr.ib(type=dict)
    client_id = attr.ib(type=str)
    uri = attr.ib(type=str)
    timestamp = attr.ib(type=float)
    ttl = attr.ib(type=int)


def _endpoint(url: str) -> tuple:
    """
    Split an http(s)/ws(s) URL into (scheme family, host, port, path
    segments). Raise ValueError if it is not one.
    """
    parts = urlsplit(url)
    family = _SCHEME_FAMILY.get(parts.scheme.lower())
    if family is None:
        raise ValueError("unsupported scheme in %r" % (url,))
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValueError("no host in %r" % (url,))
    port = parts.port  # ValueError when out of range or not a number
    if port is None:
        port = _DEFAULT_PORTS[family]
    # Empty segments are dropped: "", "/" and "/tun/" name "/" and "/tun".
    segments = [s for s in parts.path.split("/") if s]
    if any(unquote(s) in (".", "..") for s in segments):
        raise ValueError("dot segment in %r" % (url,))
    return family, host, port, segments


class TokenVerifier:
    """
    Check mandate tokens for the proxy whose public endpoint is C{base_url}
    (or one of C{extra_bases}).

    @ivar clock_skew: seconds of disagreement between clocks we tolerate,
        both for expiry and for timestamps in the future.
    @ivar max_ttl: longer lifetimes are cut to this, bounding replay.
    """

    def __init__(
        self, base_url: str, clock_skew: float = 5.0, max_ttl: int = 3600,
        extra_bases: tuple = (),
    ) -> None:
        self.base_url = base_url
        self.clock_skew = clock_skew
        self.max_ttl = max_ttl
        # Other URLs clients may know this proxy by (an address, an
        # internal name); a token naming any of them is for this proxy.
        self._base_urls = (base_url, *extra_bases)
        self._bases = [_endpoint(url) for url in self._base_urls]

    def verify(self, token: str, now: float) -> MandateToken:
        """
        Verify C{token} at time C{now} (epoch seconds) and return what it
        says, or raise L{RegistrationRefused} with the reason.
        """
        jwk = self._check_header(token)
        payload = self._check_signature(token, jwk)
        uri, timestamp, ttl = self._check_payload(payload)
        if timestamp + ttl + self.clock_skew < now:
            raise RegistrationRefused(EXPIRED)
        if timestamp > now + self.clock_skew:
            raise RegistrationRefused(FUTURE)
        if not self.accepts_uri(uri):
            raise RegistrationRefused("%s: the token names %s; this proxy is %s" % (
                WRONG_ENDPOINT, uri[:200], " or ".join(self._base_urls)))
        return MandateToken(
            jwk=jwk,
            client_id=client_id_from_jwk(jwk),
            uri=uri,
            timestamp=timestamp,
            ttl=ttl,
        )

    def accepts_uri(self, uri: str) -> bool:
        """
        Whether C{uri} names this proxy: same scheme (ws~http, wss~https),
        host and effective port, and the base path is a segment-wise prefix
        of its path.
        """
        try:
            family, host, port, segments = _endpoint(uri)
        except ValueError:
            return False
        return any(
            family == base_family
            and host == base_host
            and port == base_port
            and segments[: len(base_segments)] == base_segments
            for base_family, base_host, base_port, base_segments in self._bases
        )

    def _check_header(self, token: object) -> dict:
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise RegistrationRefused(MALFORMED)
        parts = token.split(".")
        if len(parts) != 3:
            raise RegistrationRefused(MALFORMED)
        try:
            for part in parts[1:]:
                _b64url_decode(part)
            header = json.loads(_b64url_decode(parts[0]))
        # ValueError includes JSON and Unicode decoding errors; a header
        # nested deeper than the recursion limit raises RecursionError.
        except (ValueError, RecursionError):
            raise RegistrationRefused(MALFORMED) from None
        if not isinstance(header, dict):
            raise RegistrationRefused(MALFORMED)
        if header.get("alg") != "ES256":
            raise RegistrationRefused(
                "%s: %s" % (UNSUPPORTED_ALG, str(header.get("alg"))[:20])
            )
        jwk = _public_ec_jwk(header.get("jwk"))
        if jwk is None:
            raise RegistrationRefused(NO_JWK)
        return jwk

    def _check_signature(self, token: str, jwk: dict) -> bytes:
        try:
            key = _jwk.JWK(**jwk)
        except (JWException, ValueError) as exc:
            raise RegistrationRefused(
                "%s: invalid jwk: %s" % (VERIFY_FAILED, _short(exc))
            ) from None
        signed = _jws.JWS()
        signed.allowed_algs = ["ES256"]
        try:
            signed.deserialize(token)
            signed.verify(key, alg="ES256")
        except (JWException, ValueError) as exc:
            raise RegistrationRefused(
                "%s: %s" % (VERIFY_FAILED, _short(exc))
            ) from None
        return signed.payload

    def _check_payload(self, payload: bytes) -> tuple:
        try:
            claims = json.loads(payload)
        except (ValueError, RecursionError):
            raise RegistrationRefused(MALFORMED + ": payload is not JSON") from None
        if not isinstance(claims, dict):
            raise RegistrationRefused(MALFORMED + ": payload is not an object")
        kind = claims.get("@type", MANDATE_TOKEN_TYPE)
        if kind != MANDATE_TOKEN_TYPE:
            raise RegistrationRefused(MALFORMED + ": not a mandate token")
        uri = claims.get("uri")
        if not isinstance(uri, str):
            raise RegistrationRefused(MALFORMED + ": no uri")
        ttl = claims.get("ttl")
        if isinstance(ttl, float) and ttl.is_integer():
            ttl = int(ttl)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
            raise RegistrationRefused(MALFORMED + ": bad ttl")
        stamp = claims.get("@timestamp")
        if not isinstance(stamp, str):
            raise RegistrationRefused(MALFORMED + ": no @timestamp")
        try:
            timestamp = parse_timestamp(stamp)
        except (ValueError, OverflowError):
            raise RegistrationRefused(MALFORMED + ": bad @timestamp") from None
        return uri, timestamp, min(ttl, self.max_ttl)


def _short(exc: Exception) -> str:
    """
    jwcrypto's message without its appended verification log, e.g.
    "Verification failed for all signatures".
    """
    message = str(exc).split("[", 1)[0].strip()
    return message[:120] or type(exc).__name__
