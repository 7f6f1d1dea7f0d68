"""
Tests for L{haven_agent.logs.level} and the observers it filters (the JSON
lines observer, twistd's text file observers), and for C{--log-level} on a
real agent process answering health checks.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import shutil
import ssl

from twisted.logger import (
    FileLogObserver,
    Logger,
    LogLevel,
    LogPublisher,
    formatEventAsClassicLogText,
)
from twisted.trial.unittest import SynchronousTestCase

from haven_agent.logs.json_lines import json_lines_observer
from haven_agent.logs.level import LOG_LEVEL_NAMES, LOG_LEVELS, at_level, wanted
from haven_agent.logs.text import filter_text_logs
from haven_agent.proxy.health import HEALTH_PATH
from tests.e2e_agent import AgentProcess
from tests.test_startup_errors import PROCESS_TIMEOUT, start_fake_dockerd

LEVELS = (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error)


def emit_each_level(observer) -> None:
    """One event of each level, saying its level, to C{observer}."""
    log = Logger(namespace="tests.log_level", observer=observer)
    log.debug("said at {which}", which="debug")
    log.info("said at {which}", which="info")
    log.warn("said at {which}", which="warn")
    log.error("said at {which}", which="error")
    log.critical("said at {which}", which="critical")


class WantedTests(SynchronousTestCase):
    def test_levelsInOrder(self) -> None:
        for threshold, atLeast in enumerate(LEVELS):
            for rank, own in enumerate(LEVELS):
                self.assertEqual(
                    wanted({"log_level": own}, atLeast),
                    rank >= threshold,
                    f"{own.name} at {atLeast.name}",
                )

    def test_criticalAlwaysWanted(self) -> None:
        for level in LEVELS:
            self.assertTrue(wanted({"log_level": LogLevel.critical}, level))

    def test_withoutLevelKept(self) -> None:
        self.assertTrue(wanted({"log_format": "x"}, LogLevel.error))

    def test_names(self) -> None:
        self.assertEqual(LOG_LEVEL_NAMES, ("debug", "info", "warn", "error"))
        self.assertEqual(LOG_LEVELS["warning"], LogLevel.warn)
        for name in LOG_LEVEL_NAMES:
            self.assertEqual(LOG_LEVELS[name].name, name)


class AtLevelTests(SynchronousTestCase):
    def format(self, event) -> str:
        return "line " + event["log_level"].name

    def test_debugIsTheFormatterItself(self) -> None:
        formatter = self.format
        self.assertIs(at_level(formatter, LogLevel.debug), formatter)

    def test_lessImportantGiveNoLine(self) -> None:
        formatter = at_level(self.format, LogLevel.warn)
        self.assertIsNone(formatter({"log_level": LogLevel.debug}))
        self.assertIsNone(formatter({"log_level": LogLevel.info}))
        self.assertEqual(formatter({"log_level": LogLevel.warn}), "line warn")
        self.assertEqual(formatter({"log_level": LogLevel.error}), "line error")

    def test_withoutLevelFormatted(self) -> None:
        formatter = at_level(lambda event: "kept", LogLevel.error)
        self.assertEqual(formatter({}), "kept")


class JSONLinesLevelTests(SynchronousTestCase):
    def levels(self, out: io.StringIO) -> list[str]:
        records = [json.loads(line) for line in out.getvalue().splitlines()]
        for record in records:
            self.assertEqual(record["text"], "said at " + record["level"])
        return [record["level"] for record in records]

    def test_defaultIsEverything(self) -> None:
        out = io.StringIO()
        emit_each_level(json_lines_observer(out))
        self.assertEqual(
            self.levels(out), ["debug", "info", "warn", "error", "critical"]
        )

    def test_info(self) -> None:
        out = io.StringIO()
        emit_each_level(json_lines_observer(out, LogLevel.info))
        self.assertEqual(self.levels(out), ["info", "warn", "error", "critical"])

    def test_error(self) -> None:
        out = io.StringIO()
        emit_each_level(json_lines_observer(out, LogLevel.error))
        self.assertEqual(self.levels(out), ["error", "critical"])


class FilterTextLogsTests(SynchronousTestCase):
    def publisher(self):
        out = io.StringIO()
        text = FileLogObserver(out, formatEventAsClassicLogText)
        seen: list[dict] = []
        publisher = LogPublisher(text, seen.append)
        return publisher, out, seen

    def lineLevels(self, out: io.StringIO) -> list[str]:
        return re.findall(r"#(\w+)\] said at \1$", out.getvalue(), re.M)

    def test_unfiltered(self) -> None:
        publisher, out, _ = self.publisher()
        emit_each_level(publisher)
        self.assertEqual(
            self.lineLevels(out), ["debug", "info", "warn", "error", "critical"]
        )

    def test_info(self) -> None:
        publisher, out, seen = self.publisher()
        self.assertEqual(filter_text_logs(LogLevel.info, publisher), 1)
        emit_each_level(publisher)
        self.assertEqual(self.lineLevels(out), ["info", "warn", "error", "critical"])
        # Other observers still see every event.
        self.assertEqual(len(seen), 5)

    def test_warn(self) -> None:
        publisher, out, _ = self.publisher()
        filter_text_logs(LogLevel.warn, publisher)
        emit_each_level(publisher)
        self.assertEqual(self.lineLevels(out), ["warn", "error", "critical"])

    def test_debug(self) -> None:
        publisher, out, _ = self.publisher()
        filter_text_logs(LogLevel.debug, publisher)
        emit_each_level(publisher)
        self.assertEqual(len(self.lineLevels(out)), 5)

    def test_noFileObservers(self) -> None:
        seen: list[dict] = []
        publisher = LogPublisher(seen.append)
        self.assertEqual(filter_text_logs(LogLevel.error, publisher), 0)
        emit_each_level(publisher)
        self.assertEqual(len(seen), 5)


HEALTH_LINE = re.compile(
    r"#debug\] 127\.0\.0\.1:\d+ \S+ GET /_agent/health: health: docker up;"
)
PING_LINE = re.compile(r"#info\] 127\.0\.0\.1:\d+ admin GET /_ping: ")


class AgentLogLevelTests(SynchronousTestCase):
    """
    A real agent answering a health check and a proxied request, stopped
    (which flushes its log), then its log read.
    """

    def runAgent(self, *args: str) -> AgentProcess:
        agent = AgentProcess(start_fake_dockerd(self), extra_args=args)
        self.addCleanup(shutil.rmtree, agent.tmpdir, True)
        self.addCleanup(agent.stop)
        agent.start()
        context = ssl.create_default_context(cafile=agent.ca_path)
        for path, headers, body in (
            (HEALTH_PATH.decode(), {}, b'"docker": "up"'),
            ("/_ping", {"Authorization": agent.authorization()}, b"OK"),
        ):
            connection = http.client.HTTPSConnection(
                "127.0.0.1", agent.port, context=context, timeout=PROCESS_TIMEOUT
            )
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                self.assertEqual(response.status, 200, path)
                self.assertIn(body, response.read())
            finally:
                connection.close()
        agent.stop()
        return agent

    def test_defaultLevel(self) -> None:
        agent = self.runAgent()
        log = agent.read_log()
        self.assertRegex(log, PING_LINE)
        self.assertNotIn("health:", log)
        self.assertNotIn("#debug]", log)

    def test_debugLevel(self) -> None:
        agent = self.runAgent("--log-level", "debug")
        log = agent.read_log()
        self.assertRegex(log, HEALTH_LINE)
        self.assertRegex(log, PING_LINE)

    def test_debugLevelJSON(self) -> None:
        agent = self.runAgent("--log-format", "json", "--log-level", "debug")
        records = [
            json.loads(line)
            for line in agent.read_stdio().splitlines()
            if line.startswith("{")
        ]
        health = [
            record
            for record in records
            if record.get("path") == HEALTH_PATH.decode()
            and "health: docker up" in record["text"]
        ]
        self.assertEqual(len(health), 1, records)
        self.assertEqual(health[0]["level"], "debug")
        self.assertTrue(
            any(
                record["level"] == "info" and record.get("path") == "/_ping"
                for record in records
            ),
            records,
        )

    def test_warnLevel(self) -> None:
        agent = self.runAgent("--log-level", "warn")
        log = agent.read_log()
        # twistd logs its start before the agent's services (and the filter)
        # start: the log is there, only what comes later is filtered.
        self.assertIn("starting up", log)
        self.assertNotIn("serving Docker API", log)
        self.assertNotIn("GET /_ping", log)
        self.assertNotIn("health:", log)
        self.assertNotIn("haven_agent.requests#info", log)
        self.assertNotIn("#debug]", log)
