"""Builds a Runtime (loaded models + adapters) from Settings: distributed (Postgres + S3) or embedded."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from db.migrate import upgrade
from db.store import Store
from pipeline.faces import FaceDetector
from pipeline.model import load_classifier
from pipeline.screen import Screener
from workers.processing import Runtime
from workers.settings import Settings
from workers.storage import InputReader, LocalBlobStore, S3BlobStore, s3_client

log = logging.getLogger(__name__)


def configure_torch(settings: Settings) -> None:
    torch.set_num_threads(settings.torch_threads)


def build_screener(settings: Settings, crops: bool = False) -> Screener:
    configure_torch(settings)
    classifier = load_classifier(settings.model_dir, device=settings.device, precision=settings.precision)
    if classifier.meta.placeholder:
        log.warning("model=%s is a PLACEHOLDER with random weights: its verdicts mean nothing", classifier.version)
    config = settings.screen_config(crops=crops)
    detector = None if crops else FaceDetector(config.detector, device=settings.device)
    return Screener(classifier, config, detector)


def distributed_runtime(settings: Settings) -> Runtime:
    client = s3_client(settings.s3_endpoint_url, settings.s3_region)
    return Runtime(
        screener=build_screener(settings),
        store=Store.from_url(settings.database_url),
        blobs=S3BlobStore(client, settings.s3_bucket),
        reader=InputReader(client, tuple(settings.input_buckets), allow_local=False, max_bytes=settings.max_image_bytes),
        fetch_threads=settings.fetch_threads,
    )


def embedded_runtime(settings: Settings, home: Path, crops: bool = False) -> Runtime:
    home.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{(home / 'deepscreen.sqlite3').resolve()}"
    upgrade(url)
    return Runtime(
        screener=build_screener(settings, crops=crops),
        store=Store.from_url(url),
        blobs=LocalBlobStore(home / "blobs"),
        reader=InputReader(allow_local=True, max_bytes=settings.max_image_bytes),
        fetch_threads=settings.fetch_threads,
    )
