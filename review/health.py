"""Readiness of `deepscreen serve`: Postgres, Redis, the blob store and the model, each checked on its own.

/healthz says the process answers; /readyz says it can do its work. Each check is short (timeouts of a few
seconds) and names itself, so a 503 says which part failed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from review.context import ReviewContext

TIMEOUT_S = 3


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "seconds": round(self.seconds, 4)}


def _postgres(ctx: ReviewContext) -> str:
    with ctx.store.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return ctx.store.engine.dialect.name


def _redis(ctx: ReviewContext) -> str:
    if ctx.celery_app is None:
        return "not used (embedded)"
    import redis

    client = redis.Redis.from_url(ctx.settings.broker_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
    try:
        client.ping()
    finally:
        client.close()
    return "pong"


def _blobs(ctx: ReviewContext) -> str:
    client = getattr(ctx.blobs, "client", None)
    if client is not None:
        client.head_bucket(Bucket=ctx.blobs.bucket)  # type: ignore[attr-defined]
        return f"bucket {ctx.blobs.bucket}"  # type: ignore[attr-defined]
    root = Path(getattr(ctx.blobs, "root", "."))
    root.mkdir(parents=True, exist_ok=True)
    return f"folder {root}"


def _model(ctx: ReviewContext) -> str:
    from pipeline.model import WEIGHTS_FILE, read_metadata

    if ctx._runtime is not None:  # noqa: SLF001 - loaded for the check page: it is the one serving
        return f"loaded {ctx._runtime.screener.model_version}"  # noqa: SLF001
    folder = Path(ctx.settings.model_dir)
    meta = read_metadata(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{WEIGHTS_FILE} missing in {folder}")
    return f"{meta.version} (loads on first use)"


CHECKS = (("postgres", _postgres), ("redis", _redis), ("blob_store", _blobs), ("model", _model))


def readiness(ctx: ReviewContext) -> list[Check]:
    results = []
    for name, check in CHECKS:
        started = time.perf_counter()
        try:
            detail, ok = check(ctx), True
        except Exception as exc:  # noqa: BLE001 - any failure is this part's failure, named
            detail, ok = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}", False
        results.append(Check(name, ok, detail, time.perf_counter() - started))
    return results
