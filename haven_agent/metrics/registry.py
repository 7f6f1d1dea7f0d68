# -*- test-case-name: tests.metrics.test_scrape -*-
"""
Each process's own metrics registry: the agent's build, the process.

A registry of its own, never prometheus_client's global one, so that
several agents in one test process (or a library that registers its own
metrics globally) cannot mix their series. The process collector reads
`/proc/self`, which is cheap enough to run on every scrape in the
rendering thread.
"""

from __future__ import annotations

import platform
import ssl

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector

from haven_agent import __version__


def build_labels() -> dict[str, str]:
    """
    The versions a bug report needs, as C{haven_agent_build_info} labels.
    """
    from twisted import __version__ as twisted

    return {
        "version": __version__,
        "python": platform.python_version(),
        "twisted": twisted,
        "openssl": ssl.OPENSSL_VERSION,
    }


def new_registry() -> CollectorRegistry:
    """
    A registry holding the build info and the process collector; the
    proxy's and the reporter's metrics are added to it by their builders.
    """
    registry = CollectorRegistry(auto_describe=True)
    labels = build_labels()
    info = Gauge(
        "haven_agent_build_info",
        "The agent's version and those of Python, Twisted and OpenSSL; always 1.",
        tuple(labels),
        registry=registry,
    )
    info.labels(**labels).set(1)
    ProcessCollector(registry=registry)
    return registry
