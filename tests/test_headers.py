"""
Tests for L{brickchain_proxy.headers}: header names as Go writes them, and
what may cross the tunnel in each direction.
"""

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from brickchain_proxy.headers import (
    add_forwarded_headers,
    canonical_name,
    decode_value,
    headers_to_wire,
    is_hop_by_hop,
    wire_to_pairs,
)


def pairs(wire, drop=frozenset()):
    """
    L{wire_to_pairs} as a dict, for comparing.
    """
    return dict(wire_to_pairs(wire, drop))


class CanonicalNameTests(SynchronousTestCase):
    """
    L{canonical_name} matches Go's C{textproto.CanonicalMIMEHeaderKey}.
    """

    def test_each_word_is_capitalised(self):
        """
        The first letter and every letter after a hyphen is upper case.
        """
        self.assertEqual(canonical_name("x-forwarded-for"), "X-Forwarded-For")

    def test_the_rest_is_lower_case(self):
        """
        Upper-case letters inside a word are lowered, so C{WWW-Authenticate}
        becomes C{Www-Authenticate} as in Go.
        """
        self.assertEqual(canonical_name("WWW-AUTHENTICATE"), "Www-Authenticate")
        self.assertEqual(canonical_name("Content-MD5"), "Content-Md5")

    def test_short_names(self):
        """
        A one-word name is capitalised like any other (C{te} -> C{Te}).
        """
        self.assertEqual(canonical_name("te"), "Te")
        self.assertEqual(canonical_name("TE"), "Te")

    def test_canonical_name_is_unchanged(self):
        """
        A name already in canonical form comes back the same.
        """
        self.assertEqual(canonical_name("Content-Type"), "Content-Type")


class HopByHopTests(SynchronousTestCase):
    """
    L{is_hop_by_hop} names what a proxy must not forward.
    """

    def test_rfc7230_headers(self):
        """
        The RFC 7230 connection-level headers are hop-by-hop.
        """
        for name in ["connection", "keep-alive", "te", "trailer",
                     "transfer-encoding", "upgrade", "proxy-connection"]:
            with self.subTest(name=name):
                self.assertTrue(is_hop_by_hop(name))

    def test_every_proxy_header(self):
        """
        Every C{Proxy-*} header stays with this hop.
        """
        self.assertTrue(is_hop_by_hop("proxy-authorization"))
        self.assertTrue(is_hop_by_hop("proxy-anything"))

    def test_end_to_end_headers(self):
        """
        Ordinary headers are forwarded.
        """
        self.assertFalse(is_hop_by_hop("content-type"))
        self.assertFalse(is_hop_by_hop("authorization"))


