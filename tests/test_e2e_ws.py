"""
End-to-end tests of tunnelled websockets: a visitor websocket reaches a real
proxy on a loopback port, travels through a real tunnel client, and ends at
a real local websocket service (L{tests.support_ws.LocalWebSocketService}).

After every test the proxy's hub holds no stream and no pending request.
"""

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.internet.testing import EventLoggingObserver
from twisted.trial.unittest import TestCase

from brickchain_proxy.features import MESSAGE_FEATURES
from tests.support import (
    pseudo_random_bytes,
    start_tunnel,
    stop_client,
    unused_local_url,
    wait_until,
)
from tests.support_ws import (
    FLOOD_CHUNK,
    HandshakeFailed,
    LocalWebSocketService,
    connect_visitor,
    open_visitor,
    raw_upgrade,
)

class _WebSocketFixture:
    """
    A local websocket service, and helpers to start a tunnel to it and
    connect visitors through that tunnel.
    """

    timeout = 60

    def setUp(self):
        self.local = LocalWebSocketService()
        self.local_url = self.local.start(self)

    async def start_tunnel(self, local_url=None, **kwargs):
        """
        A proxy and a tunnel client for the local service; at the end of the
        test (once the visitors are closed) the hub must be empty.
        """
        tunnel = await start_tunnel(self, local_url or self.local_url, **kwargs)
        self.addCleanup(self.assert_nothing_left, tunnel)
        return tunnel

    def assert_nothing_left(self, tunnel):
        """
        No stream and no pending request left on the proxy, and no local
        websocket on the client; on the stream layer, no stream left in
        either side's session.
        """
        hub = tunnel.proxy.hub

        def sessions_empty():
            client = tunnel.client.protocol
            sessions = [c.streams for c in tunnel.proxy.tunnel_factory.connections]
            if client is not None:
                sessions.append(client.streams)
            return not any(session is not None and len(session) for session in sessions)

        def empty():
            client = tunnel.client.protocol
            return (not hub.streams and not len(hub.pending)
                    and (client is None or not client.local_websockets.streams)
                    and sessions_empty())

        return wait_until(empty, what="hub and client streams empty")

    def ws_url(self, tunnel, path):
        """
        The path-routed websocket URL of C{path} through C{tunnel}.
        """
        return "ws://127.0.0.1:{}/proxy/request/{}{}".format(
            tunnel.port, tunnel.client_id, path)

    def host_ws_url(self, tunnel, path):
        """
        The host-routed websocket URL of C{path} through C{tunnel} (connect
        to 127.0.0.1, Host C{<clientID>.localhost:<port>}).
        """
        return "ws://{}{}".format(tunnel.host, path)

    def visitor(self, tunnel, path, **kwargs):
        """
        A visitor websocket to C{path} through C{tunnel}, once open.
        """
        return connect_visitor(self, self.ws_url(tunnel, path), **kwargs)

    async def refused(self, tunnel, path, **kwargs):
        """
        The HTTP answer to an upgrade request for C{path} that must fail.
        """
        response = await raw_upgrade(
            tunnel.port, "/proxy/request/{}{}".format(tunnel.client_id, path),
            **kwargs)
        self.assertNotEqual(response.status, 101)
        return response

    def assertPlainText(self, response, status, *fragments):
        """
        C{response} has C{status} and a plain-text body containing every
        fragment.
        """
        self.assertEqual(response.status, status, response.text)
        self.assertEqual(response.headers["content-type"],
                         ["text/plain; charset=utf-8"])
        for fragment in fragments:
            self.assertIn(fragment, response.text)


