# -*- test-case-name: tests.proxy.test_connection_limits -*-
"""
How many connections each party may hold, so that one cannot lock out all.

Global limits alone let one low-privilege client take every place: idle TCP
connections that never begin TLS filled `--max-unauthenticated`, and the
read-only user's idle keep-alive connections filled `--max-connections`, so
the admin's next connection got 503. So besides the totals:

- connections that have not authenticated are also counted per source
  address, an IPv6 source by its /64 (one host usually holds a whole /64);
- authenticated connections are counted per user (the Basic user name or
  the certificate's name) and capped below the total, leaving room for the
  others.

A connection counts as unauthenticated from its arrival until its first
request is let in, then against the user of that request.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import NamedTuple

from attrs import define, field

#: IPv6 sources are grouped by this prefix length.
IPV6_SOURCE_PREFIX = 64


def source_of(host: str) -> str:
    """
    The source a client address counts against: the address itself for
    IPv4 (an IPv4-mapped IPv6 address included), its /64 for IPv6.
    """
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network(f"{address}/{IPV6_SOURCE_PREFIX}", strict=False)
        return str(network)
    return str(address)


class Overload(NamedTuple):
    """
    A connection one too many: which limit (by its option's name, as the
    metrics say it), what to tell the client, and the limit.
    """

    reason: str
    problem: str
    limit: int


@define(eq=False)
class ConnectionLimits:
    """
    The counts, and the limits they are held to.

    @ivar maxConnections: all client connections.
    @ivar maxUnauthenticated: connections not yet authenticated, in all.
    @ivar maxUnauthenticatedPerSource: the same, from one source.
    @ivar maxPerUser: authenticated connections of one user.
    """

    maxConnections: int = 10_000
    maxUnauthenticated: int = 512
    maxUnauthenticatedPerSource: int = 64
    maxPerUser: int = 5_000
    connections: int = field(init=False, default=0)
    unauthenticated: int = field(init=False, default=0)
    _bySource: Counter[str] = field(init=False, factory=Counter)
    _byUser: Counter[str] = field(init=False, factory=Counter)

    def arrived(self, source: str) -> Overload | None:
        """
        A connection from C{source} arrived, and counts from now on (call
        L{left} when it goes, refused or not).

        @return: the L{Overload} when it is one too many, else None.
        """
        self.connections += 1
        self.unauthenticated += 1
        self._bySource[source] += 1
        if self.connections > self.maxConnections:
            return Overload(
                "max_connections", "too many connections", self.maxConnections
            )
        if self.unauthenticated > self.maxUnauthenticated:
            return Overload(
                "max_unauthenticated",
                "too many connections waiting to authenticate",
                self.maxUnauthenticated,
            )
        if self._bySource[source] > self.maxUnauthenticatedPerSource:
            return Overload(
                "max_unauthenticated_per_source",
                f"too many connections from {source} waiting to authenticate",
                self.maxUnauthenticatedPerSource,
            )
        return None

    def authenticated(
        self, source: str, user: str, most: int | None = None
    ) -> Overload | None:
        """
        A connection from C{source} authenticated as C{user}: it now counts
        against C{user}, who may hold C{most} (a profile's limit) or else
        L{maxPerUser}.

        @return: the L{Overload} when C{user} holds too many, else None.
        """
        self._release(self._bySource, source)
        self.unauthenticated -= 1
        self._byUser[user] += 1
        limit = self.maxPerUser if most is None else most
        if self._byUser[user] > limit:
            return Overload(
                "max_connections_per_user",
                f"too many connections of user {user}",
                limit,
            )
        return None

    def left(self, source: str, user: str | None) -> None:
        """
        A connection went: from C{source}, or, once authenticated, of
        C{user}.
        """
        self.connections -= 1
        if user is None:
            self.unauthenticated -= 1
            self._release(self._bySource, source)
        else:
            self._release(self._byUser, user)

    def held(self, user: str) -> int:
        return self._byUser[user]

    def waiting(self, source: str) -> int:
        return self._bySource[source]

    @staticmethod
    def _release(counts: Counter[str], key: str) -> None:
        counts[key] -= 1
        if counts[key] <= 0:
            del counts[key]
