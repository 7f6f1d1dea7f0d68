# -*- test-case-name: tests.policy.test_go_json -*-
"""
JSON read the way dockerd's Go `encoding/json` reads it into its structs,
so that a body rule judges what dockerd will do.

Python's `json` and Go's differ exactly where a check can be bypassed:

- Go matches an object's keys to struct fields case-insensitively, with
  its own folding (`unicode.ToUpper(unicode.ToLower(r))` per rune): not
  only `privileged` but `PRİVİLEGED` and `ſ`-for-`s` or the Kelvin sign
  for `k` reach the same field. Keys are compared here folded the same way.
- A key repeated in one object: Go decodes each into the same struct, so
  `{"HostConfig":{"Privileged":true},"HostConfig":{"Memory":0}}` MERGES
  into a privileged container, where Python's dict keeps the last. Keys
  that fold alike in one object are refused here (ambiguous), at any depth.
- Go stops at the first value of a stream in some decoders and rejects
  trailing data in others; invalid UTF-8 becomes U+FFFD in Go and an error
  in Python; Python accepts NaN and Infinity, Go does not. All are refused.

So `read_like_go` either gives a value in which every object maps folded
keys to values, with exactly one reading, or raises `AmbiguousJSON`.
"""

from __future__ import annotations

import json
from typing import Any


class AmbiguousJSON(ValueError):
    """
    A body whose reading could differ between the agent and dockerd.
    """


def fold(name: str) -> str:
    """
    Go's encoding/json folding of a field name: ASCII upper-cased, any
    other rune to the upper case of its lower case (simple mappings).
    """
    out = []
    for character in name:
        if character < "\x80":
            out.append(character.upper())
            continue
        lower = character.lower()
        # A full lower-case mapping of several runes (U+0130 to "i" and a
        # combining dot) starts with the simple one Go uses.
        lower = lower[0] if lower else character
        upper = lower.upper()
        out.append(upper if len(upper) == 1 else lower)
    return "".join(out)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    folded: dict[str, Any] = {}
    for key, value in pairs:
        name = fold(key)
        if name in folded:
            raise AmbiguousJSON(f"the key {key!r} appears twice in one object")
        folded[name] = value
    return folded


def _constant(name: str) -> Any:
    raise AmbiguousJSON(f"{name} is not JSON")


def read_like_go(body: bytes) -> Any:
    """
    The one reading of C{body}; objects have their keys folded (look them
    up with L{field}).

    @raise AmbiguousJSON: not exactly one JSON value in strict UTF-8, or a
        key that folds like another in the same object.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise AmbiguousJSON("the body is not valid UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_object, parse_constant=_constant)
    except AmbiguousJSON:
        raise
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            raise AmbiguousJSON("data after the JSON value") from None
        raise AmbiguousJSON(f"the body is not JSON ({e.msg})") from None
    except RecursionError:
        raise AmbiguousJSON("the body nests too deep") from None


def field(value: Any, name: str) -> Any:
    """
    The field C{name} of a folded object, as Go's decoder would fill it;
    None when absent or when C{value} is not an object.
    """
    if not isinstance(value, dict):
        return None
    return value.get(fold(name))