class MessageTests(_WebSocketFixture, TestCase):
    """
    Messages cross the tunnel unchanged and in order, both ways.
    """

    async def test_text_messages_are_echoed_including_unicode(self):
        """A text message, ASCII or not, comes back from the local echo as the same text."""
        tunnel = await self.start_tunnel()
        visitor = await self.visitor(tunnel, "/echo")
        for text in ["hello", "h\u00e9llo w\u00f6rld \u2603 \U0001f389", ""]:
            payload = text.encode("utf-8")
            self.assertEqual(await visitor.echo(payload), (payload, False))

    async def test_binary_messages_are_echoed_byte_exact(self):
        """Binary messages of sizes around every frame-length boundary come back byte for byte."""
        tunnel = await self.start_tunnel()
        visitor = await self.visitor(tunnel, "/echo")
        for size in [0, 1, 125, 126, 65535, 65536, 400 * 1024]:
            payload = pseudo_random_bytes(size)
            echoed, is_binary = await visitor.echo(payload, is_binary=True)
            self.assertTrue(is_binary, size)
            self.assertEqual(len(echoed), size)
            self.assertTrue(echoed == payload, "{} bytes differ".format(size))

    async def test_a_thousand_messages_arrive_in_order(self):
        """1000 messages sent back to back come back in the order they were sent."""
        tunnel = await self.start_tunnel()
        visitor = await self.visitor(tunnel, "/echo")
        sent = [b"message %d" % i for i in range(1000)]
        for payload in sent:
            visitor.sendMessage(payload)
        received = [(await visitor.messages.get())[0] for _ in sent]
        self.assertEqual(received, sent)
        self.assertEqual([m for m, _ in self.local.on("echo")[0].messages], sent)

    async def test_message_sent_on_open_by_the_local_service_reaches_the_visitor(self):
        """A message the local service sends the moment it opens is not lost."""
        tunnel = await self.start_tunnel()
        visitor = await self.visitor(tunnel, "/greet")
        self.assertEqual(await visitor.messages.get(), (b"hello", False))

    async def test_host_routing_reaches_the_local_service(self):
        """A websocket routed by Host <clientID>.<domain> reaches the local echo."""
        tunnel = await self.start_tunnel()
        visitor = await connect_visitor(self, self.host_ws_url(tunnel, "/echo"))
        self.assertEqual(await visitor.echo(b"by host"), (b"by host", False))


class CloseTests(_WebSocketFixture, TestCase):
    """
    A close on either side reaches the other side with its code.
    """

    async def test_close_from_the_visitor_reaches_the_local_service_with_its_code(self):
        """The visitor closing with 4001 closes the local websocket with 4001."""
        tunnel = await self.start_tunnel()
        visitor = await self.visitor(tunnel, "/record")
        visitor.sendClose(4001, "done")
        await visitor.closed
        self.assertEqual(await self.local.on("record")[0].closed, (4001, "done"))

    async def test_close_from_the_local_service_reaches_the_visitor_with_its_code(self):
        """The local service closing with 4002 closes the visitor with 4002."""
        tunnel = await self.start_tunnel()
        visitor = await self.visitor(tunnel, "/close/4002")
        visitor.sendMessage(b"please go")
        self.assertEqual(await visitor.closed, (4002, "bye 4002"))

    async def test_tunnel_drop_closes_every_visitor_with_1001_at_once(self):
        """When the tunnel's connection drops, every visitor websocket is closed by the proxy with 1001 saying so (not by a ping timeout)."""
        tunnel = await self.start_tunnel()
        visitors = [await self.visitor(tunnel, "/echo") for _ in range(5)]
        for i, visitor in enumerate(visitors):
            self.assertEqual(await visitor.echo(b"%d" % i), (b"%d" % i, False))
        tunnel.client.protocol.dropConnection(abort=True)
        await stop_client(tunnel.client)
        closes = await defer.gatherResults([v.closed for v in visitors])
        self.assertEqual(closes, [(1001, "the tunnel's connection was lost")] * len(visitors))

    async def test_message_over_max_body_closes_the_visitor_with_1009(self):
        """A message over max_body closes that visitor with 1009 and a warning; the tunnel stays up."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        tunnel = await self.start_tunnel(max_body=1000)
        visitor = await self.visitor(tunnel, "/record")
        visitor.sendMessage(b"x" * 2000, isBinary=True)
        code, _ = await visitor.closed
        self.assertEqual(code, 1009)
        code, _ = await self.local.on("record")[0].closed
        self.assertEqual(code, 1009)
        warnings = [e for e in events
                    if "over the limit" in e.get("log_format", "")
                    and e.get("client_id") == tunnel.client_id]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["limit"], 1000)
        other = await self.visitor(tunnel, "/echo")
        self.assertEqual(await other.echo(b"still up"), (b"still up", False))

    async def test_local_message_over_the_clients_max_body_closes_both_with_1009(self):
        """A local message over the client's max_body closes the local websocket and the visitor with 1009."""
        tunnel = await self.start_tunnel(client_kwargs={"max_body": 1000})
        visitor = await self.visitor(tunnel, "/big/2000")
        visitor.sendMessage(b"send it")
        code, _ = await visitor.closed
        self.assertEqual(code, 1009)
        code, _ = await self.local.on("big")[0].closed
        self.assertEqual(code, 1009)

    async def test_visitor_leaving_before_the_handshake_completes_closes_the_local_websocket(self):
        """A visitor that hangs up while the local service is still accepting leaves no local websocket open."""
        tunnel = await self.start_tunnel()
        visitor = await open_visitor(self, self.ws_url(tunnel, "/hold"))
        await wait_until(lambda: self.local.held, what="local handshake held")
        visitor.dropConnection(abort=True)
        await visitor.closed
        await wait_until(lambda: not tunnel.proxy.hub.streams,
                         what="proxy forgot the stream")
        # The client must learn the visitor is gone: once the local
        # service accepts, the client closes that websocket at once.
        await wait_until(lambda: not tunnel.client.protocol.local_websockets.streams,
                         what="client forgot the stream")
        self.local.release()
        code, _ = await self.local.on("hold")[0].closed
        self.assertEqual(code, 1001)

    async def test_visitor_that_does_not_read_is_closed_and_others_keep_working(self):
        """Through a client without streams, a visitor with more than max_buffered bytes waiting is closed (1008); another visitor is unaffected."""
        tunnel = await self.start_tunnel(client_kwargs={"features": MESSAGE_FEATURES})
        tunnel.proxy.visitor_factory.max_buffered = 4 * FLOOD_CHUNK
        other = await self.visitor(tunnel, "/echo")
        stuck = await open_visitor(self, self.ws_url(tunnel, "/flood/40"))
        await stuck.opened
        stuck.transport.pauseProducing()
        flood = await wait_until(lambda: self.local.on("flood"))
        code, _ = await flood[0].closed
        self.assertEqual(code, 1008)
        self.assertEqual(await other.echo(b"fine"), (b"fine", False))
        stuck.transport.resumeProducing()
        await stuck.closed

    async def test_visitor_that_does_not_read_holds_back_the_local_service_on_streams(self):
        """On streams, a visitor that stops reading pauses the local service (nothing is closed or lost); another visitor is unaffected."""
        tunnel = await self.start_tunnel()
        tunnel.proxy.visitor_factory.max_buffered = 4 * FLOOD_CHUNK
        other = await self.visitor(tunnel, "/echo")
        stuck = await open_visitor(self, self.ws_url(tunnel, "/flood/40"))
        await stuck.opened
        stuck.transport.pauseProducing()
        flood = await wait_until(lambda: self.local.on("flood"))
        self.assertEqual(await other.echo(b"fine"), (b"fine", False))
        self.assertFalse(flood[0].closed.called)
        stuck.transport.resumeProducing()
        for _ in range(40):
            payload, is_binary = await stuck.messages.get()
            self.assertEqual((len(payload), is_binary), (FLOOD_CHUNK, True))


