"""
Logs for log shippers: one JSON object a line per log event, for either
daemon::

    twistd --nodaemon --pidfile= --logger brickchain_proxy.logs.json_observer \\
        brickproxy --access-log ...

Each line holds C{time} (ISO 8601, UTC), C{level}, C{namespace}, C{message}
(the event's text) and every field of the event by its own name: an
access-log event (namespace C{brickproxy.access}) carries C{client_id},
C{method}, C{path}, C{status}, C{bytes}, C{duration} and C{peer}.  A logged
failure adds C{traceback}.  Values JSON cannot hold are written as their
C{repr}.
"""

import json
import math
import sys
from datetime import datetime, timezone

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

#: The keys every line has; an event field of the same name is written as
#: C{"_" + name}.
_RESERVED = frozenset(["time", "level", "namespace", "message", "traceback"])

#: What an event of the legacy C{twisted.python.log} API repeats of its
#: text, time and level in fields of its own.
_LEGACY_COPIES = frozenset(["message", "time", "isError", "format", "system"])


def event_as_record(event):
    """
    A log event as a flat L{dict} ready for L{json.dumps}.
    """
    record = {
        "time": _timestamp(event.get("log_time")),
        "level": getattr(event.get("log_level"), "name", None),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:
            record["traceback"] = repr(failure)
    # A legacy event has "time" (and "message", "isError") besides log_*.
    skip = _LEGACY_COPIES if "time" in event and "isError" in event else ()
    for key, value in event.items():
        if key.startswith("log_") or key in skip:
            continue
        record["_" + key if key in _RESERVED else key] = _plain(value)
    return record


def _timestamp(seconds):
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value):
    """
    C{value} as JSON can hold it: numbers, strings, booleans, None, lists
    and string-keyed objects of those; anything else (and NaN or infinity,
    which JSON has no word for) as its C{repr}.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event as one line of JSON to C{out} (a text file), flushed
    at once so a shipper reading a pipe sees it.
    """

    def __init__(self, out):
        self._out = out

    def __call__(self, event):
        try:
            line = json.dumps(event_as_record(event), ensure_ascii=False,
                              allow_nan=False)
        except Exception as e:
            line = json.dumps({"message": "unloggable event: {!r}".format(e),
                               "level": "error", "namespace": __name__})
        self._out.write(line + "\n")
        self._out.flush()


def json_observer():
    """
    The observer factory for C{twistd --logger}: JSON lines on standard
    output (as twistd found it, before it redirects C{sys.stdout} into the
    log).
    """
    return JSONLinesObserver(sys.stdout)
