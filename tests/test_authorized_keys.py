"""
Tests of C{--authorized-keys}: the file's syntax, who may register, and
reloading the file (SIGHUP) while tunnels are connected.

The end-to-end tests run a real proxy on a loopback port with a real tunnel
client (which retries refused registrations with backoff) or a raw websocket
client that shows exactly what the proxy sends.
"""

import os

from jwcrypto.jwk import JWK
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from brickchain_proxy.client.service import TunnelClientService
from brickchain_proxy.identity import ClientKey, session_client_id
from brickchain_proxy.proxy.authorized import (
    NOT_AUTHORIZED,
    AuthorizedKeys,
    jwk_thumbprint,
    parse_authorized_keys,
)
from brickchain_proxy.proxy.service import ProxyService
from tests.support import (
    RecordingResource,
    events_like,
    start_local_service,
    start_proxy,
    stop_client,
    visitor,
    wait_until,
)
from tests.support_ws import connect_raw_tunnel

# -- helpers ------------------------------------------------------------------


def write_file(path, text):
    """
    Replace the file at C{path} with C{text}.
    """
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# -- the file -----------------------------------------------------------------

CLIENT_ID = "a" * 52
THUMBPRINT = "Ab-_" + "x" * 39


class ParseTests(SynchronousTestCase):
    """
    L{parse_authorized_keys} reads clientIDs and thumbprints, one per line.
    """

    def test_client_ids_and_thumbprints_are_entries(self):
        """
        52-character base32 clientIDs and 43-character base64url thumbprints
        are both accepted.
        """
        self.assertEqual(
            parse_authorized_keys(CLIENT_ID + "\n" + THUMBPRINT + "\n"),
            frozenset([CLIENT_ID, THUMBPRINT]))

    def test_comments_blank_lines_and_whitespace_are_ignored(self):
        """
        C{#} starts a comment, on its own line or after an entry; blank lines
        and surrounding spaces do not count.
        """
        text = ("# who may register\n\n   \n"
                "  {}   # the laptop\n"
                "\t{}\t\n"
                "#{}\n").format(CLIENT_ID, THUMBPRINT, "b" * 52)
        self.assertEqual(parse_authorized_keys(text),
                         frozenset([CLIENT_ID, THUMBPRINT]))

    def test_empty_file_allows_nobody(self):
        """
        A file with nothing but comments yields no entries.
        """
        self.assertEqual(parse_authorized_keys("# nobody yet\n"), frozenset())

    def test_client_ids_are_case_insensitive(self):
        """
        A clientID written in upper case matches the lower-case hostname form.
        """
        self.assertEqual(parse_authorized_keys(CLIENT_ID.upper()),
                         frozenset([CLIENT_ID]))

    def test_thumbprints_keep_their_case(self):
        """
        base64url is case-sensitive: a thumbprint is kept as written.
        """
        thumbprint = "ABCdef" + "g" * 37
        self.assertEqual(parse_authorized_keys(thumbprint), frozenset([thumbprint]))

    def test_junk_is_refused_with_its_line_number(self):
        """
        The first line that is neither names its line number and content.
        """
        text = "# header\n{}\n\nnot-a-key\n".format(CLIENT_ID)
        error = self.assertRaises(ValueError, parse_authorized_keys, text)
        self.assertIn("line 4", str(error))
        self.assertIn("'not-a-key'", str(error))

    def test_wrong_lengths_and_alphabets_are_refused(self):
        """
        A clientID one character short, a clientID with a non-base32 digit, a
        thumbprint with C{+} or C{=}, and a non-ASCII thumbprint are refused.
        """
        for junk in ["a" * 51, "a" * 51 + "1", "a" * 53, "+" + "x" * 42,
                     "x" * 42 + "=", "é" + "x" * 42]:
            error = self.assertRaises(ValueError, parse_authorized_keys,
                                      "\n" + junk)
            self.assertIn("line 2", str(error), junk)

    def test_jwk_thumbprint_is_rfc_7638(self):
        """
        L{jwk_thumbprint} agrees with jwcrypto's RFC 7638 thumbprint, and its
        output is itself a valid entry.
        """
        jwk = ClientKey.generate().public_jwk()
        thumbprint = jwk_thumbprint(jwk)
        self.assertEqual(thumbprint, JWK(**jwk).thumbprint())
        self.assertEqual(parse_authorized_keys(thumbprint), frozenset([thumbprint]))


