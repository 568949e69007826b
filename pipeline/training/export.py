"""Ship a run's best weights: calibrate on validation, measure what fp16 weights and bf16 inference cost in
validation AUC, and write the model folder the pipeline loads."""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.model import load_classifier, resolve_precision, save_model
from pipeline.training.data import load_crop, read_manifest
from pipeline.training.metrics import auc
from pipeline.training.train import TrainConfig, calibrate_folder, predict_logits, resolve_device

log = logging.getLogger(__name__)

FP16_AUC_TOLERANCE = 0.001  # fp16 weights ship only if they cost less validation AUC than this


def export_model(run: Path, out: Path, version: str, max_val: int = 0, min_face_side: int = 0) -> dict[str, Any]:
    cfg = TrainConfig.from_file(run / "config.json", out=str(run))
    device = resolve_device(cfg.device)
    root = Path(cfg.data)
    val = [s for s in read_manifest(root) if s.split == "val"][: max_val or None]
    calibration = calibrate_folder(run / "best", root, val, cfg, device)
    best = load_classifier(run / "best", device=device, precision="fp32", fold=False)
    crops = [load_crop(root, s, cfg.input_size) for s in val]
    labels = np.array([s.label for s in val])
    tta = cfg.tta_flip
    aucs = {"fp32": auc(labels, predict_logits(best.net, crops, best.meta, device, "fp32", tta_flip=tta))}
    if resolve_precision("auto", device) == "bf16":  # emulated elsewhere: slow, and not what serving picks there
        aucs["bf16_autocast"] = auc(labels, predict_logits(best.net, crops, best.meta, device, "bf16", tta_flip=tta))
    with tempfile.TemporaryDirectory() as scratch:
        save_model(best.net, best.meta, Path(scratch), half=True)
        half = load_classifier(scratch, device=device, precision="fp32", fold=False)
        aucs["fp16_weights"] = auc(labels, predict_logits(half.net, crops, half.meta, device, "fp32", tta_flip=tta))
    ship_half = aucs["fp32"] - aucs["fp16_weights"] < FP16_AUC_TOLERANCE
    meta = dataclasses.replace(best.meta, version=version, min_face_side=min_face_side, extra={
        **best.meta.extra, "validation": calibration, "validation_auc_by_precision": aucs,
        "weights_dtype": "float16" if ship_half else "float32", "run": str(run),
        "train_config": json.loads((run / "config.json").read_text()),
    })
    meta = save_model(best.net, meta, out, half=ship_half)
    log.info("shipped version=%s fp16=%s aucs=%s", version, ship_half, aucs)
    return {"version": version, "sha256": meta.sha256, "weights_dtype": meta.extra["weights_dtype"],
            "validation_auc_by_precision": aucs, **calibration}
