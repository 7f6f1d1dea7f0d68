# -*- test-case-name: tests.reporting.test_report -*-
"""
The body of the report the agent POSTs to the Haven master
(C{POST /discovery/nodes/{name}}, handled by the master's
C{DiscoveryNodeController}), built exactly to what that master accepts.

The master is an unmodified Java service that fails (500) on a few inputs the
earlier agents produced: a naive local C{time}, a null C{address}, a C{null}
inside C{system.net}. This module is the one place that turns collected facts
into that body, so those rules are enforced here, as pure functions without
I/O that the tests check field by field:

  - C{time} is RFC 3339 in UTC with milliseconds and C{Z}, from an aware
    datetime only;
  - C{address} is required;
  - C{system.cpuLoad} is a percent 0.0-100.0, memory and disk sizes are
    integer bytes, C{system.net} never holds a C{None} and never C{lo};
  - Docker's C{Labels} strings are split on the FIRST C{=}, so values may
    themselves contain C{=}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from attrs import frozen

# The loopback interface says nothing about the node; the Python agent left
# it out too.
EXCLUDED_INTERFACES = frozenset({"lo"})


def rfc3339_utc(moment: datetime) -> str:
    """
    C{moment} as C{2026-11-24T11:19:52.123Z}: UTC, milliseconds, C{Z}.

    @raise ValueError: for a naive datetime, whose offset nobody knows (the
        master answers 500 to a time without an offset).
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"{moment!r} is a naive datetime: the report time needs an offset; "
            f"pass datetime.now(timezone.utc)"
        )
    utc = moment.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
        f"T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
        f".{utc.microsecond // 1000:03d}Z"
    )


def parse_labels(labels: list[str] | None) -> dict[str, str]:
    """
    Docker's C{info.Labels} (C{["key=value", ...]}) as a map, split on the
    FIRST C{=}; a C{key} without C{=} maps to C{""}. Later duplicates win.
    """
    parsed: dict[str, str] = {}
    for label in labels or ():
        key, _, value = str(label).partition("=")
        parsed[key] = value
    return parsed


def summarize_containers(containers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    The C{system.containers} list from Docker's C{/containers/json?all=1}:
    C{id}, C{name} (the first of C{Names} without its leading C{/}),
    C{image} and C{labels} (C{{}} when Docker has none).
    """
    summary = []
    for container in containers:
        names = container.get("Names") or []
        name = str(names[0]).removeprefix("/") if names else ""
        summary.append(
            {
                "id": str(container.get("Id") or ""),
                "name": name,
                "image": str(container.get("Image") or ""),
                "labels": dict(container.get("Labels") or {}),
            }
        )
    return summary


@frozen
class HostSnapshot:
    """
    The host facts of one report, as collected.

    @ivar cpu_load: percent 0.0-100.0 since the previous report.
    @ivar memory: C{{"total", "used", "available"}} in bytes.
    @ivar disks: mount point -> C{{"used", "total"}} in bytes.
    @ivar net: interface -> C{{"bytesIn", "bytesOut"}}, cumulative.
    """

    cpu_load: float
    memory: dict[str, int]
    disks: dict[str, dict[str, int]]
    net: dict[str, dict[str, int]]


def _percent(value: float) -> float:
    number = float(value)
    if not math.isfinite(number):
        return 0.0
    return min(100.0, max(0.0, number))


def _integers(values: Mapping[str, Any]) -> dict[str, int]:
    """Integer copies of the values that are present (C{None} dropped)."""
    return {str(key): int(value) for key, value in values.items() if value is not None}


def _disks(disks: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    # Sorted: probes answer in any order, and a stable body reads better.
    return {
        str(mountpoint): _integers(usage)
        for mountpoint, usage in sorted(disks.items())
        if isinstance(usage, Mapping)
        and usage.get("used") is not None
        and usage.get("total") is not None
    }


def _net(net: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """
    Interfaces with both counters known; anything else is left out rather
    than sent as C{null}, which makes the master fail.
    """
    counters = {}
    for interface, values in net.items():
        if interface in EXCLUDED_INTERFACES or not isinstance(values, Mapping):
            continue
        received, sent = values.get("bytesIn"), values.get("bytesOut")
        if received is None or sent is None:
            continue
        counters[str(interface)] = {"bytesIn": int(received), "bytesOut": int(sent)}
    return counters


def build_report(
    *,
    moment: datetime,
    name: str,
    address: str,
    host: HostSnapshot,
    labels: dict[str, str],
    containers: list[dict[str, Any]],
) -> dict[str, Any]:
    """
    The report body, exactly the contract's fields.

    @param moment: when the facts were collected; must be timezone-aware.
    @param name: the node name (the same as in the URL path).
    @param address: C{https://IP:PORT} of this agent's proxy.
    @param labels: Docker's labels, already parsed (L{parse_labels}).
    @param containers: already summarized (L{summarize_containers}).

    @raise ValueError: for a naive C{moment}, or an empty C{name} or
        C{address} (the master answers 500 to a null address).
    """
    if not address:
        raise ValueError("the report needs an address: the master connects to it")
    if not name:
        raise ValueError("the report needs a node name")
    return {
        "time": rfc3339_utc(moment),
        "name": name,
        "address": address,
        "system": {
            "cpuLoad": _percent(host.cpu_load),
            "memory": _integers(host.memory),
            "disks": _disks(host.disks),
            "net": _net(host.net),
            "labels": {str(key): str(value) for key, value in labels.items()},
            "containers": list(containers),
        },
    }
