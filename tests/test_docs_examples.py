"""The examples of docs/tracking-api.md run as they are shown: every ```python block of the page, in order, in one
namespace (the blocks build on each other and assert their own results), so the page cannot go stale."""

from __future__ import annotations

import io
import re

import pytest
import torch
from torch import nn

from phd_lab.tracking import SaturationTracker
from tests.conftest import ROOT

PAGE = ROOT / "docs" / "tracking-api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def test_the_tracking_api_page_runs_as_shown(capsys):
    blocks = python_blocks(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) >= 6
    namespace: dict[str, object] = {"__name__": "tracking_api_docs"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"{PAGE.name}, python block {number}", "exec"), namespace)
    assert namespace["tracker"].closed  # type: ignore[attr-defined]


def test_a_model_with_a_tracker_attached_cannot_be_pickled_whole_as_the_page_says():
    model = nn.Sequential(nn.Linear(3, 2))
    with SaturationTracker(model):
        with pytest.raises(AttributeError, match="Can't pickle local object"):
            torch.save(model, io.BytesIO())
    torch.save(model, io.BytesIO())
