"""Label selectors in their string form (a `/scale`'s `status.selector`), matched
locally against the labels of pods in the informer's cache.

The grammar of k8s.io/apimachinery's labels.Parse: requirements separated by commas,
each `key`, `!key`, `key=value`, `key==value`, `key!=value`, `key in (a,b)` or
`key notin (a,b)`; all must hold. An empty selector matches everything.

Pure: strings in, a predicate out; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

__all__ = ["SelectorError", "equalities", "parse_selector"]

Labels = Mapping[str, str]
_SET = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s+\(([^()]*)\)\s*$")
_EQUALITY = re.compile(r"^\s*([^\s!=(),]+)\s*(==|!=|=)\s*([^\s!=(),]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s*$")


class SelectorError(ValueError):
    """Not a label selector."""


def _split(text: str) -> list[str]:
    """The requirements: commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in {text!r}")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise SelectorError(f"unbalanced '(' in {text!r}")
    parts.append(text[start:])
    return parts


def _requirement(part: str) -> Callable[[Labels], bool]:
    if (found := _SET.match(part)) is not None:
        key, op, values = found.group(1), found.group(2), found.group(3)
        allowed = frozenset(v.strip() for v in values.split(",") if v.strip())
        if op == "in":
            return lambda labels: labels.get(key) in allowed
        return lambda labels: labels.get(key) not in allowed
    if (found := _EQUALITY.match(part)) is not None:
        key, op, value = found.group(1), found.group(2), found.group(3)
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if (found := _EXISTS.match(part)) is not None:
        negated, key = found.group(1) == "!", found.group(2)
        if negated:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise SelectorError(f"not a label selector requirement: {part!r}")


def parse_selector(text: str) -> Callable[[Labels], bool]:
    """A predicate on a label map; SelectorError for a string that is no selector."""
    if not text.strip():
        return lambda _labels: True
    requirements = [_requirement(part) for part in _split(text)]
    return lambda labels: all(requirement(labels) for requirement in requirements)


def equalities(text: str) -> list[tuple[str, str]]:
    """The `key=value` (or `==`, or `in` of one value) requirements: a pod must carry
    each of these labels, so an index by label finds the candidates."""
    pairs = []
    for part in _split(text) if text.strip() else []:
        if (found := _EQUALITY.match(part)) is not None and found.group(2) != "!=":
            pairs.append((found.group(1), found.group(3)))
        elif (found := _SET.match(part)) is not None and found.group(2) == "in":
            values = [v.strip() for v in found.group(3).split(",") if v.strip()]
            if len(values) == 1:
                pairs.append((found.group(1), values[0]))
    return pairs
