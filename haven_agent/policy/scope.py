# -*- test-case-name: tests.policy.test_scope -*-
"""
A profile's scope: the containers that carry its label, and no others.

```toml
[profiles.ci]
scope = { label = "com.example.owner=ci" }
```

- A route on one container (`/containers/{id}/...`, `/commit?container=`)
  is judged by that container's labels, read on a side connection to
  dockerd (`GET /containers/{id}/json`: a name or an ID prefix, as dockerd
  resolves it); an exec (`/exec/{id}/...`) by its container's, through
  `GET /exec/{id}/json`. A container out of scope, or that dockerd cannot
  show, is refused (403) before the request is forwarded.
- `POST /containers/create` must carry the label (a body rule).
- The lists, `GET /containers/json`, `GET /events` and
  `POST /containers/prune`, are narrowed to the label: their `filters`
  parameter is rewritten with the label added, replacing every `filters`
  the client sent (Go reads the first, so appending one would not bind).
  These are the only requests whose bytes the agent changes.

Images, networks and volumes carry no owner and are not scoped: give a
scoped profile only the routes on them it needs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from attrs import frozen
from twisted.internet.defer import Deferred

from haven_agent.policy.go_json import AmbiguousJSON, field, read_like_go
from haven_agent.proxy.http_head import RequestHead, first_query_value

#: The lists narrowed to the scope by their filters.
NARROWED = frozenset(("/containers/json", "/events", "/containers/prune"))

Inspect = Callable[[bytes], Deferred[dict[str, Any]]]


class ScopeError(ValueError):
    """
    A request whose scope cannot be decided (its filters are not JSON).
    """


@frozen
class Scope:
    key: str
    value: str

    @classmethod
    def parse(cls, table: Any) -> Scope:
        """
        @raise ValueError: not C{{ label = "key=value" }}.
        """
        if not isinstance(table, dict) or set(table) != {"label"}:
            raise ValueError('scope must be { label = "key=value" }')
        label = table["label"]
        if not isinstance(label, str) or "=" not in label or label.startswith("="):
            raise ValueError('scope: the label must be "key=value"')
        key, _, value = label.partition("=")
        return cls(key, value)

    @property
    def label(self) -> str:
        return f"{self.key}={self.value}"

    def holds(self, container: Any) -> bool:
        """
        Does a container's inspect answer carry the label?
        """
        labels = (
            container.get("Config", {}).get("Labels")
            if isinstance(container, dict)
            else None
        )
        return isinstance(labels, dict) and labels.get(self.key) == self.value

    def bodyProblem(self, body: bytes) -> str | None:
        """
        Why a create body does not carry the label, or None.
        """
        try:
            config = read_like_go(body)
        except AmbiguousJSON as e:
            return f"the body: {e}"
        labels = field(config, "Labels")
        if field(labels, self.key) != self.value:
            return f"a new container must carry the label {self.label}"
        return None

    def narrowed(self, head: RequestHead) -> bytes:
        """
        C{head}'s bytes with its C{filters} replaced by the client's first,
        plus the label.

        @raise ScopeError: the client's filters are not a JSON object of
            filter names.
        """
        target = head.target
        path, question, query = target.partition(b"?")
        given = first_query_value(target, b"filters")
        filters: dict[str, list[str]] = {}
        if given:
            try:
                parsed = json.loads(given)
            except ValueError:
                raise ScopeError("the filters parameter is not JSON") from None
            if not isinstance(parsed, dict):
                raise ScopeError("the filters parameter is not a JSON object")
            for name, values in parsed.items():
                if isinstance(values, dict):
                    values = [k for k, on in values.items() if on]
                if not isinstance(values, list):
                    raise ScopeError(f"filter {name!r} is not a list")
                filters[str(name)] = [str(v) for v in values]
        filters.setdefault("label", []).append(self.label)
        kept = [
            pair
            for pair in (query.split(b"&") if question else [])
            if pair
            and unquote_to_bytes(pair.partition(b"=")[0].replace(b"+", b" "))
            != b"filters"
        ]
        encoded = quote(json.dumps(filters, separators=(",", ":")), safe="")
        kept.append(b"filters=" + encoded.encode("ascii"))
        newTarget = path + b"?" + b"&".join(kept)
        line, rest = head.raw.split(b"\n", 1)
        method, _, version = line.split(b" ", 2)
        return method + b" " + newTarget + b" " + version + b"\n" + rest

    def check(
        self, inspect: Inspect, container: str, isExec: bool
    ) -> Deferred[str | None]:
        """
        Fire with why C{container} (an exec ID when C{isExec}) is out of
        scope, or None when it is in.
        """
        quoted = quote(container, safe="").encode("ascii")
        if isExec:
            asking = inspect(b"/exec/" + quoted + b"/json")

            def ofExec(answer: dict[str, Any]) -> Deferred[dict[str, Any]]:
                owner = answer.get("ContainerID")
                if not isinstance(owner, str):
                    raise ScopeError("the exec names no container")
                return inspect(
                    b"/containers/" + quote(owner, safe="").encode() + b"/json"
                )

            asking.addCallback(ofExec)
        else:
            asking = inspect(b"/containers/" + quoted + b"/json")
        what = ("exec " if isExec else "container ") + container

        def judged(answer: dict[str, Any]) -> str | None:
            if self.holds(answer):
                return None
            return f"{what} is not labelled {self.label}"

        def failed(failure) -> str:
            return f"{what} is not in scope ({failure.getErrorMessage()})"

        asking.addCallbacks(judged, failed)
        return asking