class HeadersToWireTests(SynchronousTestCase):
    """
    L{headers_to_wire}: Twisted headers of a visitor's request (or a local
    service's response) to the wire's JSON object.
    """

    def test_names_are_canonical(self):
        """
        Names go on the wire in Go's canonical form.
        """
        wire = headers_to_wire(Headers({b"x-forwarded-for": [b"10.0.0.1"],
                                        b"WWW-Authenticate": [b"Basic"]}))

        self.assertEqual(wire, {"X-Forwarded-For": "10.0.0.1",
                                "Www-Authenticate": "Basic"})

    def test_hop_by_hop_headers_are_dropped(self):
        """
        Connection-level headers, including every C{Proxy-*}, stay behind.
        """
        wire = headers_to_wire(Headers({
            b"Connection": [b"keep-alive"],
            b"Keep-Alive": [b"timeout=5"],
            b"TE": [b"trailers"],
            b"Trailer": [b"Expires"],
            b"Transfer-Encoding": [b"chunked"],
            b"Upgrade": [b"h2c"],
            b"Proxy-Authorization": [b"Basic x"],
            b"Proxy-Connection": [b"keep-alive"],
            b"Proxy-Whatever": [b"1"],
            b"Accept": [b"*/*"],
        }))

        self.assertEqual(wire, {"Accept": "*/*"})

    def test_headers_listed_in_connection_are_dropped(self):
        """
        A header the Connection header names is hop-by-hop too.
        """
        wire = headers_to_wire(Headers({
            b"Connection": [b"close, X-Hop", b"x-other"],
            b"X-Hop": [b"1"],
            b"X-Other": [b"2"],
            b"X-Kept": [b"3"],
        }))

        self.assertEqual(wire, {"X-Kept": "3"})

    def test_drop_leaves_out_named_headers(self):
        """
        Names given in C{drop} (lower case) are left out.
        """
        wire = headers_to_wire(
            Headers({b"Host": [b"example.com"], b"Accept": [b"*/*"]}),
            drop=frozenset(["host"]),
        )

        self.assertEqual(wire, {"Accept": "*/*"})

    def test_several_values_are_joined_with_commas(self):
        """
        Without C{multi-header}, several values travel as one string joined
        with C{", "}.
        """
        wire = headers_to_wire(Headers({b"Accept": [b"text/html", b"*/*"]}))

        self.assertEqual(wire, {"Accept": "text/html, */*"})

    def test_several_cookies_are_joined_with_semicolons(self):
        """
        Cookie values are joined with C{"; "}, the Cookie header's own
        separator.
        """
        wire = headers_to_wire(Headers({b"Cookie": [b"a=1", b"b=2"]}))

        self.assertEqual(wire, {"Cookie": "a=1; b=2"})

    def test_multi_keeps_every_value_in_a_list(self):
        """
        Under C{multi-header}, several values stay a list in order; a single
        value stays a string.
        """
        wire = headers_to_wire(
            Headers({b"Set-Cookie": [b"a=1", b"b=2"], b"Accept": [b"*/*"]}),
            multi=True,
        )

        self.assertEqual(wire, {"Set-Cookie": ["a=1", "b=2"], "Accept": "*/*"})

    def test_utf8_values_are_decoded(self):
        """
        A value that is valid UTF-8 is read as UTF-8.
        """
        wire = headers_to_wire(Headers({b"X-Name": ["café".encode("utf-8")]}))

        self.assertEqual(wire, {"X-Name": "café"})

    def test_non_utf8_values_fall_back_to_latin1(self):
        """
        A value that is not UTF-8 is read as Latin-1, so no byte is lost.
        """
        wire = headers_to_wire(Headers({b"X-Name": [b"caf\xe9 \xff"]}))

        self.assertEqual(wire, {"X-Name": "caf\xe9 \xff"})
        self.assertEqual(wire["X-Name"].encode("latin-1"), b"caf\xe9 \xff")

    def test_decode_value(self):
        """
        L{decode_value} prefers UTF-8 and falls back to Latin-1.
        """
        self.assertEqual(decode_value("ü".encode("utf-8")), "ü")
        self.assertEqual(decode_value(b"\xfc"), "ü")


