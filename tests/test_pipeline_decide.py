"""pipeline.decide: thresholds -> fake / real / uncertain; the image score is the max over faces."""

from __future__ import annotations

import math

import pytest

from pipeline.decide import Thresholds, decide, image_score, needs_review

T = Thresholds(fake=0.9, real=0.5)


@pytest.mark.parametrize(
    ("probability", "label"),
    [
        (0.9, "fake"),  # at the fake threshold: fake
        (0.95, "fake"),
        (1.0, "fake"),
        (math.nextafter(0.9, 0.0), "uncertain"),
        (0.7, "uncertain"),
        (math.nextafter(0.5, 1.0), "uncertain"),
        (0.5, "real"),  # at the real threshold: real
        (0.0, "real"),
    ],
)
def test_threshold_boundaries(probability: float, label: str) -> None:
    assert decide(probability, T) == label


def test_equal_thresholds_leave_no_uncertain_band() -> None:
    same = Thresholds(fake=0.6, real=0.6)
    assert decide(0.6, same) == "fake"  # fake wins at the shared boundary
    assert decide(math.nextafter(0.6, 0.0), same) == "real"


def test_nan_probability_goes_to_review() -> None:
    assert decide(float("nan"), T) == "uncertain"


@pytest.mark.parametrize(("fake", "real"), [(0.4, 0.5), (1.1, 0.5), (0.9, -0.1), (float("nan"), 0.5)])
def test_invalid_thresholds(fake: float, real: float) -> None:
    with pytest.raises(ValueError, match="real"):
        Thresholds(fake=fake, real=real)


def test_extreme_thresholds_are_valid() -> None:
    assert Thresholds(fake=1.0, real=0.0)
    assert decide(0.99, Thresholds(fake=1.0, real=0.0)) == "uncertain"


def test_image_score() -> None:
    assert image_score([0.1, 0.8, 0.3]) == 0.8
    assert image_score([0.42]) == 0.42
    assert image_score(()) is None
    assert image_score([]) is None


def test_needs_review() -> None:
    assert needs_review("fake") and needs_review("uncertain")
    assert not needs_review("real") and not needs_review(None)
