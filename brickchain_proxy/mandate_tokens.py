"""
Mandate tokens, the proxy's side: checking the token a client registers with.

A mandate token is a compact JWS (ES256) whose protected header embeds the
signer's EC P-256 public key and whose payload names the proxy endpoint, a
timestamp and a time-to-live (L{brickchain_proxy.identity.ClientKey} makes
them). L{TokenVerifier} checks one and returns a L{MandateToken}, or raises
L{RegistrationRefused} carrying the plain-text reason the proxy sends back
(in v1's wording where v1 has one).

A verified token also carries its L{MandateToken.signature_id}, which names
the signature whatever its encoding (ECDSA's C{s} and C{n - s} both verify),
so that a replay guard (L{brickchain_proxy.replay}) can refuse a token used
twice, and L{MandateToken.expires_at}, until when it must remember it.

This module knows nothing about websockets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Optional
from urllib.parse import unquote, urlsplit

import attr
from jwcrypto import jwk as _jwk
from jwcrypto import jws as _jws
from jwcrypto.common import JWException

from .identity import MANDATE_TOKEN_TYPE, client_id_from_jwk
from .timestamps import parse_timestamp

#: Refusal reasons. The first four are v1's exact wording (Go clients log them).
EXPIRED = "Token has expired"
WRONG_ENDPOINT = "Token not for this endpoint"
NO_JWK = "no jwk in token"
VERIFY_FAILED = "failed to verify token"
MALFORMED = "malformed token"
UNSUPPORTED_ALG = "unsupported algorithm"
FUTURE = "token timestamp is in the future"
TOO_LONG = "token lifetime too long"

#: Longest token lifetime (ttl) accepted by default, in seconds: clients
#: (ours and Go's) sign tokens of 60 s, one for every registration.
DEFAULT_MAX_TTL = 120

# The order of the P-256 group: a signature's s and N - s both verify.
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

#: Longest mandate token we look at; a real one is about 450 characters.
MAX_TOKEN_LENGTH = 8192

_B64URL = re.compile(r"\A[A-Za-z0-9_-]*\Z")
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


def _b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url strictly; raise ValueError otherwise."""
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


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


@attr.s(frozen=True)
class MandateToken:
    """
    A verified mandate token.

    @ivar jwk: the signer's public JWK (kty, crv, x, y).
    @ivar client_id: the thumbprint client id (no session applied).
    @ivar uri: the endpoint the token was made for.
    @ivar timestamp: when it was made, epoch seconds.
    @ivar ttl: its lifetime in seconds (at most the verifier's C{max_ttl}).
    @ivar signature_id: names this signature (hex), the same for every
        encoding of it that verifies; L{None} when not verified here.
    @ivar expires_at: epoch seconds after which the verifier refuses it
        (its timestamp, ttl and the clock skew allowed), or L{None}.
    """

    jwk = attr.ib(type=dict)
    client_id = attr.ib(type=str)
    uri = attr.ib(type=str)
    timestamp = attr.ib(type=float)
    ttl = attr.ib(type=int)
    signature_id = attr.ib(default=None)
    expires_at = attr.ib(default=None)


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
    @ivar max_ttl: tokens with a longer lifetime are refused
        (L{TOO_LONG}): a token can be presented for at most this long (plus
        the clock skew), which bounds how long a replay guard remembers it.
    """

    def __init__(
        self, base_url: str, clock_skew: float = 5.0,
        max_ttl: int = DEFAULT_MAX_TTL, extra_bases: tuple = (),
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
        expires_at = timestamp + ttl + self.clock_skew
        if expires_at < now:
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
            signature_id=signature_id(token),
            expires_at=expires_at,
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
        if ttl > self.max_ttl:
            raise RegistrationRefused("%s: ttl %s s; this proxy accepts at most %d s" % (
                TOO_LONG, ttl if ttl < 10**9 else "over 10^9", self.max_ttl))
        return uri, timestamp, ttl


def signature_id(token: str) -> str:
    """
    A name for the signature of the compact ES256 JWS C{token} (verified):
    the SHA-256, in hex, of its signing input, the signature's C{r} and the
    lower of C{s} and C{n - s}.  Whoever holds a token can turn C{s} into
    C{n - s}, or re-encode the base64url's unused bits, and the signature
    still verifies; the name stays the same.
    """
    signing_input, _, encoded = token.rpartition(".")
    raw = _b64url_decode(encoded)
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    s = min(s, _P256_ORDER - s)
    digest = hashlib.sha256(signing_input.encode("ascii"))
    digest.update(b".")
    digest.update(r)
    digest.update(s.to_bytes(32, "big"))
    return digest.hexdigest()


def _short(exc: Exception) -> str:
    """
    jwcrypto's message without its appended verification log, e.g.
    "Verification failed for all signatures".
    """
    message = str(exc).split("[", 1)[0].strip()
    return message[:120] or type(exc).__name__