class WireToPairsTests(SynchronousTestCase):
    """
    L{wire_to_pairs}: headers from the wire to bytes for Twisted.
    """

    def test_values_are_utf8_bytes(self):
        """
        Names and values come out as bytes, each value in a list.
        """
        self.assertEqual(
            pairs({"Content-Type": "text/plain", "X-Name": "café"}),
            {b"Content-Type": [b"text/plain"],
             b"X-Name": ["café".encode("utf-8")]},
        )

    def test_hop_by_hop_headers_are_dropped(self):
        """
        Connection-level headers and every C{Proxy-*} header from the tunnel
        are not passed on.
        """
        self.assertEqual(
            pairs({
                "Connection": "keep-alive",
                "Keep-Alive": "timeout=5",
                "Te": "trailers",
                "Transfer-Encoding": "chunked",
                "Upgrade": "websocket",
                "Proxy-Authenticate": "Basic",
                "Proxy-Whatever": "1",
                "Content-Type": "text/plain",
            }),
            {b"Content-Type": [b"text/plain"]},
        )

    def test_headers_listed_in_connection_are_dropped(self):
        """
        A header the Connection header names is not passed on.
        """
        self.assertEqual(
            pairs({"Connection": "close, X-Hop", "X-Hop": "1", "X-Kept": "2"}),
            {b"X-Kept": [b"2"]},
        )

    def test_connection_as_a_list_still_names_hop_headers(self):
        """
        Under C{multi-header} a Connection value may be a list; every header
        it names is still dropped, whatever the spelling of its name.
        """
        self.assertEqual(
            pairs({"Connection": ["close", "X-Hop"], "X-Hop": "1", "X-Kept": "2"}),
            {b"X-Kept": [b"2"]},
        )
        self.assertEqual(
            pairs({"connection": "X-Hop", "X-Hop": "1", "X-Kept": "2"}),
            {b"X-Kept": [b"2"]},
        )

    def test_drop_leaves_out_named_headers(self):
        """
        Names given in C{drop} (lower case) are left out, whatever their case
        on the wire.
        """
        self.assertEqual(
            pairs({"Content-Length": "5", "content-length": "5",
                   "Content-Type": "text/plain"},
                  drop=frozenset(["content-length"])),
            {b"Content-Type": [b"text/plain"]},
        )

    def test_lists_keep_every_value(self):
        """
        A list value (C{multi-header}) gives every value, in order.
        """
        self.assertEqual(
            pairs({"Set-Cookie": ["a=1", "b=2"]}),
            {b"Set-Cookie": [b"a=1", b"b=2"]},
        )

    def test_cr_and_lf_are_removed_from_values(self):
        """
        CR and LF in a value cannot inject headers: they become spaces.
        """
        result = pairs({"X-Inject": "a\r\nSet-Cookie: evil",
                        "X-List": ["b\nc", "d\re"]})

        self.assertEqual(result, {b"X-Inject": [b"a  Set-Cookie: evil"],
                                  b"X-List": [b"b c", b"d e"]})

    def test_invalid_header_names_are_skipped(self):
        """
        A name that is not an HTTP token (empty, spaces, separators, CR/LF,
        non-ASCII) is left out rather than sent.
        """
        self.assertEqual(
            pairs({
                "": "1",
                "Bad Name": "2",
                "X(y)": "3",
                "X-Evil\r\nSet-Cookie": "4",
                "X-Ümlaut": "5",
                "X:Colon": "6",
                "X-Good_Name.1": "7",
            }),
            {b"X-Good_Name.1": [b"7"]},
        )


class ForwardedHeaderTests(SynchronousTestCase):
    """
    X-Forwarded-* describe the visitor's hop, or keep a trusted balancer's.
    """

    def request(self):
        from twisted.internet.address import IPv4Address
        from twisted.web.test.requesthelper import DummyRequest

        request = DummyRequest([b""])
        request.client = IPv4Address("TCP", "203.0.113.7", 40000)
        request.requestHeaders.setRawHeaders(b"host", [b"abc.example.io"])
        request.isSecure = lambda: False
        return request

    def test_visitor_supplied_proto_is_replaced_by_default(self):
        """A visitor cannot claim https over a plain connection."""
        headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.test",
                   "X-Forwarded-For": "10.0.0.1"}
        add_forwarded_headers(self.request(), headers)
        self.assertEqual(headers["X-Forwarded-Proto"], "http")
        self.assertEqual(headers["X-Forwarded-Host"], "abc.example.io")
        self.assertEqual(headers["X-Forwarded-For"], "10.0.0.1, 203.0.113.7")

    def test_trusted_balancer_headers_are_kept(self):
        """Behind a trusted TLS-terminating balancer its Proto and Host stay."""
        headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "abc.example.io"}
        add_forwarded_headers(self.request(), headers, trust_forwarded=True)
        self.assertEqual(headers["X-Forwarded-Proto"], "https")
        self.assertEqual(headers["X-Forwarded-Host"], "abc.example.io")
        self.assertEqual(headers["X-Forwarded-For"], "203.0.113.7")

    def test_trusted_mode_still_fills_missing_headers(self):
        """Trusting the balancer does not leave the headers out when it sent none."""
        headers = {}
        add_forwarded_headers(self.request(), headers, trust_forwarded=True)
        self.assertEqual(headers["X-Forwarded-Proto"], "http")
        self.assertEqual(headers["X-Forwarded-Host"], "abc.example.io")
