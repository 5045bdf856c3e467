"""
Tests for L{brickchain_proxy.identity}: keys, client ids and mandate tokens,
checked against the vectors captured from the Go v1 implementation.
"""

import base64
import hashlib
import json
import os
import stat

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwcrypto import jwk as _jwk
from jwcrypto import jws as _jws
from twisted.trial.unittest import SynchronousTestCase

from brickchain_proxy.identity import (
    ClientKey,
    client_id_from_jwk,
    derive_client_id,
    rfc7638_input,
    session_client_id,
)
from brickchain_proxy.mandate_tokens import (
    DEFAULT_MAX_TTL,
    TOO_LONG,
    MandateToken,
    RegistrationRefused,
    TokenVerifier,
    signature_id,
)
from brickchain_proxy.timestamps import format_timestamp, parse_timestamp
from tests import protocol_vectors

BASE = "http://127.0.0.1:6519"
NOW = 1795000000.0


def _read_vector(name, mode="r"):
    """
    The vector file C{name} (L{tests.protocol_vectors}: C{tests/vectors/}
    or C{$BRICKCHAIN_VECTORS}), as text or, with C{mode="rb"}, bytes.
    """
    return protocol_vectors.read_vector(name, mode)


def _b64(data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _payload(uri=BASE, ttl=60, now=NOW, **extra):
    claims = {
        "@type": "https://schema.brickchain.com/v2/mandate-token.json",
        "@timestamp": format_timestamp(now),
        "uri": uri,
        "ttl": ttl,
    }
    claims.update(extra)
    return json.dumps(claims)


def _signed(key, header, payload):
    """
    Sign C{payload} (str or bytes) with C{key} under the protected C{header}
    (a dict), as a hostile or broken client might.
    """
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    token = _jws.JWS(payload)
    token.add_signature(
        _jwk.JWK.from_pyca(key._key), alg="ES256", protected=json.dumps(header)
    )
    return token.serialize(compact=True)


class ClientIdTests(SynchronousTestCase):
    """
    Client ids derived from keys, checked against the Go proxy's vectors.
    """

    def setUp(self):
        self.identity = json.loads(_read_vector("identity.json"))
        self.key = ClientKey.from_pem(_read_vector("client-key.pem", "rb"))

    def test_sec1_vector_key_gives_vector_public_jwk(self):
        """The SEC1 vector key's public JWK equals identity.json's."""
        self.assertEqual(self.key.public_jwk(), self.identity["public_jwk"])

    def test_public_jwk_member_order_is_kty_crv_x_y(self):
        """public_jwk lists its members in the order v1 headers use."""
        self.assertEqual(list(self.key.public_jwk()), ["kty", "crv", "x", "y"])

    def test_vector_key_client_id(self):
        """The vector key's client id is identity.json's clientID."""
        self.assertEqual(self.key.client_id, self.identity["clientID"])
        self.assertEqual(len(self.key.client_id), 52)

    def test_rfc7638_input_and_digest_match_vector(self):
        """The thumbprint input and its SHA-256 match identity.json."""
        text = rfc7638_input(self.identity["public_jwk"])
        self.assertEqual(text, self.identity["rfc7638_input"])
        self.assertEqual(
            hashlib.sha256(text.encode("ascii")).hexdigest(),
            self.identity["sha256_hex"],
        )

    def test_client_id_from_jwk_matches_vector(self):
        """client_id_from_jwk gives identity.json's clientID."""
        self.assertEqual(
            client_id_from_jwk(self.identity["public_jwk"]),
            self.identity["clientID"],
        )

    def test_session_client_id_matches_go_proxy(self):
        """A session id hashes the string client id with the session."""
        example = self.identity["session_example"]
        self.assertEqual(
            session_client_id(self.identity["clientID"], example["session"]),
            example["clientID"],
        )

    def test_derive_client_id_with_and_without_session(self):
        """derive_client_id applies a session only when it is non-empty."""
        jwk = self.identity["public_jwk"]
        example = self.identity["session_example"]
        self.assertEqual(derive_client_id(jwk, None), self.identity["clientID"])
        self.assertEqual(derive_client_id(jwk, ""), self.identity["clientID"])
        self.assertEqual(
            derive_client_id(jwk, example["session"]), example["clientID"]
        )

    def test_pkcs8_form_of_vector_key_gives_same_client_id(self):
        """The vector key re-serialized as PKCS#8 loads to the same id."""
        pem = self.key._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.assertIn(b"BEGIN PRIVATE KEY", pem)
        self.assertEqual(ClientKey.from_pem(pem).client_id, self.key.client_id)


class LoadOrCreateTests(SynchronousTestCase):
    """
    ClientKey.load_or_create keeps a key file on disk.
    """

    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "client.pem")

    def _write(self, data):
        with open(self.path, "wb") as f:
            f.write(data)

    def test_missing_file_is_created_private_sec1(self):
        """A missing key file is created with mode 0600 as SEC1 PEM."""
        key = ClientKey.load_or_create(self.path)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        with open(self.path, "rb") as f:
            self.assertTrue(f.read().startswith(b"-----BEGIN EC PRIVATE KEY-----"))
        self.assertEqual(ClientKey.load_or_create(self.path).client_id, key.client_id)

    def test_creation_leaves_no_temporary_files(self):
        """Creating a key leaves only the key file in its directory."""
        ClientKey.load_or_create(self.path)
        self.assertEqual(os.listdir(self.directory), ["client.pem"])

    def test_existing_file_is_loaded_not_replaced(self):
        """An existing key file is used as it is."""
        original = ClientKey.generate()
        self._write(original._sec1_pem())
        self.assertEqual(
            ClientKey.load_or_create(self.path).client_id, original.client_id
        )

    def test_garbage_file_is_value_error_naming_path(self):
        """A file that is not PEM is a ValueError that names the file."""
        self._write(b"this is not a key\n")
        exc = self.assertRaises(ValueError, ClientKey.load_or_create, self.path)
        self.assertIn(self.path, str(exc))

    def test_rsa_key_file_is_value_error(self):
        """An RSA key is refused with a ValueError."""
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._write(
            rsa_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        exc = self.assertRaises(ValueError, ClientKey.load_or_create, self.path)
        self.assertIn(self.path, str(exc))
        self.assertIn("EC", str(exc))

    def test_p384_key_is_value_error(self):
        """An EC key on a curve other than P-256 is refused."""
        pem = ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        exc = self.assertRaises(ValueError, ClientKey.from_pem, pem)
        self.assertIn("P-256", str(exc))

    def test_encrypted_key_is_value_error(self):
        """A password-protected key is refused with a ValueError."""
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        self.assertRaises(ValueError, ClientKey.from_pem, pem)


class VectorTokenTests(SynchronousTestCase):
    """
    The mandate token a Go v1 client sent is judged as v1 would.
    """

    def setUp(self):
        request = json.loads(_read_vector("registration-request.json"))
        decoded = json.loads(_read_vector("registration-request.decoded.json"))
        self.identity = json.loads(_read_vector("identity.json"))
        self.token = request["mandateToken"]
        self.timestamp = parse_timestamp(decoded["payload"]["@timestamp"])

    def test_go_token_verifies_for_its_proxy(self):
        """The Go client's token is accepted one second after it was made."""
        result = TokenVerifier(BASE).verify(self.token, now=self.timestamp + 1)
        self.assertEqual(result.client_id, self.identity["clientID"])
        self.assertEqual(result.jwk, self.identity["public_jwk"])
        self.assertEqual(result.uri, BASE)
        self.assertEqual(result.ttl, 60)

    def test_go_token_fits_the_default_lifetime_limit(self):
        """The Go client signs 60 s tokens: under the default limit, accepted at its edge."""
        self.assertLessEqual(60, DEFAULT_MAX_TTL)
        result = TokenVerifier(BASE, max_ttl=60).verify(
            self.token, now=self.timestamp + 60)
        self.assertEqual(result.expires_at, self.timestamp + 65)

    def test_go_token_has_a_signature_id(self):
        """The Go token's signature id is the hash of its signing input, r and the low s."""
        result = TokenVerifier(BASE).verify(self.token, now=self.timestamp + 1)
        self.assertEqual(result.signature_id, signature_id(self.token))
        self.assertRegex(result.signature_id, "^[0-9a-f]{64}$")

    def test_go_token_verifies_for_base_with_slash(self):
        """A trailing slash on the base URL makes no difference."""
        TokenVerifier(BASE + "/").verify(self.token, now=self.timestamp + 1)

    def test_go_token_expires_after_ttl_and_skew(self):
        """Past ttl plus clock skew the token has expired."""
        exc = self.assertRaises(
            RegistrationRefused,
            TokenVerifier(BASE).verify, self.token, now=self.timestamp + 70,
        )
        self.assertEqual(exc.reason, "Token has expired")
        self.assertEqual(str(exc), "Token has expired")

    def test_go_token_refused_by_other_proxy(self):
        """Another proxy refuses the token as not for its endpoint."""
        exc = self.assertRaises(
            RegistrationRefused,
            TokenVerifier("http://example.org").verify,
            self.token, now=self.timestamp + 1,
        )
        self.assertEqual(
            exc.reason, "Token not for this endpoint: the token names "
            "http://127.0.0.1:6519; this proxy is http://example.org")

    def test_sign_mandate_token_reproduces_go_header(self):
        """Our header is byte-for-byte the one the Go client writes."""
        key = ClientKey.from_pem(_read_vector("client-key.pem", "rb"))
        decoded = json.loads(_read_vector("registration-request.decoded.json"))
        header = key.sign_mandate_token(BASE, now=NOW).split(".")[0]
        self.assertEqual(header, _b64(decoded["header_b64_decoded_exact"]))
        self.assertEqual(header, self.token.split(".")[0])


class SignAndVerifyTests(SynchronousTestCase):
    """
    Tokens from ClientKey.sign_mandate_token and what TokenVerifier makes of
    broken or hostile variants.
    """

    def setUp(self):
        self.key = ClientKey.generate()
        self.verifier = TokenVerifier(BASE)

    def assertRefused(self, token, prefix, now=NOW + 1):
        """Assert C{token} is refused with a reason starting with C{prefix}."""
        exc = self.assertRaises(RegistrationRefused, self.verifier.verify, token, now)
        self.assertTrue(
            exc.reason.startswith(prefix), "%r is not %r" % (exc.reason, prefix)
        )
        return exc

    def test_round_trip(self):
        """A token we sign verifies and carries our key, uri and ttl."""
        token = self.key.sign_mandate_token(BASE, ttl=30, now=NOW)
        result = self.verifier.verify(token, NOW + 1)
        self.assertEqual(
            result,
            MandateToken(
                jwk=self.key.public_jwk(),
                client_id=self.key.client_id,
                uri=BASE,
                timestamp=NOW,
                ttl=30,
                signature_id=signature_id(token),
                expires_at=NOW + 30 + 5,
            ),
        )

    def test_signed_payload_layout(self):
        """The payload has @type, @timestamp, uri, ttl in that order."""
        token = self.key.sign_mandate_token(BASE, now=NOW + 0.25)
        payload = json.loads(
            base64.urlsafe_b64decode(token.split(".")[1] + "==")
        )
        self.assertEqual(list(payload), ["@type", "@timestamp", "uri", "ttl"])
        self.assertEqual(
            payload["@type"], "https://schema.brickchain.com/v2/mandate-token.json"
        )
        self.assertTrue(payload["@timestamp"].endswith(".25Z"))
        self.assertEqual(payload["ttl"], 60)

    def test_tampered_payload_fails_verification(self):
        """Changing the payload breaks the signature."""
        header, _, signature = self.key.sign_mandate_token(BASE, now=NOW).split(".")
        forged = _b64(_payload(uri="http://127.0.0.1:6519/other"))
        self.assertRefused(
            ".".join([header, forged, signature]), "failed to verify token: "
        )

    def test_tampered_signature_fails_verification(self):
        """Changing the signature breaks it."""
        header, payload, signature = self.key.sign_mandate_token(BASE, now=NOW).split(".")
        raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
        raw[10] ^= 1
        self.assertRefused(
            ".".join([header, payload, _b64(bytes(raw))]), "failed to verify token: "
        )

    def test_alg_none_is_refused(self):
        """An unsigned token (alg none) is never accepted."""
        header = {"alg": "none", "jwk": self.key.public_jwk()}
        token = "%s.%s." % (_b64(json.dumps(header)), _b64(_payload()))
        self.assertRefused(token, "unsupported algorithm")

    def test_other_alg_is_refused(self):
        """Only ES256 is accepted."""
        header = {"alg": "HS256", "jwk": self.key.public_jwk()}
        token = "%s.%s.%s" % (_b64(json.dumps(header)), _b64(_payload()), _b64("x"))
        self.assertRefused(token, "unsupported algorithm")

    def test_header_without_jwk_is_refused(self):
        """A token that does not embed its key is refused as v1 does."""
        token = _signed(self.key, {"alg": "ES256"}, _payload())
        self.assertRefused(token, "no jwk in token")

    def test_header_with_non_p256_jwk_is_refused(self):
        """An embedded key that is not EC P-256 counts as no jwk."""
        jwk = dict(self.key.public_jwk(), crv="P-384")
        token = _signed(self.key, {"alg": "ES256", "jwk": jwk}, _payload())
        self.assertRefused(token, "no jwk in token")

    def test_header_jwk_of_other_key_fails_verification(self):
        """A token signed by one key but naming another is refused."""
        other = ClientKey.generate()
        token = _signed(
            self.key, {"alg": "ES256", "jwk": other.public_jwk()}, _payload()
        )
        self.assertRefused(token, "failed to verify token: ")

    def test_header_jwk_not_on_curve_fails_verification(self):
        """An embedded key that is not a valid point is refused."""
        jwk = dict(self.key.public_jwk(), x=_b64(b"\x01" * 32))
        token = _signed(self.key, {"alg": "ES256", "jwk": jwk}, _payload())
        self.assertRefused(token, "failed to verify token: ")

    def test_private_members_in_header_jwk_are_ignored(self):
        """Only the public members of an embedded key are used."""
        jwk = dict(self.key.public_jwk(), d=_b64(b"\x02" * 32))
        token = _signed(self.key, {"alg": "ES256", "jwk": jwk}, _payload())
        result = self.verifier.verify(token, NOW + 1)
        self.assertEqual(result.jwk, self.key.public_jwk())

    def _token(self, payload):
        return _signed(
            self.key, {"alg": "ES256", "jwk": self.key.public_jwk()}, payload
        )

    def test_non_json_payload_is_malformed(self):
        """A signed payload that is not JSON is malformed."""
        self.assertRefused(self._token(b"\xffnot json"), "malformed token")

    def test_non_object_payload_is_malformed(self):
        """A signed JSON payload that is not an object is malformed."""
        self.assertRefused(self._token("[1, 2]"), "malformed token")

    def test_missing_uri_is_malformed(self):
        """A payload without uri is malformed."""
        claims = json.loads(_payload())
        del claims["uri"]
        self.assertRefused(self._token(json.dumps(claims)), "malformed token")

    def test_string_ttl_is_malformed(self):
        """A ttl given as a string is malformed."""
        self.assertRefused(self._token(_payload(ttl="60")), "malformed token")

    def test_non_positive_ttl_is_malformed(self):
        """A ttl of zero or less is malformed."""
        self.assertRefused(self._token(_payload(ttl=0)), "malformed token")
        self.assertRefused(self._token(_payload(ttl=-5)), "malformed token")

    def test_boolean_ttl_is_malformed(self):
        """A ttl of true is not a number of seconds."""
        self.assertRefused(self._token(_payload(ttl=True)), "malformed token")

    def test_bad_timestamp_is_malformed(self):
        """An @timestamp that is not RFC 3339 is malformed."""
        claims = json.loads(_payload())
        claims["@timestamp"] = "yesterday"
        self.assertRefused(self._token(json.dumps(claims)), "malformed token")

    def test_other_type_is_malformed(self):
        """A signed document of another @type is not a mandate token."""
        payload = _payload(**{"@type": "https://example.org/other.json"})
        self.assertRefused(self._token(payload), "malformed token")

    def test_two_part_token_is_malformed(self):
        """A token with two parts is malformed."""
        token = self.key.sign_mandate_token(BASE, now=NOW)
        self.assertRefused(token.rsplit(".", 1)[0], "malformed token")

    def test_garbage_is_malformed(self):
        """Random text is malformed."""
        self.assertRefused("not a token at all", "malformed token")
        self.assertRefused("a.b.c", "malformed token")
        self.assertRefused("{}.{}.{}", "malformed token")
        self.assertRefused("", "malformed token")

    def test_oversized_token_is_malformed(self):
        """A huge token is refused without being parsed."""
        self.assertRefused("a" * 100000 + ".b.c", "malformed token")

    def test_expiry_allows_clock_skew(self):
        """A token is still good up to ttl plus skew, and refused after."""
        token = self.key.sign_mandate_token(BASE, ttl=60, now=NOW)
        self.verifier.verify(token, NOW + 65)
        self.assertRefused(token, "Token has expired", now=NOW + 65.5)

    def test_ttl_over_the_limit_is_refused(self):
        """A ttl beyond max_ttl (120 s by default) is refused, saying both numbers."""
        token = self.key.sign_mandate_token(BASE, ttl=3600, now=NOW)
        exc = self.assertRefused(token, TOO_LONG)
        self.assertEqual(
            exc.reason, "token lifetime too long: ttl 3600 s; this proxy "
            "accepts at most 120 s")
        huge = self.key.sign_mandate_token(BASE, ttl=10**30, now=NOW)
        self.assertIn("over 10^9", self.assertRefused(huge, TOO_LONG).reason)

    def test_ttl_at_the_limit_is_accepted(self):
        """A ttl of exactly max_ttl verifies, and expires after it plus skew."""
        verifier = TokenVerifier(BASE, max_ttl=300)
        token = self.key.sign_mandate_token(BASE, ttl=300, now=NOW)
        self.assertEqual(verifier.verify(token, NOW + 305).expires_at, NOW + 305)
        self.assertRaises(RegistrationRefused, verifier.verify, token, NOW + 305.5)
        self.assertRaises(RegistrationRefused, TokenVerifier(BASE, max_ttl=299).verify,
                          token, NOW + 1)

    def test_each_signing_has_its_own_signature_id(self):
        """Two tokens signed alike (same key, payload, second) have different ids."""
        first = self.key.sign_mandate_token(BASE, now=NOW)
        second = self.key.sign_mandate_token(BASE, now=NOW)
        self.assertEqual(first.split(".")[:2], second.split(".")[:2])
        self.assertNotEqual(self.verifier.verify(first, NOW).signature_id,
                            self.verifier.verify(second, NOW).signature_id)

    def test_malleated_signature_keeps_its_id(self):
        """s turned into n - s still verifies, and names the same signature."""
        token = self.key.sign_mandate_token(BASE, now=NOW)
        header, payload, signature = token.split(".")
        raw = base64.urlsafe_b64decode(signature + "==")
        order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
        s = int.from_bytes(raw[32:], "big")
        flipped = raw[:32] + (order - s).to_bytes(32, "big")
        malleated = ".".join([header, payload, _b64(flipped)])
        self.assertNotEqual(malleated, token)
        self.assertEqual(self.verifier.verify(malleated, NOW).signature_id,
                         self.verifier.verify(token, NOW).signature_id)

    def test_reencoded_signature_keeps_its_id(self):
        """Other bits in the base64url's unused tail decode alike: the same id."""
        token = self.key.sign_mandate_token(BASE, now=NOW)
        head, last = token[:-1], token[-1]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        # 64 bytes take 86 characters: the last one carries 2 bits, and its
        # other 4 are unused.
        reencoded = head + alphabet[alphabet.index(last) ^ 1]
        self.assertNotEqual(reencoded, token)
        self.assertEqual(self.verifier.verify(reencoded, NOW).signature_id,
                         signature_id(token))

    def test_future_timestamp_is_refused(self):
        """A token made well after now is refused."""
        token = self.key.sign_mandate_token(BASE, now=NOW + 30)
        self.assertRefused(token, "token timestamp is in the future", now=NOW)

    def test_timestamp_within_skew_is_accepted(self):
        """A token a few seconds ahead of our clock is accepted."""
        token = self.key.sign_mandate_token(BASE, now=NOW + 4)
        self.verifier.verify(token, NOW)

    def test_jwk_without_required_members_is_value_error(self):
        """A JWK missing x cannot have a client id."""
        self.assertRaises(
            ValueError, client_id_from_jwk, {"kty": "EC", "crv": "P-256", "y": "a"}
        )

    def test_registration_refused_reason(self):
        """RegistrationRefused carries its reason as text."""
        exc = RegistrationRefused("Token has expired")
        self.assertEqual(exc.reason, "Token has expired")
        self.assertEqual(str(exc), "Token has expired")


class TimestampTests(SynchronousTestCase):
    """
    RFC 3339 timestamps as Go writes them and as others may.
    """

    def test_nanoseconds_are_truncated(self):
        """Go's nanosecond fraction is read to the microsecond."""
        self.assertEqual(
            parse_timestamp("2026-11-24T15:14:31.624252637Z"),
            parse_timestamp("2026-11-24T15:14:31.624252Z"),
        )

    def test_offsets_are_applied(self):
        """A numeric offset names the same instant as its UTC form."""
        self.assertEqual(
            parse_timestamp("2026-11-24T17:14:31+02:00"),
            parse_timestamp("2026-11-24T15:14:31Z"),
        )

    def test_format_round_trips(self):
        """format_timestamp writes what parse_timestamp reads back."""
        self.assertEqual(format_timestamp(NOW), "2026-11-18T11:06:40Z")
        self.assertEqual(parse_timestamp(format_timestamp(NOW + 0.5)), NOW + 0.5)

    def test_missing_zone_is_value_error(self):
        """A timestamp without a zone is not RFC 3339."""
        self.assertRaises(ValueError, parse_timestamp, "2026-11-24T15:14:31")


class UriMatchingTests(SynchronousTestCase):
    """
    Which token uris belong to a proxy's base URL.
    """

    def assertMatches(self, base, uri, expected=True):
        """Assert whether C{uri} belongs to C{base}."""
        self.assertEqual(
            TokenVerifier(base).accepts_uri(uri), expected, "%s vs %s" % (base, uri)
        )

    def test_host_is_case_insensitive(self):
        """Host names compare without regard to case; "/" is the root."""
        self.assertMatches("http://proxy.example:6519", "http://PROXY.example:6519/")

    def test_scheme_must_match(self):
        """An https proxy does not accept an http uri, nor the reverse."""
        self.assertMatches("https://h", "http://h", False)
        self.assertMatches("http://h", "https://h", False)
        self.assertMatches("http://h", "ftp://h", False)

    def test_default_port_is_explicit_port(self):
        """http://h and http://h:80 are the same endpoint."""
        self.assertMatches("http://h", "http://h:80")
        self.assertMatches("https://h:443", "wss://h")
        self.assertMatches("http://h", "http://h:8080", False)

    def test_websocket_schemes_match_http_ones(self):
        """ws is http's family and wss https's."""
        self.assertMatches("http://h:6519", "ws://h:6519")
        self.assertMatches("https://h", "wss://h/")
        self.assertMatches("https://h", "ws://h", False)

    def test_path_prefix_is_segment_wise(self):
        """Base path /tun covers /tun and /tun/x but not /tunnel."""
        self.assertMatches("http://h/tun", "http://h/tun")
        self.assertMatches("http://h/tun", "http://h/tun/x")
        self.assertMatches("http://h/tun/", "http://h/tun")
        self.assertMatches("http://h/tun", "http://h/tunnel", False)
        self.assertMatches("http://h/tun", "http://h/", False)

    def test_root_base_matches_every_path(self):
        """A base without a path accepts any path on that host."""
        self.assertMatches("http://h", "http://h/anything/at/all")
        self.assertMatches("http://h/", "http://h")

    def test_other_host_is_refused(self):
        """Another host, or a host merely prefixed by ours, is refused."""
        self.assertMatches("http://h", "http://h.evil.example", False)
        self.assertMatches("http://127.0.0.1:6519", "http://127.0.0.1:65190", False)

    def test_dot_segments_are_refused(self):
        """A uri that climbs out of the base path is refused."""
        self.assertMatches("http://h/tun", "http://h/tun/../other", False)

    def test_unparseable_uri_is_refused(self):
        """A uri without a host or with a bad port is refused."""
        self.assertMatches("http://h", "not a url", False)
        self.assertMatches("http://h", "http://h:99999", False)

    def test_bad_base_url_is_value_error(self):
        """A verifier needs an http(s) or ws(s) base URL with a host."""
        self.assertRaises(ValueError, TokenVerifier, "localhost:6519")
        self.assertRaises(ValueError, TokenVerifier, "http://")


class ExtraBaseTests(SynchronousTestCase):
    """
    A proxy known by several URLs accepts tokens naming any of them.
    """

    def test_token_for_an_extra_base_is_accepted(self):
        """A token naming the second base verifies; one naming neither does not."""
        key = ClientKey.generate()
        verifier = TokenVerifier("https://proxy.example.io",
                                 extra_bases=("http://10.0.0.5:6519",))
        now = 1_800_000_000.0
        for uri in ("https://proxy.example.io", "http://10.0.0.5:6519"):
            token = key.sign_mandate_token(uri, now=now)
            self.assertEqual(verifier.verify(token, now=now).client_id, key.client_id)
        token = key.sign_mandate_token("http://10.0.0.6:6519", now=now)
        with self.assertRaises(RegistrationRefused) as caught:
            verifier.verify(token, now=now)
        self.assertEqual(
            caught.exception.reason, "Token not for this endpoint: the token "
            "names http://10.0.0.6:6519; this proxy is https://proxy.example.io "
            "or http://10.0.0.5:6519")

