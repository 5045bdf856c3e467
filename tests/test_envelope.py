"""
The cross-instance envelope codec: every kind round-trips byte-exact with
its raw message untouched, the bytes are those other instances already
speak, and anything malformed raises L{EnvelopeError} and nothing else
(checked with Hypothesis, as the message codec is).
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from brickchain_proxy.bus import envelope
from brickchain_proxy.bus.envelope import (
    Answer,
    EnvelopeError,
    Failed,
    Frame,
    Probe,
    Request,
    TakenOver,
    Teardown,
)
from tests.support_hypothesis import BASE_SETTINGS

FUZZ = settings(BASE_SETTINGS, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow])

CLIENT = "c" * 52
RAW = b'{"@type":"x"}\n\x00\xff'


class EnvelopeCodecTests(SynchronousTestCase):
    """
    One encode/decode pair for every kind of envelope.
    """

    def assertRoundTrip(self, value, data):
        self.assertEqual(envelope.encode(value), data)
        self.assertEqual(envelope.decode(data), value)

    def test_every_kind_has_the_established_layout(self):
        """The bytes are exactly those instances of earlier releases send and read."""
        self.assertRoundTrip(Request(CLIENT, "inst-a", "m-1", RAW),
                             b"R\n" + CLIENT.encode() + b"\ninst-a\nm-1\n" + RAW)
        self.assertRoundTrip(Frame(CLIENT, RAW), b"S\n" + CLIENT.encode() + b"\n" + RAW)
        self.assertRoundTrip(Teardown(CLIENT, "s-1", RAW),
                             b"T\n" + CLIENT.encode() + b"\ns-1\n" + RAW)
        self.assertRoundTrip(Answer(RAW), b"A\n" + RAW)
        self.assertRoundTrip(Failed("m-1", "gone \u2013 really"),
                             "F\nm-1\ngone \u2013 really".encode("utf-8"))
        self.assertRoundTrip(TakenOver(CLIENT, "inst-b"),
                             b"K\n" + CLIENT.encode() + b"\ninst-b")
        self.assertRoundTrip(Probe(), b"P")

    def test_raw_message_with_newlines_is_carried_untouched(self):
        """Newlines inside the raw message are not field separators."""
        raw = b"\n\nR\nS\n"
        self.assertEqual(envelope.decode(envelope.encode(Request("a", "b", "c", raw))).raw, raw)
        self.assertEqual(envelope.decode(envelope.encode(Answer(raw))).raw, raw)

    def test_fields_that_cannot_be_carried_are_refused(self):
        """A header field with a newline, non-ASCII or empty is refused on encode."""
        for bad in ("a\nb", "\u00e9", ""):
            self.assertRaises(EnvelopeError, envelope.encode, Frame(bad, RAW))
        self.assertRaises(EnvelopeError, envelope.encode, Frame(CLIENT, "not bytes"))
        self.assertRaises(EnvelopeError, envelope.encode, object())

    def test_malformed_bytes_are_refused(self):
        """Unknown kinds, missing fields, empty or non-ASCII fields are EnvelopeError."""
        for data in (b"", b"Z\nx", b"R\na\nb", b"S\nonly", b"A", b"Ax", b"PP",
                     b"K\n\nb", b"T\n\xff\ns\nraw", "A\nx"):
            self.assertRaises(EnvelopeError, envelope.decode, data)


_ids = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
               max_size=60)
_envelopes = st.one_of(
    st.builds(Request, _ids, _ids, _ids, st.binary()),
    st.builds(Frame, _ids, st.binary()),
    st.builds(Teardown, _ids, _ids, st.binary()),
    st.builds(Answer, st.binary()),
    st.builds(Failed, _ids, st.text()),
    st.builds(TakenOver, _ids, _ids),
    st.just(Probe()),
)


class EnvelopeFuzzTests(SynchronousTestCase):
    """
    Properties over random envelopes and random bytes.
    """

    @FUZZ
    @given(_envelopes)
    def test_every_envelope_round_trips(self, value):
        """decode(encode(e)) == e for every valid envelope."""
        self.assertEqual(envelope.decode(envelope.encode(value)), value)

    @FUZZ
    @given(st.binary(max_size=200))
    def test_random_bytes_decode_or_raise_envelope_error(self, data):
        """Any bytes either decode to an envelope that re-encodes to them, or raise EnvelopeError."""
        try:
            value = envelope.decode(data)
        except EnvelopeError:
            return
        if type(value) is not Failed:
            self.assertEqual(envelope.encode(value), data)

    @FUZZ
    @given(_envelopes, st.integers(min_value=0, max_value=200), st.binary(max_size=3))
    def test_mutated_envelopes_decode_or_raise_envelope_error(self, value, at, junk):
        """A valid envelope with bytes spliced in decodes or raises EnvelopeError, nothing else."""
        data = envelope.encode(value)
        at = min(at, len(data))
        try:
            envelope.decode(data[:at] + junk + data[at:])
        except EnvelopeError:
            pass