class LoadTests(SynchronousTestCase):
    """
    L{AuthorizedKeys.load} reads the file and keeps the old entries when it
    cannot.
    """

    def test_load_then_reload_with_junk_keeps_the_entries(self):
        """
        A reload that fails raises and leaves the previous entries in force.
        """
        path = self.mktemp()
        write_file(path, CLIENT_ID + "\n")
        keys = AuthorizedKeys(path)
        keys.load()
        write_file(path, "junk\n")
        self.assertRaises(ValueError, keys.load)
        os.remove(path)
        self.assertRaises(OSError, keys.load)
        self.assertEqual(keys.entries, frozenset([CLIENT_ID]))

    def test_key_is_allowed_by_client_id_thumbprint_or_base_id(self):
        """
        A key is allowed when its clientID, its thumbprint, or (for a session
        clientID) its key's own clientID is listed.
        """
        key = ClientKey.generate()
        session_id = session_client_id(key.client_id, "s1")
        jwk = key.public_jwk()
        keys = AuthorizedKeys("unused")
        for entry in [key.client_id, jwk_thumbprint(jwk)]:
            keys.entries = frozenset([entry])
            self.assertTrue(keys.allows(key.client_id, key.client_id, jwk))
            self.assertTrue(keys.allows(session_id, key.client_id, jwk))
        keys.entries = frozenset([session_id])
        self.assertTrue(keys.allows(session_id, key.client_id, jwk))
        self.assertFalse(keys.allows(key.client_id, key.client_id, jwk))
        keys.entries = frozenset([ClientKey.generate().client_id])
        self.assertFalse(keys.allows(key.client_id, key.client_id, jwk))


# -- end to end -----------------------------------------------------------------


class _ProxyFixture:
    """
    A recording local service, a log capture, an authorized-keys file, and
    helpers to start a proxy using it and clients with keys made in advance.
    """

    timeout = 30

    def setUp(self):
        self.local = RecordingResource()
        self.local_url = start_local_service(self, self.local)
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        directory = self.mktemp()
        os.makedirs(directory)
        self.keys_path = os.path.join(directory, "authorized_keys")
        self.http = visitor(self)

    def authorize(self, *entries):
        """
        Make the authorized-keys file list exactly C{entries}.
        """
        write_file(self.keys_path,
                   "# test\n" + "".join(e + "\n" for e in entries))

    async def start_proxy(self, **kwargs):
        """
        A proxy on a free port using the authorized-keys file.

        @return: C{(proxy, port)}.
        """
        kwargs.setdefault("authorized_keys", self.keys_path)
        proxy, port, _ = await start_proxy(self, **kwargs)
        return proxy, port

    def new_key(self):
        """
        A new client key, saved where L{start_client} will use it.

        @return: C{(path, ClientKey)}.
        """
        path = self.mktemp() + ".pem"
        return path, ClientKey.load_or_create(path)

    def start_client(self, port, key_path, **kwargs):
        """
        A tunnel client with the key at C{key_path}, retrying quickly; it is
        stopped at the end of the test.
        """
        kwargs.setdefault("max_delay", 1.0)
        client = TunnelClientService(
            reactor, "http://127.0.0.1:{}".format(port), self.local_url,
            key_path, **kwargs)
        client.startService()
        self.addCleanup(stop_client, client)
        return client

    def refusals(self):
        """
        The proxy's log events refusing a registration as not authorized.
        """
        return [e for e in events_like(self.log, "registration refused")
                if e.get("reason") == NOT_AUTHORIZED]

    async def get(self, port, client_id, path="/echo"):
        """
        A path-routed GET through tunnel C{client_id}: C{(status, body)}.
        """
        response = await self.http.get("http://127.0.0.1:{}/proxy/request/{}{}"
                                        .format(port, client_id, path))
        return response.code, await response.content()


