"""
Tests for L{haven_agent.reporting.report}: the report body the Haven master accepts,
field by field.
"""

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from haven_agent.reporting.report import (
    HostSnapshot,
    build_report,
    parse_labels,
    rfc3339_utc,
    summarize_containers,
)

RFC3339_UTC_MILLIS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
MOMENT = datetime(2026, 11, 24, 11, 19, 52, 123456, tzinfo=UTC)


def host(**overrides: object) -> HostSnapshot:
    facts: dict = {
        "cpu_load": 12.5,
        "memory": {"total": 8373055488, "used": 3341000704, "available": 2780352512},
        "disks": {"/": {"total": 105089261568, "used": 42035744768}},
        "net": {"eth0": {"bytesIn": 123456789, "bytesOut": 98765432}},
    }
    facts.update(overrides)
    return HostSnapshot(**facts)


def report(**overrides: object) -> dict:
    arguments: dict = {
        "moment": MOMENT,
        "name": "node-1",
        "address": "https://10.0.0.5:8771",
        "host": host(),
        "labels": {},
        "containers": [],
    }
    arguments.update(overrides)
    return build_report(**arguments)


class TimeTests(SynchronousTestCase):
    def test_utc_milliseconds_z(self) -> None:
        self.assertEqual(rfc3339_utc(MOMENT), "2026-11-24T11:19:52.123Z")

    def test_converted_from_other_offsets(self) -> None:
        plus_two = timezone(timedelta(hours=2))
        moment = datetime(2026, 11, 24, 13, 19, 52, 5000, tzinfo=plus_two)
        self.assertEqual(rfc3339_utc(moment), "2026-11-24T11:19:52.005Z")

    def test_whole_second(self) -> None:
        moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        self.assertEqual(rfc3339_utc(moment), "2026-01-02T03:04:05.000Z")
        self.assertTrue(RFC3339_UTC_MILLIS.match(rfc3339_utc(moment)))

    def test_naive_refused(self) -> None:
        error = self.assertRaises(ValueError, rfc3339_utc, datetime(2026, 11, 24))
        self.assertIn("naive", str(error))


class LabelTests(SynchronousTestCase):
    def test_split_on_first_equals(self) -> None:
        self.assertEqual(
            parse_labels(["a=b", "url=http://x/?q=1", "flag", "empty="]),
            {"a": "b", "url": "http://x/?q=1", "flag": "", "empty": ""},
        )

    def test_none(self) -> None:
        self.assertEqual(parse_labels(None), {})
        self.assertEqual(parse_labels([]), {})


class ContainerTests(SynchronousTestCase):
    def test_summary(self) -> None:
        containers: list[dict[str, Any]] = [
            {
                "Id": "abc123",
                "Names": ["/web", "/other/alias"],
                "Image": "nginx:1.27",
                "Labels": {"com.example.role": "front", "x": "a=b"},
                "State": "running",
            },
            {"Id": "def456", "Names": ["/db"], "Image": "postgres", "Labels": None},
            {"Id": "ghi789", "Names": [], "Image": "busybox"},
        ]
        self.assertEqual(
            summarize_containers(containers),
            [
                {
                    "id": "abc123",
                    "name": "web",
                    "image": "nginx:1.27",
                    "labels": {"com.example.role": "front", "x": "a=b"},
                },
                {"id": "def456", "name": "db", "image": "postgres", "labels": {}},
                {"id": "ghi789", "name": "", "image": "busybox", "labels": {}},
            ],
        )


class BuildReportTests(SynchronousTestCase):
    def test_minimal_body_of_the_contract(self) -> None:
        self.assertEqual(
            json.dumps(report(), separators=(",", ":")),
            '{"time":"2026-11-24T11:19:52.123Z","name":"node-1",'
            '"address":"https://10.0.0.5:8771","system":{"cpuLoad":12.5,'
            '"memory":{"total":8373055488,"used":3341000704,"available":2780352512},'
            '"disks":{"/":{"total":105089261568,"used":42035744768}},'
            '"net":{"eth0":{"bytesIn":123456789,"bytesOut":98765432}},'
            '"labels":{},"containers":[]}}',
        )

    def test_field_types(self) -> None:
        body = report(
            host=host(cpu_load=7, memory={"total": 10.0, "used": 4, "available": 6}),
            labels=parse_labels(["zone=a=1"]),
            containers=summarize_containers(
                [{"Id": "i", "Names": ["/n"], "Image": "m", "Labels": None}]
            ),
        )
        self.assertTrue(RFC3339_UTC_MILLIS.match(body["time"]))
        system = body["system"]
        self.assertIsInstance(system["cpuLoad"], float)
        for value in system["memory"].values():
            self.assertIsInstance(value, int)
        self.assertEqual(system["labels"], {"zone": "a=1"})
        self.assertEqual(
            system["containers"], [{"id": "i", "name": "n", "image": "m", "labels": {}}]
        )

    def test_cpu_load_clamped(self) -> None:
        for given, sent in [(-3.0, 0.0), (130.0, 100.0), (float("nan"), 0.0)]:
            body = report(host=host(cpu_load=given))
            self.assertEqual(body["system"]["cpuLoad"], sent)

    def test_net_never_null_and_no_loopback(self) -> None:
        net = {
            "lo": {"bytesIn": 1, "bytesOut": 1},
            "eth0": {"bytesIn": 5, "bytesOut": 6},
            "eth1": {"bytesIn": None, "bytesOut": 6},
            "eth2": None,
            "eth3": {"bytesIn": 1},
        }
        body = report(host=host(net=net))
        self.assertEqual(body["system"]["net"], {"eth0": {"bytesIn": 5, "bytesOut": 6}})
        self.assertNotIn("null", json.dumps(body["system"]["net"]))

    def test_disks_without_unknown_sizes(self) -> None:
        disks = {
            "/": {"used": 1, "total": 2},
            "/data": {"used": None, "total": 2},
            "/stuck": None,
        }
        body = report(host=host(disks=disks))
        self.assertEqual(body["system"]["disks"], {"/": {"used": 1, "total": 2}})

    def test_address_required(self) -> None:
        for address in ["", None]:
            error = self.assertRaises(ValueError, report, address=address)
            self.assertIn("address", str(error))

    def test_name_required(self) -> None:
        self.assertRaises(ValueError, report, name="")

    def test_naive_time_refused(self) -> None:
        self.assertRaises(ValueError, report, moment=datetime(2026, 11, 24, 11, 0))


class DiskOrderTests(SynchronousTestCase):
    def test_disksSortedByMountPoint(self) -> None:
        body = build_report(
            moment=datetime(2026, 1, 1, tzinfo=UTC),
            name="n",
            address="https://10.0.0.5:8771",
            host=HostSnapshot(
                cpu_load=1.0,
                memory={"total": 2, "used": 1, "available": 1},
                disks={"/z": {"used": 1, "total": 2}, "/": {"used": 1, "total": 2}},
                net={},
            ),
            labels={},
            containers=[],
        )
        self.assertEqual(list(body["system"]["disks"]), ["/", "/z"])
