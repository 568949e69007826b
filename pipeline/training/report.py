"""Evaluation metrics document and plots (ROC, reliability diagram, confusion matrix) for labelled scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.training.metrics import at_threshold, auc, ece, reliability


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="mergesort")
    labels = labels[order].astype(bool)
    tps = np.concatenate([[0], np.cumsum(labels)])
    fps = np.concatenate([[0], np.cumsum(~labels)])
    return fps / max(1, (~labels).sum()), tps / max(1, labels.sum())


def metrics_document(labels: np.ndarray, probs: np.ndarray, threshold_fake: float, threshold_real: float,
                     **extra: Any) -> dict[str, Any]:
    """The metrics.json body. Key names (auc, ece, accuracy, precision, recall, f1) are read by other tools."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    at_fake = at_threshold(labels, probs, threshold_fake)
    at_half = at_threshold(labels, probs, 0.5)
    reals = probs[labels == 0]
    fakes = probs[labels == 1]
    return {
        "n": int(len(labels)),
        "auc": auc(labels, probs),
        "ece": ece(labels, probs),
        "threshold": threshold_fake,
        "accuracy": at_fake.accuracy,
        "precision": at_fake.precision,
        "recall": at_fake.recall,
        "f1": at_fake.f1,
        "confusion_matrix": {"tp": at_fake.tp, "fp": at_fake.fp, "tn": at_fake.tn, "fn": at_fake.fn},
        "at_0.5": {"accuracy": at_half.accuracy, "precision": at_half.precision, "recall": at_half.recall,
                   "f1": at_half.f1},
        "verdict_bands": {
            "real_as_fake": float(np.mean(reals >= threshold_fake)) if len(reals) else None,
            "real_as_uncertain": float(np.mean((reals > threshold_real) & (reals < threshold_fake))) if len(reals) else None,
            "fake_as_real": float(np.mean(fakes <= threshold_real)) if len(fakes) else None,
            "fake_as_uncertain": float(np.mean((fakes > threshold_real) & (fakes < threshold_fake))) if len(fakes) else None,
        },
        "reliability": reliability(labels, probs),
        **extra,
    }


def write_plots(labels: np.ndarray, probs: np.ndarray, document: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    names = []
    fpr, tpr = roc_points(labels, probs)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"AUC {document['auc']:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=90)
    plt.close(fig)
    names.append("roc.png")

    rows = document["reliability"]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], ls="--", color="grey")
    ax.bar([r["confidence"] for r in rows], [r["accuracy"] for r in rows], width=0.08, alpha=0.7)
    ax.set_xlabel("predicted P(fake)")
    ax.set_ylabel("observed share of fakes")
    ax.set_title(f"reliability (ECE {document['ece']:.3f})")
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=90)
    plt.close(fig)
    names.append("reliability.png")

    cm = document["confusion_matrix"]
    grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(grid, cmap="Blues")
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, str(value), ha="center", va="center", color="black")
    ax.set_xticks([0, 1], ["pred real", "pred fake"])
    ax.set_yticks([0, 1], ["real", "fake"])
    ax.set_title(f"confusion at {document['threshold']:.3f}")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=90)
    plt.close(fig)
    names.append("confusion.png")
    return names


def markdown_report(document: dict[str, Any], plots: list[str]) -> str:
    cm = document["confusion_matrix"]
    lines = [
        f"# Evaluation: {document.get('data', '')}",
        "",
        f"Model `{document.get('model_version', '')}`, mode `{document.get('mode', '')}`, {document['n']} inputs.",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    for key in ("auc", "ece", "accuracy", "precision", "recall", "f1", "face_detection_rate"):
        value = document.get(key)
        lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += ["", f"Confusion at the shipped fake threshold {document['threshold']:.4f}: "
              f"TP {cm['tp']}, FP {cm['fp']}, TN {cm['tn']}, FN {cm['fn']}.", "",
              f"Statuses: {document.get('status_counts', {})}", ""]
    lines += [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"