class RegistrationTests(_ProxyFixture, TestCase):
    """
    Listed clients register; others are refused with the reason, 1008, and a
    log line.
    """

    async def test_listed_client_registers_and_serves(self):
        """
        A client whose clientID is listed registers and its tunnel answers.
        """
        path, key = self.new_key()
        self.authorize(key.client_id)
        proxy, port = await self.start_proxy()
        client = self.start_client(port, path)
        registration = await client.when_registered()
        self.assertEqual(registration.key_id, key.client_id)
        self.assertEqual((await self.get(port, key.client_id))[0], 200)
        self.assertEqual(self.refusals(), [])

    async def test_listed_thumbprint_lets_every_session_register(self):
        """
        Listing a key's RFC 7638 thumbprint allows it with a C{--session}
        too, under the session's clientID.
        """
        path, key = self.new_key()
        self.authorize(jwk_thumbprint(key.public_jwk()))
        proxy, port = await self.start_proxy()
        client = self.start_client(port, path, session="staging")
        registration = await client.when_registered()
        self.assertEqual(registration.key_id,
                         session_client_id(key.client_id, "staging"))

    async def test_unlisted_client_is_refused_and_never_registers(self):
        """
        An unlisted client is refused again and again (it retries with
        backoff); both sides log the reason and C{when_registered} never
        fires.
        """
        path, key = self.new_key()
        self.authorize(ClientKey.generate().client_id)
        proxy, port = await self.start_proxy()
        client = self.start_client(port, path)
        registered = client.when_registered()
        await wait_until(lambda: len(self.refusals()) >= 2, tries=1000,
                         what="two refusals logged")
        self.assertFalse(registered.called)
        registered.cancel()
        self.assertFailure(registered, CancelledError)
        await registered
        self.assertIsNone(client.registration)
        self.assertFalse([c for c in proxy.tunnel_factory.connections
                          if c.client_ids])
        refusal = self.refusals()[0]
        self.assertEqual(refusal["log_level"], LogLevel.warn)
        client_side = events_like(self.log, "the proxy refused the registration")
        self.assertTrue(client_side)
        self.assertEqual(client_side[0]["reason"], NOT_AUTHORIZED)
        self.assertEqual((await self.get(port, key.client_id))[0], 502)

    async def test_refusal_is_the_plain_text_reason_then_1008(self):
        """
        On the wire, a refused registration gets the reason as a plain-text
        message, then close code 1008.
        """
        self.authorize(ClientKey.generate().client_id)
        proxy, port = await self.start_proxy()
        raw = await connect_raw_tunnel(self, port)
        raw.register(ClientKey.generate(), "http://127.0.0.1:{}".format(port))
        await wait_until(lambda: raw.gone, what="refused connection closed")
        self.assertEqual(raw.messages, [NOT_AUTHORIZED.encode("utf-8")])
        self.assertEqual(raw.close_code, 1008)
        self.assertEqual(raw.close_reason, NOT_AUTHORIZED)
        self.assertEqual(len(self.refusals()), 1)

    async def test_without_authorized_keys_the_proxy_warns_it_is_open(self):
        """
        Started without C{authorized_keys}, the proxy warns that any client
        may register, and any client does.
        """
        proxy, port = await self.start_proxy(authorized_keys=None)
        (warning,) = events_like(self.log, "no --authorized-keys")
        self.assertEqual(warning["log_level"], LogLevel.warn)
        self.assertIn("open proxy", warning["log_format"])
        path, key = self.new_key()
        client = self.start_client(port, path)
        await client.when_registered()

    def test_unreadable_file_stops_the_start(self):
        """
        A broken file makes C{startService} raise before anything listens.
        """
        write_file(self.keys_path, "junk\n")
        proxy = ProxyService(reactor, ["tcp:0:interface=127.0.0.1"], "localhost",
                             "http://127.0.0.1:1", authorized_keys=self.keys_path)
        error = self.assertRaises(ValueError, proxy.startService)
        self.assertIn("line 1", str(error))
        self.assertFalse(proxy.running)
        self.assertFalse(proxy.ports[0].running)


