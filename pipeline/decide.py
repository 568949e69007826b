"""Thresholds -> fake / real / uncertain. The image score is the maximum over its faces."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

VerdictLabel = Literal["fake", "real", "uncertain"]
# A face's verdict when it is smaller than the model can judge: recorded, and left out of the image's score.
FACE_TOO_SMALL = "too_small"


@dataclass(frozen=True)
class Thresholds:
    fake: float  # calibrated P(fake) at or above: fake
    real: float  # at or below: real; in between: uncertain (human review)

    def __post_init__(self) -> None:
        if not 0.0 <= self.real <= self.fake <= 1.0:
            raise ValueError(f"need 0 <= real ({self.real}) <= fake ({self.fake}) <= 1")


def decide(fake_probability: float, thresholds: Thresholds) -> VerdictLabel:
    if fake_probability >= thresholds.fake:
        return "fake"
    if fake_probability <= thresholds.real:
        return "real"
    return "uncertain"


def image_score(face_probabilities: Sequence[float]) -> float | None:
    """One manipulated face makes the image manipulated: the maximum. None when there is no face."""
    return max(face_probabilities) if face_probabilities else None


def too_small(box: tuple[float, float, float, float], min_side: int) -> bool:
    """Whether a face box (x1, y1, x2, y2 in full-resolution pixels) is below the model's smallest face."""
    return min_side > 0 and max(box[2] - box[0], box[3] - box[1]) < min_side


def needs_review(verdict: str | None) -> bool:
    return verdict in ("fake", "uncertain")
