"""JSON from the network, bounded. `json.loads` alone turns some small bodies into server errors: `[` x 16,000
raises RecursionError, a 5,000-digit integer a ValueError about Python's int conversion limit, and `1e999` or
`NaN` become floats no JSON peer can read back. `parse_json` refuses each with a JsonBodyError whose message
says what is wrong; each server wraps it in its own error shape (a 400)."""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 32  # objects and arrays nested in one another; real bodies here are a few levels deep
MAX_INT_DIGITS = 40  # beyond 2**64 already; JSON peers cannot hold bigger integers exactly anyway


class JsonBodyError(ValueError):
    """The text is not JSON this server accepts; the message says why (without the server's internals)."""


def _int(text: str, max_digits: int) -> int:
    digits = len(text.lstrip("-"))
    if digits > max_digits:
        raise JsonBodyError(f"a number has {digits} digits; at most {max_digits} are accepted")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonBodyError(f"the number {text[:40]}{'...' if len(text) > 40 else ''} is too large for a double")
    return value


def _constant(name: str) -> Any:
    raise JsonBodyError(f"{name} is not a JSON value")


def depth(value: Any) -> int:
    """How deeply objects and arrays nest in `value` (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            level += 1
            deepest = max(deepest, level)
            stack.extend((child, level) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json(raw: str | bytes, *, max_depth: int = MAX_DEPTH, max_int_digits: int = MAX_INT_DIGITS) -> Any:
    """The JSON value in `raw` (UTF-8 when bytes); JsonBodyError naming what is wrong otherwise."""
    try:
        value = json.loads(
            raw,
            parse_int=lambda s: _int(s, max_int_digits),
            parse_float=_float,
            parse_constant=_constant,
        )
    except JsonBodyError:
        raise
    except RecursionError:  # the C decoder gives up well past any sane depth; it unwinds cleanly
        raise JsonBodyError(f"it nests arrays and objects more than {max_depth} levels deep") from None
    except UnicodeDecodeError as e:
        raise JsonBodyError(f"it is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except ValueError as e:  # json.JSONDecodeError included
        raise JsonBodyError(str(e)) from None
    if depth(value) > max_depth:
        raise JsonBodyError(f"it nests arrays and objects more than {max_depth} levels deep")
    return value
