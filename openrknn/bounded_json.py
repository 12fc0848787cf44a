"""JSON from untrusted bytes with a nesting limit: `.rknn` metadata, a vendor file's trailer, protocol headers.

json.loads itself recurses once per level, so a few thousand nested brackets raise RecursionError (how deep depends on
the caller's stack). Here any document nested deeper than `max_depth` is refused the same way, whatever the stack, and
NaN / Infinity (not JSON) are refused too. Standard library only: the board side uses it.
"""

from __future__ import annotations

import json
from typing import Any


class JSONLimitError(ValueError):
    """The bytes are not JSON, or not JSON this reader accepts (too deep, NaN, not UTF-8)."""


def _refuse_constant(name: str) -> Any:
    raise JSONLimitError(f"{name} is not a JSON number")


def nesting_depth(obj: Any) -> int:
    """Levels of lists/objects in a decoded document (a scalar is 0). Iterative, so any depth is measured safely."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def loads(raw: bytes, max_depth: int) -> Any:
    """Decode UTF-8 JSON, refusing documents nested deeper than max_depth lists/objects."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise JSONLimitError(f"not UTF-8 ({e})") from None
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise JSONLimitError(f"nested deeper than {max_depth} levels of lists/objects") from None
    except JSONLimitError:
        raise
    except ValueError as e:  # JSONDecodeError, or an integer with more digits than Python converts
        raise JSONLimitError(str(e)) from None
    if nesting_depth(obj) > max_depth:
        raise JSONLimitError(f"nested deeper than {max_depth} levels of lists/objects")
    return obj
