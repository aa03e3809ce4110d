"""Every ```python block of docs/chapter.md runs, each in a fresh namespace.

A block whose first lines contain ``# requires: <module>`` is skipped when that module is not installed
(e.g. the local MiniLM weights package for the LanguageEncoder example).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "chapter.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
ANY_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
HEADING = re.compile(r"^#{1,6} +(.+?)\s*$", re.M)
REQUIRES = re.compile(r"^#\s*requires:\s*([\w.]+)\s*$", re.M)

# Every class / function of the chapter must have its own section.
CHAPTER_NAMES = [
    "MultiHeadAttention", "FeedForward", "MultimodalTransformerBlock", "MultimodalEncoder", "VisionLanguageFusion",
    "LateFusion", "EarlyFusion", "VisionEncoder", "get_2d_sincos_pos_embed", "LanguageEncoder",
    "TextProcessingModule", "ActionEncoder", "ActionDecoder", "ActionSequenceProcessor", "CrossModalAttention",
    "MultimodalFusionNetwork", "ContrastiveLoss", "MultimodalContrastiveLearning", "MultimodalPretrainingTask",
    "MultimodalEvaluator", "MultimodalMixtureOfExperts", "ConditionalComputationGate",
]


def _headings(text: str) -> list[tuple[int, str]]:
    """Markdown headings (offset, title), ignoring ``#`` comment lines inside fenced code."""
    fenced = [m.span() for m in ANY_FENCE.finditer(text)]
    return [
        (m.start(), m.group(1))
        for m in HEADING.finditer(text)
        if not any(a <= m.start() < b for a, b in fenced)
    ]


def _blocks() -> list[tuple[str, str]]:
    """(id, code) per python block; the id is the nearest heading above the block plus a counter."""
    text = DOC.read_text(encoding="utf-8")
    headings = _headings(text)
    out: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for m in FENCE.finditer(text):
        title = next((h for pos, h in reversed(headings) if pos < m.start()), "top")
        key = re.sub(r"[^\w]+", "-", title.split(" — ")[0]).strip("-").lower() or "block"
        seen[key] = seen.get(key, 0) + 1
        line = text.count("\n", 0, m.start()) + 1
        out.append((f"{key}-{seen[key]}-L{line}", m.group(1)))
    return out


BLOCKS = _blocks()


def test_doc_has_examples_for_every_chapter_class() -> None:
    text = DOC.read_text(encoding="utf-8")
    headings = [h for _, h in _headings(text)]
    missing = [n for n in CHAPTER_NAMES if not any(h.startswith(n) for h in headings)]
    assert not missing, f"docs/chapter.md has no section for {missing}"
    assert len(BLOCKS) >= len(CHAPTER_NAMES) - 2  # FeedForward-style sections may share, but not many


@pytest.mark.parametrize("code", [c for _, c in BLOCKS], ids=[i for i, _ in BLOCKS])
def test_example_runs(code: str) -> None:
    for module in REQUIRES.findall(code):
        pytest.importorskip(module)
    torch.manual_seed(0)
    namespace: dict[str, object] = {"__name__": "__chapter_example__"}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the docs' own examples