class HandshakeTests(_WebSocketFixture, TestCase):
    """
    The visitor's handshake completes only as the local service's does;
    every failure becomes an HTTP error with a plain-text reason.  (The 504
    of a ws-request unanswered within request_timeout, and the ws-teardown
    that tells the client to give up, are tested on a Clock in
    L{tests.test_public} and L{tests.test_ws_flow}; a client closing a
    local websocket that opens after the proxy gave up, there and below.)
    """

    async def test_refusal_by_the_local_service_is_a_502_naming_it(self):
        """A local service refusing the websocket (403) gives the visitor 502 saying so."""
        tunnel = await self.start_tunnel()
        response = await self.refused(tunnel, "/refuse")
        self.assertPlainText(response, 502, "refused", "403")
        self.assertEqual(len(self.local.on("refuse")), 1)

    async def test_refusal_seen_by_a_websocket_client_is_a_failed_handshake(self):
        """An Autobahn visitor sees the refusal as a failed handshake with status 502."""
        tunnel = await self.start_tunnel()
        visitor = await open_visitor(self, self.ws_url(tunnel, "/refuse"))
        failure = await self.assertFailure(visitor.opened, HandshakeFailed)
        self.assertEqual(failure.status, 502)

    async def test_local_service_down_is_a_502(self):
        """With nothing listening at the local URL, the visitor gets 502 saying it cannot be reached."""
        tunnel = await self.start_tunnel(unused_local_url())
        response = await self.refused(tunnel, "/echo")
        self.assertPlainText(response, 502, "cannot reach the local service")

    async def test_unknown_tunnel_is_a_502_at_once(self):
        """A websocket for a tunnel nobody holds gets 502 naming that tunnel."""
        tunnel = await self.start_tunnel()
        unknown = "n" * 52
        response = await raw_upgrade(tunnel.port, "/proxy/request/{}/echo".format(unknown))
        self.assertPlainText(response, 502, "tunnel {} is not connected".format(unknown))

    async def test_rate_limit_is_a_429_with_retry_after(self):
        """Over the tunnel's rate limit a websocket upgrade gets 429 with Retry-After, before any upgrade."""
        tunnel = await self.start_tunnel(rate_limit=(1, 300.0))
        await self.visitor(tunnel, "/echo")
        response = await self.refused(tunnel, "/echo")
        self.assertPlainText(response, 429, "too many requests")
        self.assertEqual(response.headers["retry-after"], ["300"])
        self.assertEqual(len(self.local.on("echo")), 1)

    async def test_subprotocol_chosen_by_the_local_service_completes_the_handshake(self):
        """A visitor offering chat and superchat gets superchat, as the local service chose."""
        tunnel = await self.start_tunnel()
        visitor = await self.visitor(tunnel, "/record", protocols=["chat", "superchat"])
        self.assertEqual(visitor.chosen_protocol, "superchat")
        local = self.local.on("record")[0]
        self.assertEqual(local.offered, ["chat", "superchat"])
        self.assertEqual(local.chosen, "superchat")

    async def test_no_subprotocol_offered_none_chosen(self):
        """A visitor offering no subprotocol gets none."""
        tunnel = await self.start_tunnel()
        visitor = await self.visitor(tunnel, "/record")
        self.assertIsNone(visitor.chosen_protocol)
        self.assertEqual(self.local.on("record")[0].offered, [])

    async def test_handshake_headers_reach_the_local_service(self):
        """Origin, Cookie, Authorization and custom headers reach the local service's handshake."""
        tunnel = await self.start_tunnel()
        await self.visitor(
            tunnel, "/record", origin="https://app.example",
            headers={"Cookie": "session=abc; theme=dark",
                     "Authorization": "Bearer t0ken",
                     "X-Custom": "custom value"},
        )
        headers = self.local.on("record")[0].headers
        self.assertEqual(headers["origin"], "https://app.example")
        self.assertEqual(headers["cookie"], "session=abc; theme=dark")
        self.assertEqual(headers["authorization"], "Bearer t0ken")
        self.assertEqual(headers["x-custom"], "custom value")

    async def test_path_and_query_reach_the_local_service_unchanged(self):
        """The path below the tunnel prefix and the raw query reach the local service as sent."""
        tunnel = await self.start_tunnel()
        target = "/record/a%2Fb/c%20d?x=1&y=%20two&z"
        await self.visitor(tunnel, target)
        self.assertEqual(self.local.on("record")[0].uri, target)

    async def test_path_and_query_reach_the_local_service_unchanged_by_host(self):
        """With host routing, the whole path and the raw query reach the local service as sent."""
        tunnel = await self.start_tunnel()
        target = "/record/deep/path?q=%E2%9C%93&empty="
        await connect_visitor(self, self.host_ws_url(tunnel, target))
        self.assertEqual(self.local.on("record")[0].uri, target)


