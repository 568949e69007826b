"""Model roll-outs inside a worker process: follow the registry's active (and canary) version between batches.

Each batch starts with one small registry query. A version seen for the first time is loaded once per process
(its sha256 checked against the registry's); versions no longer active or canary are dropped, so a process
holds at most three models (the one it started with, the active one and the canary). If the registry cannot
be read, or a new version fails to load, the process keeps screening with the model it has and says so in the
log: a roll-out problem never stops screening. A failed load is retried after `RETRY_FAILED_LOAD_S`, not at
every batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from db.model_registry import CanaryRecord, ModelRegistry, RegisteredModel
from pipeline.errors import ModelLoadError
from pipeline.screen import Screener, ScreenItem, Verdict

log = logging.getLogger(__name__)

BuildScreener = Callable[[Path, bool], Screener]  # (model folder, canary?) -> a screener
RETRY_FAILED_LOAD_S = 300.0


@dataclass(frozen=True)
class Models:
    active: Screener
    canary: Screener | None = None
    canary_fraction: float = 0.0


class ModelSwitch:
    def __init__(self, registry: ModelRegistry, build: BuildScreener, fallback: Screener) -> None:
        self.registry = registry
        self.build = build
        self.fallback = fallback  # the model the process started with (settings): used while none is active
        self._loaded: dict[tuple[str, bool], Screener] = {(fallback.classifier.version, False): fallback}
        self._current = Models(fallback)
        self._failed: dict[tuple[str, str, bool], float] = {}  # (version, sha256, canary) -> monotonic time

    def current(self) -> Models:
        try:
            roles = self.registry.roles()
        except Exception as exc:  # noqa: BLE001 - a registry outage keeps the current models
            log.warning("model registry unreadable (%s); keeping version=%s", type(exc).__name__,
                        self._current.active.classifier.version)
            return self._current
        active = self._load(roles.active, canary=False) if roles.active else self.fallback
        if active is None:
            active = self._current.active
        canary = self._load(roles.canary, canary=True) if roles.canary else None
        keep = {(active.classifier.version, False), (self.fallback.classifier.version, False)}
        if canary is not None:
            keep.add((canary.classifier.version, True))
        for key in [k for k in self._loaded if k not in keep]:
            del self._loaded[key]  # a retired version's weights are freed
        if active is not self._current.active:
            log.info("model switched version=%s (was %s)", active.classifier.version,
                     self._current.active.classifier.version)
        fraction = roles.canary.canary_fraction if (roles.canary and canary is not None) else 0.0
        self._current = Models(active, canary, fraction)
        return self._current

    def _load(self, model: RegisteredModel, canary: bool) -> Screener | None:
        key = (model.version, canary)
        screener = self._loaded.get(key)
        if screener is not None:
            return screener
        failed_at = self._failed.get((model.version, model.sha256, canary))
        if failed_at is not None and time.monotonic() - failed_at < RETRY_FAILED_LOAD_S:
            return None
        try:
            screener = self.build(Path(model.folder), canary)
            if screener.classifier.meta.sha256 != model.sha256:
                raise ModelLoadError(f"{model.folder} holds sha256 {screener.classifier.meta.sha256[:12]}, "
                                     f"the registry says {model.sha256[:12]}")
            if screener.classifier.version != model.version:
                raise ModelLoadError(f"{model.folder} holds version {screener.classifier.version}, "
                                     f"the registry says {model.version}")
        except Exception as exc:  # noqa: BLE001 - a bad roll-out must not stop screening
            log.error("cannot load model version=%s from %s: %s (retry in %.0f s)", model.version, model.folder, exc,
                      RETRY_FAILED_LOAD_S)
            self._failed[(model.version, model.sha256, canary)] = time.monotonic()
            return None
        log.info("model loaded for %s version=%s", "canary" if canary else "active", model.version)
        self._loaded[key] = screener
        return screener


def in_canary(sha256: str, fraction: float) -> bool:
    """Deterministic by content: the same image is always in (or out of) the canary sample."""
    return fraction > 0 and int(sha256[:8], 16) / 0x1_0000_0000 < fraction


def run_canary(models: Models, items: Sequence[ScreenItem], verdicts: Sequence[Verdict],
               event_ids: dict[str, str]) -> list[CanaryRecord]:
    """Score the canary sample of this batch with the canary model; only the comparison is kept."""
    if models.canary is None:
        return []
    by_key = {v.key: v for v in verdicts}
    sample = [i for i in items if by_key.get(i.key) is not None and by_key[i.key].sha256
              and by_key[i.key].status == "scored" and in_canary(by_key[i.key].sha256 or "", models.canary_fraction)]
    if not sample:
        return []
    records = []
    for verdict in models.canary.screen_batch(sample):
        active = by_key[verdict.key]
        records.append(CanaryRecord(
            image_sha256=active.sha256 or "", event_id=event_ids.get(verdict.key, ""),
            active_version=active.model_version, canary_version=verdict.model_version,
            active_verdict=active.verdict or active.status, canary_verdict=verdict.verdict or verdict.status,
            active_probability=active.fake_probability, canary_probability=verdict.fake_probability))
    return records
