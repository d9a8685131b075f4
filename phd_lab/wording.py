"""Counts and lists in the words of messages: '1 epoch' and '3 epochs', the first names of a long list."""

from __future__ import annotations

from typing import Sequence


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, the noun in the plural unless the count is one ('1 epoch', '3 epochs', '0 layers'):
    for nouns whose plural adds an s, the rule every message of a count follows."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def first_names(names: Sequence[str], shown: int = 8, what: str = "layers") -> str:
    """The first ``shown`` of ``names`` joined by commas, then ' ... (N layers in all)' where there are more: a
    warning naming the layers of a model of hundreds stays one readable line."""
    more = f" ... ({len(names)} {what} in all)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
