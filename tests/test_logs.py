"""
JSON logs (L{brickchain_proxy.logs}): one JSON object a line per event, for
log shippers, with C{twistd --logger brickchain_proxy.logs.json_observer}.
"""

import io
import json
import math
import os
import socket
import sys

from twisted.logger import ILogObserver, Logger, LogLevel, LogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from brickchain_proxy.logs import JSONLinesObserver, event_as_record, json_observer
from tests.compat_support import spawn
from tests.support import RecordingResource, start_local_service, visitor, wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RecordTests(SynchronousTestCase):
    """
    What one event becomes.
    """

    def lines(self, emit):
        out = io.StringIO()
        publisher = LogPublisher(JSONLinesObserver(out))
        emit(Logger(namespace="brickproxy.access", observer=publisher))
        return [json.loads(line) for line in out.getvalue().splitlines()]

    def test_fields_are_top_level_keys(self):
        """An event's fields sit next to time, level, namespace and message."""
        (line,) = self.lines(lambda log: log.info(
            "{client_id} {method} {path} {status}", client_id="abc",
            method="GET", path="/x", status=200, bytes=12, duration=0.25,
            peer="127.0.0.1"))
        self.assertEqual(line["level"], "info")
        self.assertEqual(line["namespace"], "brickproxy.access")
        self.assertEqual(line["message"], "abc GET /x 200")
        self.assertTrue(line["time"].endswith("Z"), line["time"])
        for key, value in [("client_id", "abc"), ("method", "GET"), ("path", "/x"),
                           ("status", 200), ("bytes", 12), ("duration", 0.25),
                           ("peer", "127.0.0.1")]:
            self.assertEqual(line[key], value)
        self.assertFalse([key for key in line if key.startswith("log_")])

    def test_failure_adds_a_traceback(self):
        """log.failure writes the traceback, at critical level."""
        def emit(log):
            try:
                1 / 0
            except ZeroDivisionError:
                log.failure("it broke")

        (line,) = self.lines(emit)
        self.assertEqual((line["level"], line["message"]), ("critical", "it broke"))
        self.assertIn("ZeroDivisionError", line["traceback"])

    def test_odd_values_are_written_as_repr(self):
        """Objects, bytes and NaN become strings; the line is still strict JSON."""
        class Thing:
            def __repr__(self):
                return "<thing>"

        (line,) = self.lines(lambda log: log.info(
            "x", thing=Thing(), raw=b"\xff", nan=math.nan, nested={"a": [1, Thing()]}))
        self.assertEqual(line["thing"], "<thing>")
        self.assertEqual(line["raw"], repr(b"\xff"))
        self.assertEqual(line["nan"], "nan")
        self.assertEqual(line["nested"], {"a": [1, "<thing>"]})

    def test_field_named_like_a_standard_key_is_kept_aside(self):
        """A field called message (or time...) is written as _message."""
        (line,) = self.lines(lambda log: log.info("text {message}", message="m"))
        self.assertEqual((line["message"], line["_message"]), ("text m", "m"))

    def test_unformattable_event_still_gives_a_line(self):
        """A format with a missing field still produces a line."""
        record = event_as_record({"log_format": "{missing}", "log_level": LogLevel.warn,
                                  "log_namespace": "n", "log_time": 0.0})
        self.assertIn("missing", record["message"])
        self.assertEqual(record["time"], "1970-01-01T00:00:00.000Z")

    def test_factory_gives_an_observer(self):
        """json_observer() (twistd --logger) makes an ILogObserver on stdout."""
        verifyObject(ILogObserver, json_observer())


def free_port():
    """
    A port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def twistd(*args):
    """
    The argv of twistd with this interpreter, JSON logs on stdout.
    """
    return [sys.executable, "-c",
            "import sys; from twisted.scripts.twistd import run; "
            "sys.argv[0] = 'twistd'; run()",
            "--nodaemon", "--pidfile=", "--logger",
            "brickchain_proxy.logs.json_observer", *args]


def json_lines(program):
    """
    Every line the program wrote to stdout, each parsed as JSON (a line
    that is not JSON fails the test).
    """
    return [json.loads(line) for line in bytes(program.out).decode("utf-8").splitlines()]


class DaemonTests(TestCase):
    """
    Both daemons, run by twistd with the JSON observer, write only JSON
    lines; the proxy's access log is among them with its fields.
    """

    timeout = 60

    async def test_both_daemons_write_json_lines_with_access_log(self):
        """A tunnelled request gives a brickproxy.access line with its fields."""
        env = {"PYTHONPATH": os.pathsep.join(
            [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        port = free_port()
        base = "http://127.0.0.1:{}".format(port)
        proxy = spawn(self, "brickproxy", twistd(
            "brickproxy", "--listen", "tcp:{}:interface=127.0.0.1".format(port),
            "--base", base, "--domain", "localhost", "--access-log"),
            supervised=True, env=env)
        await wait_until(lambda: b"brickproxy listening" in proxy.out or proxy.ended,
                         what="the proxy listening")
        local_url = start_local_service(self, RecordingResource())
        key = os.path.abspath(self.mktemp() + ".pem")
        client = spawn(self, "brickclient", twistd(
            "brickclient", "--proxy", base, "--local", local_url, "--key", key),
            supervised=True, env=env)
        await wait_until(lambda: b"tunnel registered" in client.out or client.ended,
                         what="the client registered")
        (registered,) = [line for line in json_lines(client)
                         if line["message"].startswith("tunnel registered")]
        client_id = registered["client_id"]

        response = await visitor(self).get(
            "{}/proxy/request/{}/echo?x=1".format(base, client_id))
        self.assertEqual(response.code, 200)
        await response.content()

        def access():
            return [line for line in json_lines(proxy)
                    if line["namespace"] == "brickproxy.access"]

        await wait_until(access, what="the access line")
        await proxy.stop()
        await client.stop()
        (line,) = access()
        self.assertEqual(line["client_id"], client_id)
        self.assertEqual(line["method"], "GET")
        self.assertEqual(line["path"], "/proxy/request/{}/echo?x=1".format(client_id))
        self.assertEqual(line["status"], 200)
        self.assertEqual(line["peer"], "127.0.0.1")
        self.assertIsInstance(line["bytes"], int)
        self.assertIsInstance(line["duration"], float)
        self.assertEqual(line["level"], "info")
        # Everything else both wrote is JSON too, down to the last line.
        for program in (proxy, client):
            lines = json_lines(program)
            self.assertTrue(all({"time", "level", "namespace", "message"} <= set(line)
                                for line in lines))
            self.assertIn("Main loop terminated.", [line["message"] for line in lines])

