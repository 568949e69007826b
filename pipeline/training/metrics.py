"""Metrics, calibration and threshold choice for a binary real(0)/fake(1) scorer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula, ties counted half. NaN when one class is missing."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error over equal-width probability bins."""
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(probs, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.sum() * abs(probs[members].mean() - labels[members].mean())
    return float(total / len(probs))


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(probs, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        if members.any():
            rows.append({"bin": b, "count": int(members.sum()), "confidence": float(np.mean(probs[members])),
                         "accuracy": float(np.mean(labels[members]))})
    return rows


@dataclass(frozen=True)
class BinaryReport:
    auc: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    tn: int
    fn: int


def at_threshold(labels: np.ndarray, probs: np.ndarray, threshold: float) -> BinaryReport:
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(probs) >= threshold
    tp = int((predicted & labels).sum())
    fp = int((predicted & ~labels).sum())
    tn = int((~predicted & ~labels).sum())
    fn = int((~predicted & labels).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = (tp + tn) / len(labels) if len(labels) else float("nan")
    return BinaryReport(auc(labels, probs), accuracy, precision, recall, f1, tp, fp, tn, fn)


def fit_temperature(labels: np.ndarray, logits: np.ndarray) -> float:
    """The temperature T minimising the log loss of sigmoid(logit / T), by golden-section search on log T."""
    labels = np.asarray(labels, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)

    def nll(log_t: float) -> float:
        z = logits / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, z) - labels * z))

    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(math.exp((lo + hi) / 2))


def fit_platt(labels: np.ndarray, logits: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """(T, b) minimising the log loss of sigmoid(logit / T + b): a temperature and a shift. The shift matters
    when a network's logits sit off-centre (scores of reals above zero on balanced data), which a temperature
    alone cannot correct. Newton's method on (1 / T, b) from the temperature fit, with a line search."""
    labels = np.asarray(labels, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)

    def nll(params: np.ndarray) -> float:
        z = params[0] * logits + params[1]
        return float(np.mean(np.logaddexp(0.0, z) - labels * z))

    params = np.array([1.0 / fit_temperature(labels, logits), 0.0])
    features = np.stack([logits, np.ones_like(logits)], axis=1)
    for _ in range(iterations):
        probs = 1.0 / (1.0 + np.exp(-(features @ params)))
        gradient = features.T @ (probs - labels) / len(labels)
        hessian = (features * (probs * (1 - probs))[:, None]).T @ features / len(labels) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        scale, before = 1.0, nll(params)
        while scale > 1e-6 and nll(params - scale * step) > before:
            scale /= 2
        params = params - scale * step
        if np.abs(scale * step).max() < 1e-10:
            break
    if params[0] <= 0:  # scores that rank fakes below reals: no temperature makes sense; keep the plain fit
        return fit_temperature(labels, logits), 0.0
    return float(1.0 / params[0]), float(params[1])


def choose_thresholds(
    labels: np.ndarray, probs: np.ndarray, max_fpr: float = 0.01, max_miss: float = 0.05
) -> tuple[float, float]:
    """(fake, real) thresholds: `fake` flags at most max_fpr of reals, `real` clears at most max_miss of fakes.

    When the two cross (real and fake scores cleanly separated), the real threshold is pulled down to the
    fake one, so the uncertain band is empty rather than inverted.
    """
    labels = np.asarray(labels).astype(bool)
    probs = np.asarray(probs, dtype=np.float64)
    reals, fakes = np.sort(probs[~labels]), np.sort(probs[labels])
    k = int(math.floor(max_fpr * len(reals)))
    fake_threshold = float(np.nextafter(reals[len(reals) - 1 - k], 1.0)) if len(reals) else 0.5
    m = int(math.floor(max_miss * len(fakes)))
    real_threshold = float(np.nextafter(fakes[m], 0.0)) if len(fakes) else 0.5
    fake_threshold = min(max(fake_threshold, 1e-6), 1.0)
    return fake_threshold, min(real_threshold, fake_threshold)