class ReloadTests(_ProxyFixture, TestCase):
    """
    C{reload()} (what SIGHUP calls) applies the file to new registrations and
    to connected tunnels alike.
    """

    async def test_key_added_on_reload_lets_the_retrying_client_in(self):
        """
        A refused client registers at its next retry once its key is added
        and the file reloaded.
        """
        path, key = self.new_key()
        self.authorize()
        proxy, port = await self.start_proxy()
        client = self.start_client(port, path)
        await wait_until(lambda: self.refusals(), what="first refusal")
        self.authorize(key.client_id)
        proxy.reload()
        registration = await client.when_registered()
        self.assertEqual(registration.key_id, key.client_id)
        self.assertEqual((await self.get(port, key.client_id))[0], 200)

    async def test_key_removed_on_reload_closes_the_tunnel(self):
        """
        A connected tunnel whose key is removed is closed with 1008 and the
        reason; requests to it then get 502.
        """
        path, key = self.new_key()
        self.authorize(key.client_id)
        proxy, port = await self.start_proxy()
        client = self.start_client(port, path)
        await client.when_registered()
        self.assertEqual((await self.get(port, key.client_id))[0], 200)
        self.authorize()
        proxy.reload()
        await wait_until(lambda: client.protocol is None, what="tunnel closed")
        (revoked,) = events_like(self.log, "no longer authorized")
        self.assertEqual(revoked["client_id"], key.client_id)
        closed = events_like(self.log, "tunnel connection closed")
        self.assertEqual(closed[0]["code"], 1008)
        status, body = await self.get(port, key.client_id)
        self.assertEqual(status, 502)
        self.assertIn(b"not connected", body)
        # The client keeps trying, and keeps being refused.
        await wait_until(lambda: self.refusals(), what="refused on retry")
        self.assertEqual((await self.get(port, key.client_id))[0], 502)

    async def test_removed_key_on_a_raw_connection_gets_reason_and_1008(self):
        """
        The revoked connection receives the plain-text reason, then 1008.
        """
        key = ClientKey.generate()
        self.authorize(key.client_id)
        proxy, port = await self.start_proxy()
        raw = await connect_raw_tunnel(self, port)
        raw.register(key, "http://127.0.0.1:{}".format(port))
        await wait_until(lambda: raw.messages, what="registration answered")
        self.assertEqual(raw.decoded()[0].key_id, key.client_id)
        self.authorize()
        proxy.reload()
        await wait_until(lambda: raw.gone, what="revoked connection closed")
        self.assertEqual(raw.messages[1:], [NOT_AUTHORIZED.encode("utf-8")])
        self.assertEqual(raw.close_code, 1008)

    async def test_other_tunnels_survive_a_reload(self):
        """
        Only tunnels no longer listed are closed; listed ones keep serving.
        """
        kept_path, kept = self.new_key()
        gone_path, gone = self.new_key()
        self.authorize(kept.client_id, gone.client_id)
        proxy, port = await self.start_proxy()
        kept_client = self.start_client(port, kept_path)
        gone_client = self.start_client(port, gone_path)
        await kept_client.when_registered()
        await gone_client.when_registered()
        self.authorize(kept.client_id)
        proxy.reload()
        await wait_until(lambda: gone_client.protocol is None, what="revoked")
        self.assertIsNotNone(kept_client.protocol)
        self.assertEqual((await self.get(port, kept.client_id))[0], 200)
        self.assertEqual((await self.get(port, gone.client_id))[0], 502)

    async def test_broken_file_on_reload_keeps_the_previous_entries(self):
        """
        A reload of an unparsable file logs an error, keeps the entries in
        force, and closes nothing.
        """
        path, key = self.new_key()
        self.authorize(key.client_id)
        proxy, port = await self.start_proxy()
        client = self.start_client(port, path)
        await client.when_registered()
        write_file(self.keys_path, "{}\nthis is not a key\n".format(key.client_id))
        proxy.reload()
        (error,) = events_like(self.log, "cannot reload", level=LogLevel.error)
        self.assertEqual(error["path"], self.keys_path)
        self.assertIn("line 2", error["error"])
        self.assertEqual(proxy.authorized_keys.entries, frozenset([key.client_id]))
        self.assertIsNotNone(client.protocol)
        self.assertEqual((await self.get(port, key.client_id))[0], 200)

    async def test_missing_file_on_reload_keeps_the_previous_entries(self):
        """
        A reload when the file has gone logs an error and changes nothing.
        """
        path, key = self.new_key()
        self.authorize(key.client_id)
        proxy, port = await self.start_proxy()
        client = self.start_client(port, path)
        await client.when_registered()
        os.remove(self.keys_path)
        proxy.reload()
        self.assertEqual(len(events_like(self.log, "cannot reload",
                                         level=LogLevel.error)), 1)
        self.assertEqual((await self.get(port, key.client_id))[0], 200)

    async def test_reload_without_authorized_keys_changes_nothing(self):
        """
        Without C{authorized_keys} a reload only says there is nothing to do.
        """
        proxy, port = await self.start_proxy(authorized_keys=None)
        proxy.reload()
        self.assertEqual(len(events_like(self.log, "nothing to reload")), 1)
