"""Counts and lists in the words of messages: '1 epoch' and '3 epochs', the first names of a long list, bytes."""

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


def clipped(text: str, limit: int = 120) -> str:
    """``text``, or its words that fit in ``limit`` characters followed by ' ...': a message repeated as a reminder
    ('the same (...) for N more grid points') names its first clause without breaking off in the middle of a word."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 4]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + " ..."


def byte_amount(count: int) -> str:
    """Bytes for a message: decimal units, as disks are sold and ``df -H`` shows them, and the exact count
    ('2.6 MB (2,616,432 bytes)'; '512 bytes')."""
    size, unit = float(count), "bytes"
    for bigger in ("kB", "MB", "GB", "TB", "PB", "EB"):
        if size < 1000:
            break
        size, unit = size / 1000, bigger
    return f"{count:,} bytes" if unit == "bytes" else f"{size:.1f} {unit} ({count:,} bytes)"
