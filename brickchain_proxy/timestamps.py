"""
RFC 3339 timestamps as the Go implementation writes them (UTC, C{Z}, the
fraction trimmed of trailing zeros) and reads them (any UTC offset, up to
nanoseconds). A mandate token carries one in its C{@timestamp}.
"""

from __future__ import annotations

import datetime
import re

_RFC3339 = re.compile(
    r"\A(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})"
    r"(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})\Z"
)


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
