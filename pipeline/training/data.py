"""The labelled face-crop dataset: manifest, real/fake pairs and pair-aware batches."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.csv_cells import restore_cell
from pipeline.decode import decode_image
from pipeline.faces import resize_square
from pipeline.training.augment import AugmentConfig, AugmentParams, apply_params, difference_mask, draw_params
from pipeline.training.sbi import self_blend

SOURCE_SIDE = 224  # the dataset's crops are 224 x 224; serving cuts MTCNN boxes to the same side


@dataclass(frozen=True)
class Sample:
    file: str  # relative to the dataset root
    label: int  # 1 = fake
    group: str
    split: str


@dataclass(frozen=True)
class Pair:
    real: Sample
    fake: Sample | None  # None: the fake is made on the fly (self-blend)


def read_manifest(root: Path) -> list[Sample]:
    """manifest.csv: file,label,group,split (dataset is optional)."""
    path = root / "manifest.csv"
    with path.open(newline="") as handle:
        rows = [{k: restore_cell(v) if isinstance(v, str) else v for k, v in row.items()}
                for row in csv.DictReader(handle)]  # manifests we write quote formula-like cells
    samples = []
    for row in rows:
        label = row["label"].strip().lower()
        if label not in ("real", "fake"):
            raise ValueError(f"{path}: label must be real or fake, got {label!r}")
        samples.append(Sample(row["file"], int(label == "fake"), row.get("group", ""), row.get("split", "train")))
    return samples


def read_pairs(root: Path, samples: list[Sample]) -> list[Pair]:
    """Pair each fake with the real it was made from (source_videos.csv), within one split.

    Without provenance, fakes and reals of the same group are zipped: the pair-aware batch still holds
    one of each class, but the difference mask is not meaningful then.
    """
    by_file = {s.file: s for s in samples}
    provenance = root / "source_videos.csv"
    pairs: list[Pair] = []
    if provenance.is_file():
        with provenance.open(newline="") as handle:
            for row in csv.DictReader(handle):
                original = (row.get("dfdc_original_video") or "").strip()
                fake = by_file.get(row["file"])
                if not original or fake is None or fake.label != 1:
                    continue
                real = by_file.get(f"real/{Path(original).stem}.jpg")
                if real is not None and real.split == fake.split:
                    pairs.append(Pair(real, fake))
        if pairs:
            return pairs
    reals = [s for s in samples if s.label == 0]
    fakes = [s for s in samples if s.label == 1]
    return [Pair(r, f) for r, f in zip(reals, fakes, strict=False)]


@dataclass(frozen=True)
class RealWithFakes:
    """A real and every fake made from it, in the order the provenance file lists them (its first fake is
    the one the first build of the data set paired it with)."""

    real: Sample
    fakes: tuple[Sample, ...]


def group_by_real(pairs: list[Pair]) -> list[RealWithFakes]:
    """The pairs gathered per real, keeping the order in which each real first appears."""
    fakes: dict[Sample, list[Sample]] = {}
    for pair in pairs:
        fakes.setdefault(pair.real, [])
        if pair.fake is not None:
            fakes[pair.real].append(pair.fake)
    return [RealWithFakes(real, tuple(found)) for real, found in fakes.items()]


def epoch_pairs(groups: list[RealWithFakes], epoch: int, seed: int, fakes: str = "all") -> list[Pair]:
    """One pair per real for this epoch. `fakes` = "all": each real's fakes are drawn in turn, in an order
    shuffled once per real, so over n epochs a real with n fakes shows each of them once and a batch never
    holds the same real twice. "one": always the real's first fake (the first build's one-fake-per-real)."""
    if fakes not in ("all", "one"):
        raise ValueError(f"fakes must be 'all' or 'one', got {fakes!r}")
    chosen = []
    for index, group in enumerate(groups):
        if not group.fakes:
            chosen.append(Pair(group.real, None))
            continue
        if fakes == "one":
            chosen.append(Pair(group.real, group.fakes[0]))
            continue
        order = np.random.default_rng([seed, index, 7]).permutation(len(group.fakes))
        chosen.append(Pair(group.real, group.fakes[int(order[epoch % len(group.fakes)])]))
    return chosen


def unpaired_pairs(samples: list[Sample], split: str, seed: int) -> list[Pair]:
    """For a family without provenance (fully generated faces): each real of `split` beside a fake of the
    same split, drawn without replacement; pair-aware batches still get one of each class, and no sample
    crosses into another split."""
    rng = np.random.default_rng([seed, 11])
    reals = [s for s in samples if s.split == split and s.label == 0]
    fakes = [s for s in samples if s.split == split and s.label == 1]
    reals = [reals[i] for i in rng.permutation(len(reals))]
    fakes = [fakes[i] for i in rng.permutation(len(fakes))]
    return [Pair(r, f) for r, f in zip(reals, fakes, strict=False)]


def load_crop(root: Path, sample: Sample, side: int = SOURCE_SIDE) -> np.ndarray:
    """The crop as serving sees it: decoded by the pipeline's decoder and resized to side x side."""
    return resize_square(decode_image((root / sample.file).read_bytes()).pixels, side)


@dataclass(frozen=True)
class PairBatch:
    images: list[np.ndarray]  # real_0, fake_0, real_1, fake_1, ...
    labels: np.ndarray  # float32
    masks: np.ndarray  # float32 (N, grid, grid): manipulation mask targets (zeros for reals)
    params: list[AugmentParams]  # of each image; both members of a pair share one


def make_pair_batch(
    root: Path,
    pairs: list[Pair],
    rng: np.random.Generator,
    cfg: AugmentConfig,
    mask_grid: int,
    sbi_fraction: float = 0.0,
    source_side: int = SOURCE_SIDE,
    reals: list[Pair] | None = None,
) -> PairBatch:
    """A batch of real/fake pairs: each fake with its own real, one draw of augmentation for both.

    `source_side` below 224 downscales the crop before the window is cut (the "native resolution" lever
    switched off). `reals`, when given, switches the pair-aware lever off: the batch's reals are those pairs'
    reals, each with its own augmentation draw, so a real and its own fake rarely share a batch. The fakes'
    mask targets still come from their own reals.
    """
    images: list[np.ndarray] = []
    labels: list[float] = []
    masks: list[np.ndarray] = []
    params: list[AugmentParams] = []
    for pair in pairs:
        real = load_crop(root, pair.real, source_side)
        use_sbi = pair.fake is None or rng.random() < sbi_fraction
        fake = self_blend(real, rng) if use_sbi else load_crop(root, pair.fake, source_side)  # type: ignore[arg-type]
        p = draw_params(rng, source_side, cfg)
        fake_aug = apply_params(fake, p, cfg.window)
        # The mask is the manipulation only: against the real WITHOUT its real-only extra blur.
        reference = apply_params(real, p, cfg.window)
        real_aug = apply_params(real, p, cfg.window, real=True) if p.real_blur_sigma > 0 else reference
        images += [real_aug, fake_aug]
        labels += [0.0, 1.0]
        masks += [np.zeros((mask_grid, mask_grid), np.float32), difference_mask(reference, fake_aug, mask_grid)]
        params += [p, p]
    if reals is not None:
        # Drawn after every fake's, so the fakes and their augmentation are those of the paired batch.
        for index, other in enumerate(reals):
            q = draw_params(rng, source_side, cfg)
            images[2 * index] = apply_params(load_crop(root, other.real, source_side), q, cfg.window, real=True)
            params[2 * index] = q
    return PairBatch(images, np.asarray(labels, np.float32), np.stack(masks), params)
