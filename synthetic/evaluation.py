"""Quality measures for segmentation and OCR against known layouts (synthetic/pages.py), for tests and benchmarks.

Boxes are matched one-to-one, greedily by descending IoU, which is the usual detection-style matching and
needs no optimiser; text is compared after casefolding and removing all whitespace, because OCR engines
disagree about spaces (especially between Chinese and Latin characters) but not about the characters."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.geometry import Box


def match_boxes(truth: Sequence[Box], found: Sequence[Box], *, iou: float = 0.5) -> list[tuple[int, int]]:
    """(truth index, found index) pairs with IoU >= `iou`, each box used at most once, best overlaps first."""
    candidates = sorted(
        ((truth_box.iou(found_box), t, f) for t, truth_box in enumerate(truth) for f, found_box in enumerate(found)
         if truth_box.intersection(found_box)),
        reverse=True,
    )  # fmt: skip
    matched_truth: set[int] = set()
    matched_found: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for overlap, t, f in candidates:
        if overlap < iou:
            break
        if t in matched_truth or f in matched_found:
            continue
        matched_truth.add(t)
        matched_found.add(f)
        pairs.append((t, f))
    return pairs


def recall(truth: Sequence[Box], found: Sequence[Box], *, iou: float = 0.5) -> float:
    """Fraction of true boxes matched by a found box; 1.0 when there is nothing to find."""
    if not truth:
        return 1.0
    return len(match_boxes(truth, found, iou=iou)) / len(truth)


def normalise_text(text: str) -> str:
    return "".join(text.casefold().split())


def text_recall(expected: Sequence[str], read: Sequence[str]) -> float:
    """Fraction of expected strings that occur in the read text: inside one read string, or across
    consecutive ones (a label OCR split in two). Empty expected strings don't count."""
    wanted = [normalise_text(text) for text in expected if normalise_text(text)]
    if not wanted:
        return 1.0
    joined = "".join(normalise_text(text) for text in read)
    return sum(1 for text in wanted if text in joined) / len(wanted)
