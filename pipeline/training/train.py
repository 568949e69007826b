"""The training loop: pair-aware batches, auxiliary mask head, checkpoints every N steps, exact resume.

One run = one config file. The run folder holds config.json, metrics.jsonl (one line per epoch),
checkpoint.pt (the latest state), best/ (model.safetensors + model.json) and curves.png.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.model import (
    ARCHITECTURE_DEFAULTS,
    DetectorNet,
    ModelMetadata,
    build_network,
    crops_to_tensor,
    file_sha256,
    resolve_precision,
    save_model,
)
from pipeline.training.augment import AugmentConfig
from pipeline.training.data import (
    Pair,
    RealWithFakes,
    Sample,
    epoch_pairs,
    group_by_real,
    load_crop,
    make_pair_batch,
    read_manifest,
    read_pairs,
    unpaired_pairs,
)
from pipeline.training.metrics import auc, choose_thresholds, ece, fit_platt

log = logging.getLogger(__name__)

DATA_TERMS = (
    "DFDC (Deepfake Detection Challenge) face crops: research-only, non-commercial. "
    "Dolhansky et al., arXiv:2006.07397. Review the licence before any commercial use."
)


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str = "runs/default"
    seed: int = 1
    epochs: int = 6
    pairs_per_batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    dropout: float = 0.2
    # autocast on CPU/CUDA: auto | bf16 | fp16 | fp32. auto = bf16 only where the hardware computes it natively:
    # emulated bf16 on a CPU without bf16 units trains an order of magnitude slower than fp32
    precision: str = "auto"
    threads: int = 2
    device: str = "auto"
    mask_weight: float = 0.5  # 0 trains without the auxiliary mask head
    sbi_fraction: float = 0.0  # share of pairs whose fake is a self-blend of the real
    input_size: int = 224  # serving (and validation) input: the whole crop at native scale
    crop_margin: float = 0.0
    max_train_pairs: int = 0  # 0 = all (a smaller number is for smoke runs)
    max_val: int = 0
    checkpoint_every: int = 100  # steps
    max_fpr: float = 0.01  # fake threshold: at most this share of val reals auto-flagged
    max_miss: float = 0.05  # real threshold: at most this share of val fakes cleared
    version: str = ""
    init_from: str = ""  # a shipped model folder whose weights the run starts from; "" = the pretrained or random start
    # Lever switches for ablations: both default to the levers on.
    pair_batches: bool = True  # False: each batch's reals come from other pairs, with their own augmentation
    source_side: int = 224  # train crops are resized to this before the window is cut; 224 = native scale
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    architecture: str = "inception_resnet_v1"
    pretrained: str = ""  # folder of the original pretrained files (faceres-deep) the backbone starts from
    backbone_lr_scale: float = 1.0  # the backbone's learning rate as a share of `lr` (the head's)
    layer_decay: float = 1.0  # each backbone block's rate is this times the next one's (1 = one rate)
    head_only_steps: int = 0  # the backbone is held still for the first steps while the fresh head settles
    # "pairs": every (real, fake) row is a sample of the epoch; "all": one pair per real per epoch, its fakes
    # drawn in turn; "one": each real with its first fake only
    fakes_per_real: str = "pairs"
    extra_data: tuple[str, ...] = ()  # more families: face-crop folders (facecrops), reals and fakes unpaired
    extra_repeat: int = 1  # each extra family's pairs appear this many times an epoch (a small family's weight)
    tta_flip: bool = False  # validation (and the shipped model) average the logits of the crop and its mirror
    # > 0: validation, selection and export use an exponential moving average of the weights (per step);
    # averaging damps the late-epoch overfitting a fine-tune shows on a small set of identities
    ema_decay: float = 0.0
    # what picks the kept epoch: "main" = the main family's validation AUC; "mean" = the mean over it and every
    # extra family's, so a second family's gains are not thrown away for a flat main family
    select_on: str = "main"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        values = dict(data)
        if isinstance(values.get("extra_data"), list):
            values["extra_data"] = tuple(values["extra_data"])
        if isinstance(values.get("augment"), dict):
            aug: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values["augment"].items()}
            values["augment"] = AugmentConfig(**aug)
        if values.get("select_on", "main") not in ("main", "mean"):
            raise ValueError(f"select_on must be 'main' or 'mean', not {values['select_on']!r}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: Path, **overrides: Any) -> TrainConfig:
        data = json.loads(Path(path).read_text())
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _metadata(cfg: TrainConfig, version: str, **kw: Any) -> ModelMetadata:
    families = " + ".join([cfg.data, *cfg.extra_data])
    extra: dict[str, Any] = {}
    if cfg.pretrained:
        from pipeline.backbones import pretrained_files

        folder = Path(cfg.pretrained)
        source, names = pretrained_files(cfg.architecture)
        extra["pretrained"] = {"source": source, "sha256": {name: file_sha256(folder / name) for name in names}}
    return ModelMetadata(
        version=version,
        architecture=cfg.architecture,
        tta_flip=cfg.tta_flip,
        input_size=cfg.input_size,
        crop_margin=cfg.crop_margin,
        training_data=f"{families} (manifest.csv train split; validation split for selection and calibration)",
        terms=DATA_TERMS,
        extra=extra,
        **ARCHITECTURE_DEFAULTS[cfg.architecture],
        **kw,
    )


def _lr(cfg: TrainConfig, step: int, total: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _autocast(device: torch.device, precision: str):
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def predict_logits(
    net: torch.nn.Module, crops: list[np.ndarray], meta: ModelMetadata, device: torch.device, precision: str,
    batch: int = 64, tta_flip: bool = False,
) -> np.ndarray:
    net.eval()
    outs = []
    with torch.inference_mode(), _autocast(device, precision):
        for start in range(0, len(crops), batch):
            x = crops_to_tensor(crops[start : start + batch], meta).to(device)
            logits = net(x).float()
            if tta_flip:
                logits = (logits + net(x.flip(3)).float()) / 2
            outs.append(logits.squeeze(1).cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros(0)


class Trainer:
    def __init__(self, cfg: TrainConfig, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        self.root = Path(cfg.data)
        self.run = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        if cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        samples = read_manifest(self.root)
        pairs = [p for p in read_pairs(self.root, samples) if p.real.split == "train"]
        if cfg.fakes_per_real != "pairs":
            self.groups: list[RealWithFakes] = group_by_real(pairs)[: cfg.max_train_pairs or None]
            pairs = epoch_pairs(self.groups, 0, cfg.seed, cfg.fakes_per_real)
        elif cfg.max_train_pairs:
            pairs = pairs[: cfg.max_train_pairs]
        if not pairs:
            raise ValueError(f"no train pairs in {self.root}/manifest.csv")
        self.pairs: list[Pair] = pairs
        self.val: list[Sample] = [s for s in samples if s.split == "val"][: cfg.max_val or None]
        # other families: samples carry absolute paths (root / absolute path is the absolute path)
        self.extra_pairs: list[Pair] = []
        self.extra_val: dict[str, list[Sample]] = {}
        for folder in cfg.extra_data:
            if not (Path(folder) / "manifest.csv").is_file():
                raise ValueError(
                    f"extra family {folder} has no manifest.csv: cut its faces first, e.g. "
                    f"python -m pipeline.training.facecrops ../shared/data/gan-faces {folder}")
            extra = [replace(s, file=str(Path(folder).resolve() / s.file)) for s in read_manifest(Path(folder))]
            self.extra_pairs += unpaired_pairs(extra, "train", cfg.seed) * max(1, cfg.extra_repeat)
            self.extra_val[Path(folder).name] = [s for s in extra if s.split == "val"][: cfg.max_val or None]
        self.version = cfg.version or f"{cfg.architecture}-{Path(cfg.out).name}"
        self.meta = _metadata(cfg, self.version)
        torch.manual_seed(cfg.seed)
        self.net = build_network(cfg.architecture, mask_head=cfg.mask_weight > 0, dropout=cfg.dropout)
        if cfg.pretrained:
            load_pretrained = getattr(self.net, "load_pretrained", None)
            if load_pretrained is None:
                raise ValueError(f"{cfg.architecture} has no pretrained start; leave `pretrained` empty")
            load_pretrained(Path(cfg.pretrained))
        self.net = self.net.to(self.device)
        if cfg.init_from:
            self._warm_start(Path(cfg.init_from))
        self.net = self.net.to(memory_format=torch.channels_last)
        self.ema: DetectorNet | None = None
        if cfg.ema_decay > 0:
            self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.opt = torch.optim.AdamW(param_groups(self.net, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = max(1, (len(pairs) + len(self.extra_pairs)) // cfg.pairs_per_batch)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.state: dict[str, Any] = {"epoch": 0, "step": 0, "global_step": 0, "best_auc": -1.0, "history": []}
        self._val_crops: list[np.ndarray] | None = None
        self._extra_val_crops: dict[str, list[np.ndarray]] = {}

    def epoch_pairs(self, epoch: int) -> list[Pair]:
        """The pairs of one epoch, before shuffling: the same for an epoch whenever it is (re)started."""
        if self.cfg.fakes_per_real == "pairs":
            return self.pairs + self.extra_pairs
        return epoch_pairs(self.groups, epoch, self.cfg.seed, self.cfg.fakes_per_real) + self.extra_pairs

    def _warm_start(self, folder: Path) -> None:
        """Start from a shipped model's weights (sha256 checked). Heads it lacks, such as the training-only
        mask head, keep their fresh initialisation; anything else that does not fit is refused."""
        from pipeline.model import load_classifier

        shipped = load_classifier(folder, device=self.device, precision="fp32", fold=False)
        missing, unexpected = self.net.load_state_dict(shipped.net.state_dict(), strict=False)
        if unexpected or any(not k.startswith("mask_head.") for k in missing):
            raise ValueError(f"{folder} does not fit this network: missing={missing[:5]} unexpected={unexpected[:5]}")
        log.info("warm start from %s version=%s", folder, shipped.meta.version)

    # -- persistence ---------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save({"model": self.net.state_dict(), "opt": self.opt.state_dict(), "state": self.state,
                    "config": _config_dict(self.cfg),
                    "ema": self.ema.state_dict() if self.ema is not None else None}, tmp)
        os.replace(tmp, self.checkpoint_path)

    def try_resume(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        ckpt = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        if _comparable(ckpt["config"]) != _comparable(_config_dict(self.cfg)):
            raise ValueError(f"{self.checkpoint_path} was written by a different config; use a new --out")
        self.net.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["opt"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.state = ckpt["state"]
        log.info("resumed epoch=%s step=%s", self.state["epoch"], self.state["step"])
        return True

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        self.run.mkdir(parents=True, exist_ok=True)
        self.try_resume()  # first: a refused resume must leave the run's config.json as it was
        (self.run / "config.json").write_text(json.dumps(_config_dict(self.cfg), indent=2) + "\n")
        cfg = self.cfg
        grid = _mask_grid(self.net, cfg.augment.window, self.device)
        log.info("training on %s in %s (precision=%s)", self.device, resolve_precision(cfg.precision, self.device),
                 cfg.precision)
        while self.state["epoch"] < cfg.epochs:
            epoch = self.state["epoch"]
            pairs = self.epoch_pairs(epoch)
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(pairs))
            # a stream of its own: [seed, epoch, step] seeds each step's augmentation
            other = np.random.default_rng([cfg.seed, epoch, 1 << 31, 1]).permutation(len(pairs))
            bar = tqdm(range(self.state["step"], self.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not self.progress, initial=self.state["step"], total=self.steps_per_epoch)
            running = None
            started = time.time()
            for step in bar:
                window = slice(step * cfg.pairs_per_batch, (step + 1) * cfg.pairs_per_batch)
                chosen = [pairs[i] for i in order[window]]
                reals = None if cfg.pair_batches else [pairs[i] for i in other[window]]
                torch.manual_seed(hash((cfg.seed, epoch, step)) & 0x7FFFFFFF)  # dropout too replays on resume
                loss = self._train_step(chosen, np.random.default_rng([cfg.seed, epoch, step]), grid, reals)
                running = loss if running is None else 0.98 * running + 0.02 * loss
                self.state["step"] = step + 1
                self.state["global_step"] += 1
                bar.set_postfix(loss=f"{running:.4f}", val_auc=f"{self.state['best_auc']:.3f}")
                if (step + 1) % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
            val_auc = self._end_epoch(epoch, running, time.time() - started)
            bar.set_postfix(loss=f"{running or 0:.4f}", val_auc=f"{val_auc:.3f}")
            bar.close()
        return self.finish()

    def _train_step(self, chosen: list[Pair], rng: np.random.Generator, grid: int, reals: list[Pair] | None = None) -> float:
        cfg = self.cfg
        batch = make_pair_batch(self.root, chosen, rng, cfg.augment, grid, cfg.sbi_fraction, cfg.source_side, reals)
        x = crops_to_tensor(batch.images, self.meta, size=cfg.augment.window).to(self.device)
        y = torch.from_numpy(batch.labels).to(self.device)
        base = _lr(cfg, self.state["global_step"], self.total_steps)
        frozen = self.state["global_step"] < cfg.head_only_steps
        for group in self.opt.param_groups:
            group["lr"] = 0.0 if frozen and group["backbone"] else base * group["lr_scale"]
        self.net.train()
        with _autocast(self.device, cfg.precision):
            logits, mask = self.net.forward_with_mask(x)
        loss = F.binary_cross_entropy_with_logits(logits.float().squeeze(1), y)
        if mask is not None and cfg.mask_weight > 0:
            target = torch.from_numpy(batch.masks).to(self.device).unsqueeze(1)
            loss = loss + cfg.mask_weight * F.binary_cross_entropy_with_logits(mask.float(), target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
        self.opt.step()
        if self.ema is not None:
            update_ema(self.ema, self.net, cfg.ema_decay)
        return float(loss.detach())

    def val_crops(self) -> list[np.ndarray]:
        if self._val_crops is None:
            self._val_crops = [load_crop(self.root, s, self.cfg.input_size) for s in self.val]
        return self._val_crops

    def _end_epoch(self, epoch: int, loss: float | None, seconds: float) -> float:
        labels = np.array([s.label for s in self.val])
        judged = self.ema if self.ema is not None else self.net
        logits = predict_logits(judged, self.val_crops(), self.meta, self.device, self.cfg.precision,
                                tta_flip=self.cfg.tta_flip)
        val_auc = auc(labels, logits)
        row = {"epoch": epoch + 1, "train_loss": loss, "val_auc": val_auc, "seconds": round(seconds, 1),
               "images_per_s": round(2 * self.steps_per_epoch * self.cfg.pairs_per_batch / max(seconds, 1e-9), 2)}
        for name, samples in self.extra_val.items():
            if name not in self._extra_val_crops:
                self._extra_val_crops[name] = [load_crop(self.root, s, self.cfg.input_size) for s in samples]
            extra_logits = predict_logits(judged, self._extra_val_crops[name], self.meta, self.device,
                                          self.cfg.precision, tta_flip=self.cfg.tta_flip)
            row[f"val_auc_{name}"] = auc(np.array([s.label for s in samples]), extra_logits)
        score = row["selection_score"] = selection_score(row, self.cfg.select_on)
        self.state["history"].append(row)
        with (self.run / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        log.info("epoch=%s val_auc=%.4f selection=%.4f loss=%s", epoch + 1, val_auc, score, loss)
        if score > self.state["best_auc"]:
            self.state["best_auc"] = score
            save_model(judged, self.meta, self.run / "best")
        self.state["epoch"] = epoch + 1
        self.state["step"] = 0
        self.save_checkpoint()
        plot_curves(self.state["history"], self.run / "curves.png")
        return val_auc

    def finish(self) -> dict[str, Any]:
        """Calibrate the best weights on validation and write the final metadata beside them."""
        return calibrate_folder(self.run / "best", self.root, self.val, self.cfg, self.device)


def calibrate_folder(folder: Path, root: Path, val: list[Sample], cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    from pipeline.model import load_classifier

    classifier = load_classifier(folder, device=device, precision=cfg.precision, fold=False)
    crops = [load_crop(root, s, cfg.input_size) for s in val]
    labels = np.array([s.label for s in val])
    logits = predict_logits(classifier.net, crops, classifier.meta, device, cfg.precision, tta_flip=cfg.tta_flip)
    temperature, bias = fit_platt(labels, logits)
    probs = 1.0 / (1.0 + np.exp(-(logits / temperature + bias)))
    fake_t, real_t = choose_thresholds(labels, probs, cfg.max_fpr, cfg.max_miss)
    summary = {"val_auc": auc(labels, probs), "val_ece_raw": ece(labels, 1 / (1 + np.exp(-logits))),
               "val_ece": ece(labels, probs), "temperature": temperature, "logit_bias": bias,
               "threshold_fake": fake_t, "threshold_real": real_t, "max_fpr": cfg.max_fpr, "max_miss": cfg.max_miss}
    meta = replace(classifier.meta, temperature=temperature, logit_bias=bias, threshold_fake=fake_t, threshold_real=real_t,
                   extra={**classifier.meta.extra, "validation": summary})
    save_model(classifier.net, meta, folder)
    (folder.parent / "calibration.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax[0].set_title("train loss (EMA)")
    ax[1].plot(epochs, [h["val_auc"] for h in history], marker="o", color="C1")
    ax[1].set_title("validation AUC")
    for a in ax:
        a.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net, parameters and floating buffers alike."""
    for mine, theirs in zip(ema.state_dict().values(), net.state_dict().values(), strict=True):
        if mine.dtype.is_floating_point:
            mine.lerp_(theirs, 1.0 - decay)
        else:
            mine.copy_(theirs)