class LoadTests(_WebSocketFixture, TestCase):
    """
    Many websockets share one tunnel.  (Round trips per second are
    measured by bench/ws_roundtrips.py and bench/run, not here.)
    """

    async def test_500_concurrent_websockets_each_get_their_own_echo(self):
        """500 visitors open at once through one tunnel each get their own message back; nothing is left after."""
        tunnel = await self.start_tunnel(rate_limit=(10000, 1.0))
        visitors = []
        for batch in range(10):
            opening = [open_visitor(self, self.ws_url(tunnel, "/echo"))
                       for _ in range(50)]
            for protocol in await defer.gatherResults(opening):
                visitors.append(await protocol.opened)
        self.assertEqual(len(tunnel.proxy.hub.streams), 500)
        for i, visitor in enumerate(visitors):
            visitor.sendMessage(b"visitor %d" % i)
        replies = await defer.gatherResults([v.messages.get() for v in visitors])
        self.assertEqual([payload for payload, _ in replies],
                         [b"visitor %d" % i for i in range(500)])
        for visitor in visitors:
            visitor.sendClose(1000)
        await defer.gatherResults([v.closed for v in visitors])
        await wait_until(lambda: not tunnel.proxy.hub.streams,
                         what="proxy streams empty")
        await wait_until(lambda: not tunnel.client.protocol.local_websockets.streams,
                         what="client streams empty")
        await wait_until(lambda: not self.local.open_connections(),
                         what="local websockets closed")
