"""Builds a Runtime (loaded models + adapters) from Settings: distributed (Postgres + S3) or embedded."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from sqlalchemy import Engine
from threadpoolctl import threadpool_limits

from db.known_fakes import BankStore
from db.migrate import home_database
from db.model_registry import ModelRegistry, RegistryError
from db.store import Store
from pipeline.faces import FaceDetector
from pipeline.model import load_classifier
from pipeline.screen import Screener
from workers.known_fakes import KnownFakeMemory
from workers.processing import Runtime
from workers.rollout import ModelSwitch
from workers.settings import Settings
from workers.storage import InputReader, LocalBlobStore, S3BlobStore, s3_client

log = logging.getLogger(__name__)


def configure_torch(settings: Settings) -> None:
    """torch's threads, and numpy's BLAS held to the same count. PDQ's downsample is numpy matrix products on
    the screening threads; OpenBLAS would start threads of its own for them, which spin against the forward's
    (`scan --crops`: the decode-and-hash stage 3.2 ms a crop with them, 0.8 with one)."""
    torch.set_num_threads(settings.torch_threads)
    threadpool_limits(limits=settings.torch_threads, user_api="blas")


def build_screener(settings: Settings, crops: bool = False, model_dir: Path | None = None,
                   heatmaps: str | None = None, detector: FaceDetector | None = None) -> Screener:
    configure_torch(settings)
    classifier = load_classifier(model_dir or settings.model_dir, device=settings.device, precision=settings.precision)
    if classifier.meta.placeholder:
        log.warning("model=%s is a PLACEHOLDER with random weights: its verdicts mean nothing", classifier.version)
    config = settings.screen_config(crops=crops)
    if heatmaps is not None:
        config = replace(config, heatmaps=heatmaps)
    if detector is None and not crops:
        detector = FaceDetector(config.detector, device=classifier.device)  # "auto" resolved once
    return Screener(classifier, config, None if crops else detector)


def model_switch(settings: Settings, engine: Engine, screener: Screener) -> ModelSwitch:
    """Follow the registry. The first process to start registers its own model and, if nothing is active yet,
    activates it, so a fresh deployment's registry is never empty."""
    registry = ModelRegistry(engine)
    meta = screener.classifier.meta
    try:
        registry.register(meta.version, meta.sha256, str(Path(settings.model_dir).resolve()), by="worker")
        if registry.roles().active is None:
            registry.activate(meta.version)
    except RegistryError as exc:
        log.warning("model registry: %s", exc)

    def build(folder: Path, canary: bool) -> Screener:  # the detector is shared: it does not change with the model
        return build_screener(settings, model_dir=folder, heatmaps="none" if canary else None,
                              detector=screener.detector)

    return ModelSwitch(registry, build, screener)


def known_fake_memory(settings: Settings, store: Store, index_path: Path | None = None) -> KnownFakeMemory | None:
    if not settings.known_fakes:
        return None
    return KnownFakeMemory(BankStore(store.engine), settings.known_fake_distance, settings.bank_refresh_s, index_path)


def worker_screener(settings: Settings) -> Screener:
    """A worker process's model, with its pool child's share of the screening threads."""
    return build_screener(settings.pool_child())


def distributed_runtime(settings: Settings, screener: Screener | None = None) -> Runtime:
    """A worker process's runtime. `screener`, when given, is the `worker_screener` this process already
    loaded: the runtime's database half can fail in an outage, and the model need not load again."""
    if screener is None:
        screener = worker_screener(settings)
    settings = settings.pool_child()
    client = s3_client(settings.s3_endpoint_url, settings.s3_region)
    store = Store.from_url(settings.database_url)
    return Runtime(
        screener=screener,
        store=store,
        blobs=S3BlobStore(client, settings.s3_bucket),
        reader=InputReader(client, tuple(settings.input_buckets), allow_local=False, max_bytes=settings.max_image_bytes),
        fetch_threads=settings.fetch_threads,
        models=model_switch(settings, store.engine, screener),
        known_fakes=known_fake_memory(settings, store),
    )


def embedded_runtime(settings: Settings, home: Path, crops: bool = False) -> Runtime:
    store = Store.from_url(home_database(home), fast_commits=True)  # screening writes only: see db.engine.connect
    return Runtime(
        screener=build_screener(settings, crops=crops),
        store=store,
        blobs=LocalBlobStore(home / "blobs"),
        reader=InputReader(allow_local=True, max_bytes=settings.max_image_bytes),
        fetch_threads=1,  # local files and a local folder: nothing to wait on, so no threads to wait with
        known_fakes=known_fake_memory(settings, store, index_path=home / "known_fakes_index.npz"),
    )
