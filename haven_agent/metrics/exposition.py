# -*- test-case-name: tests.metrics.test_exposition -*-
"""
Metric families to the Prometheus text format, and the sum over processes.

With `--workers N` each process counts its own connections, so a scrape
must answer the sum over all of them (see `worker_metrics`). Families are
merged sample by sample: counters, histograms and most gauges add up, the
gauges listed in `MAX_GAUGES` (timestamps, expiry, "is up") take the
largest value, and a process's start time the smallest. Samples are then
rendered by prometheus_client's own `generate_latest`, through a registry
that yields the merged families.

A snapshot crosses the worker pipe as JSON: `snapshot_json` and
`families_from_json` are each other's inverse.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.samples import Sample

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: The families prometheus_client gives a C{_created} sample per series.
CREATED_TYPES = frozenset(("counter", "histogram", "summary"))

#: Gauges whose merged value is the largest over processes, not the sum.
MAX_GAUGES = frozenset(
    (
        "haven_agent_build_info",
        "haven_agent_docker_up",
        "haven_agent_tls_certificate_not_after_timestamp_seconds",
        "haven_agent_config_last_reload_success_timestamp_seconds",
        "haven_agent_last_report_success_timestamp_seconds",
        "process_max_fds",
    )
)
#: Counters that count the same event in every process (one SIGHUP reloads
#: each of them): the largest count is the answer.
MAX_COUNTERS = frozenset(("haven_agent_config_reloads",))
#: Gauges whose merged value is the smallest: when it all began.
MIN_GAUGES = frozenset(("process_start_time_seconds",))


class _Families:
    """
    A collector that yields families already gathered.
    """

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def render(families: Sequence[Metric]) -> bytes:
    """
    C{families} in the Prometheus text format (version 0.0.4), without
    the C{_created} series of counters and histograms: the text format
    has no place for them (they would be one more gauge per series,
    doubling the page), and Prometheus finds resets without them.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([_uncreated(family) for family in families]))
    return generate_latest(registry)


def _uncreated(family: Metric) -> Metric:
    if family.type not in CREATED_TYPES:
        return family
    bare = Metric(family.name, family.documentation, family.type, family.unit)
    bare.samples = [s for s in family.samples if not s.name.endswith("_created")]
    return bare


def _rule(family: Metric) -> str:
    if family.name in MAX_GAUGES or family.name in MAX_COUNTERS:
        return "max"
    if family.name in MIN_GAUGES:
        return "min"
    return "sum"


def merge(processes: Sequence[Sequence[Metric]]) -> list[Metric]:
    """
    One list of families from each process's list, sample by sample, in
    the order the families and samples first appear.
    """
    if len(processes) == 1:
        return list(processes[0])
    merged: dict[tuple[str, str], Metric] = {}
    values: dict[tuple[str, str], dict[tuple[str, tuple], float]] = {}
    for families in processes:
        for family in families:
            key = (family.name, family.type)
            if key not in merged:
                merged[key] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[key] = {}
            rule = _rule(family)
            samples = values[key]
            for sample in family.samples:
                labels = tuple(sorted(sample.labels.items()))
                where = (sample.name, labels)
                old = samples.get(where)
                if old is None:
                    samples[where] = sample.value
                elif rule == "sum":
                    samples[where] = old + sample.value
                elif rule == "max":
                    samples[where] = max(old, sample.value)
                else:
                    samples[where] = min(old, sample.value)
    result = []
    for key, family in merged.items():
        for (name, labels), value in values[key].items():
            family.samples.append(Sample(name, dict(labels), value))
        result.append(family)
    return result


def snapshot_json(families: Iterable[Metric]) -> list[Any]:
    """
    C{families} as JSON-ready lists, without the C{_created} series that
    L{render} leaves out anyway.
    """
    return [
        [
            family.name,
            family.documentation,
            family.type,
            family.unit,
            [[s.name, s.labels, s.value] for s in _uncreated(family).samples],
        ]
        for family in families
    ]


def families_from_json(data: Any) -> list[Metric]:
    """
    The families of a L{snapshot_json}; what does not fit is left out.
    """
    families = []
    for name, documentation, typ, unit, samples in data:
        family = Metric(str(name), str(documentation), str(typ), str(unit))
        for sampleName, labels, value in samples:
            family.samples.append(
                Sample(
                    str(sampleName),
                    {str(k): str(v) for k, v in labels.items()},
                    float(value),
                )
            )
        families.append(family)
    return families


def encode_snapshot(families: Iterable[Metric]) -> bytes:
    return json.dumps(snapshot_json(families), separators=(",", ":")).encode()