def selection_score(row: dict[str, Any], select_on: str) -> float:
    """The number an epoch is kept by (higher is better); `row` is one epoch's metrics row."""
    if select_on == "main":
        return float(row["val_auc"])
    if select_on == "mean":
        values = [row["val_auc"], *(v for k, v in row.items() if k.startswith("val_auc_"))]
        return float(np.mean(values))
    raise ValueError(f"select_on must be 'main' or 'mean', not {select_on!r}")


def param_groups(net: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups, each with its share of the scheduled rate (`lr_scale`) and whether it is backbone.

    A network without a `backbone.blocks` list (InceptionResnetV1, whose head lives inside its backbone) is one
    group at the full rate. Otherwise the head is at `lr`, the last block at `lr * backbone_lr_scale`, and each
    block before it `layer_decay` times the next; the stem takes the first block's rate."""
    blocks = getattr(getattr(net, "backbone", None), "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        return [{"params": list(net.parameters()), "lr_scale": 1.0, "backbone": False}]
    depth = len(blocks)
    groups: dict[float, list[torch.nn.Parameter]] = {}
    heads: list[torch.nn.Parameter] = []
    for name, param in net.named_parameters():
        if not name.startswith("backbone."):
            heads.append(param)
            continue
        parts = name.split(".")
        index = int(parts[2]) if parts[1] == "blocks" else 0
        scale = cfg.backbone_lr_scale * cfg.layer_decay ** (depth - 1 - index)
        groups.setdefault(scale, []).append(param)
    return ([{"params": heads, "lr_scale": 1.0, "backbone": False}]
            + [{"params": params, "lr_scale": scale, "backbone": True} for scale, params in groups.items()])


def _mask_grid(net: DetectorNet, window: int, device: torch.device) -> int:
    if net.mask_head is None:
        return 1
    with torch.inference_mode():
        _, mask = net.eval().forward_with_mask(torch.zeros(1, 3, window, window, device=device))
    assert mask is not None
    return int(mask.shape[-1])


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg)))


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    # Settings that do not change the result may differ between a run and its resume; a key a checkpoint
    # predates takes its default, so adding a setting does not orphan older runs.
    defaults = _config_dict(TrainConfig(data=str(config.get("data", ""))))
    merged = {**defaults, **config, "augment": {**defaults["augment"], **config.get("augment", {})}}
    return {k: v for k, v in merged.items() if k not in ("threads", "device", "checkpoint_every", "out")}
