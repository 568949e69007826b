"""`deepscreen evaluate` on a tiny labelled folder: its metrics against a hand computation."""

from __future__ import annotations

import csv
import dataclasses
import json
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.main import main


@pytest.fixture()
def tiny_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    for label, count in (("real", 3), ("fake", 3)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / label / f"{label}{i}.png")
    (tmp_path / "data" / "fake" / "broken.jpg").write_bytes(b"<html>no</html>")
    return tmp_path / "data"


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    from pipeline.model import METADATA_FILE, make_placeholder

    folder = tmp_path / "model"
    meta = make_placeholder(folder)
    # thresholds inside the placeholder's narrow output range, so both classes of prediction occur
    meta = dataclasses.replace(meta, threshold_fake=0.4913, threshold_real=0.49)
    (folder / METADATA_FILE).write_text(meta.to_json())
    return folder


def test_evaluate_metrics_match_a_hand_computation(tiny_folder: Path, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["evaluate", "--data", str(tiny_folder), "--crops", "--out", str(out), "--model", str(model),
                 "--threads", "1", "--no-progress"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    with (out / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 7 and metrics["n"] == 7
    labels = np.array([1 if r["label"] == "fake" else 0 for r in rows])
    probs = np.array([float(r["fake_probability"]) if r["fake_probability"] else 0.0 for r in rows])
    broken = [r for r in rows if r["file"].endswith("broken.jpg")][0]
    assert broken["status"] == "invalid_input" and broken["reason"] == "not_an_image"
    # AUC by counting every (fake, real) pair, ties half
    pairs = list(product(probs[labels == 1], probs[labels == 0]))
    hand_auc = sum(1.0 if f > r else 0.5 if f == r else 0.0 for f, r in pairs) / len(pairs)
    assert metrics["auc"] == pytest.approx(hand_auc)
    threshold = metrics["threshold"]
    predicted = probs >= threshold
    tp = int(np.sum(predicted & (labels == 1)))
    fp = int(np.sum(predicted & (labels == 0)))
    tn = int(np.sum(~predicted & (labels == 0)))
    fn = int(np.sum(~predicted & (labels == 1)))
    assert metrics["confusion_matrix"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert metrics["accuracy"] == pytest.approx((tp + tn) / 7)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn)
    assert metrics["precision"] == pytest.approx(precision)
    assert metrics["recall"] == pytest.approx(recall)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    assert metrics["f1"] == pytest.approx(f1)
    assert metrics["status_counts"] == {"scored": 6, "invalid_input": 1}
    assert metrics["face_detection_rate"] == pytest.approx(6 / 7)
    for name in ("roc.png", "reliability.png", "confusion.png", "report.md"):
        assert (out / name).stat().st_size > 0


def test_evaluate_reads_a_labels_csv_and_refuses_bad_labels(tiny_folder: Path, model: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("file,label\nreal/real0.png,real\nfake/fake0.png,fake\n")
    out = tmp_path / "out"
    assert main(["evaluate", "--data", str(tiny_folder), "--labels", str(csv_path), "--crops", "--out", str(out),
                 "--model", str(model), "--threads", "1", "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["n"] == 2
    csv_path.write_text("file,label\nreal/real0.png,maybe\n")
    assert main(["evaluate", "--data", str(tiny_folder), "--labels", str(csv_path), "--out", str(out),
                 "--model", str(model), "--no-progress"]) == 2
