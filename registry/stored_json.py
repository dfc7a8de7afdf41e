"""JSON documents lorareg stores and serves back, such as a version's ``adapter_config.json``.

A document is kept only if every later reader can load it and every response can carry it:

* nested at most :data:`MAX_DEPTH` levels (Python's parser and encoders recurse per level;
  a few hundred levels exhaust the interpreter's recursion limit),
* integers within 64 bits (Python refuses to parse integers of more than 4300 digits, and
  most other JSON readers lose precision past 2**53 or fail past 2**63),
* finite numbers only (``NaN`` and ``Infinity`` are not JSON: PostgreSQL refuses them and
  strict clients cannot parse them),
* strings and keys of valid Unicode (a lone surrogate such as ``"\\ud800"`` parses, but
  cannot be encoded as UTF-8, so every response carrying it would fail).

The same :func:`loads` runs at push, before anything is written, and on every read of stored
data, so a row written by an older release degrades to "config unavailable" instead of failing
the response it is part of.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32
MAX_WHERE = 120  # characters of a location such as $['rank_pattern']['q_proj'] in messages
INT_LIMIT = 2**63
# More digits than this cannot be within INT_LIMIT; checked before int() parses the text.
_MAX_INT_DIGITS = len(str(INT_LIMIT))
_SURROGATE = re.compile("[\ud800-\udfff]")


class UnsafeJSON(ValueError):
    """The document breaks one of the rules above; the message says which, and where."""


def loads(raw: str | bytes) -> Any:
    """Parse ``raw`` (UTF-8 if bytes) and check it; UnsafeJSON names the first broken rule."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                           parse_constant=_parse_constant)
    except UnicodeDecodeError as exc:
        raise UnsafeJSON(f"is not valid UTF-8 ({exc})") from None
    except json.JSONDecodeError as exc:
        raise UnsafeJSON(f"is not valid JSON ({exc})") from None
    except RecursionError:
        # The C parser stops cleanly at the interpreter's recursion limit.
        raise UnsafeJSON(f"is nested deeper than {MAX_DEPTH} levels") from None
    check(value)
    return value


def check(value: Any) -> None:
    """Walk a parsed document (without recursion) and raise UnsafeJSON at the first problem."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "$")]  # (node, its level: top is 1, where)
    while stack:
        node, level, where = stack.pop()
        if level > MAX_DEPTH and isinstance(node, dict | list):
            raise UnsafeJSON(f"is nested deeper than {MAX_DEPTH} levels (at {where})")
        if isinstance(node, dict):
            for key, child in node.items():
                _check_scalar(key, f"a key in {where}")
                stack.append((child, level + 1, _at(where, f"[{key!r}]")))
        elif isinstance(node, list):
            stack.extend((child, level + 1, _at(where, f"[{i}]")) for i, child in enumerate(node))
        else:
            _check_scalar(node, where)


def _at(where: str, step: str) -> str:
    """The location of a child, cut short: keys may be long, and every child carries one."""
    return (where + step)[:MAX_WHERE]


def _check_scalar(node: Any, where: str) -> None:
    if isinstance(node, str):
        if bad := _SURROGATE.search(node):
            raise UnsafeJSON(f"holds a lone surrogate U+{ord(bad.group()):04X} at {where} "
                             "(not valid Unicode; UTF-8 cannot encode it)")
    elif isinstance(node, bool) or node is None:
        return
    elif isinstance(node, int):
        if not -INT_LIMIT <= node < INT_LIMIT:
            raise UnsafeJSON(f"holds an integer outside 64 bits at {where}")
    elif isinstance(node, float):
        if not math.isfinite(node):
            raise UnsafeJSON(f"holds {node} at {where} (only finite numbers are JSON)")
    else:
        raise UnsafeJSON(f"holds a {type(node).__name__} at {where}")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise UnsafeJSON(f"holds an integer of {len(text)} digits (at most 64-bit integers)")
    value = int(text)
    if not -INT_LIMIT <= value < INT_LIMIT:
        raise UnsafeJSON(f"holds the integer {text}, outside 64 bits")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UnsafeJSON(f"holds the number {text[:40]}, which overflows a double")
    return value


def _parse_constant(name: str) -> float:
    raise UnsafeJSON(f"holds {name} (only finite numbers are JSON)")
