"""Retention, applied daily by beat (`deepscreen.retention`) or by hand (`deepscreen retention`); what it
deletes and keeps is in docs/operations.md. Every step deletes what is expired now, so a run is idempotent
and an interrupted one is finished by the next.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from db.erasure_store import ErasureStore
from workers.storage import BlobStore

log = logging.getLogger(__name__)
CHUNK = 500


def apply_retention(store: ErasureStore, blobs: BlobStore, heatmap_days: int, verdict_days: int,
                    now: datetime | None = None) -> dict[str, int]:
    now = now or datetime.now(UTC)
    done = {"heatmap_verdicts": 0, "heatmap_blobs": 0, "verdicts": 0, "verdict_blobs": 0, "events": 0,
            "images": 0, "thumbnails": 0}
    heatmap_cutoff = now - timedelta(days=heatmap_days)
    while expired := store.expired_heatmaps(heatmap_cutoff, CHUNK):
        for keys in expired.values():
            for key in keys:
                blobs.delete(key)
                done["heatmap_blobs"] += 1
        store.forget_heatmaps(list(expired))
        done["heatmap_verdicts"] += len(expired)
    verdict_cutoff = now - timedelta(days=verdict_days)
    while (batch := store.expired_verdicts(verdict_cutoff, CHUNK)).verdict_ids:
        for key in sorted(batch.blob_keys):
            blobs.delete(key)
        done["verdict_blobs"] += len(batch.blob_keys)
        done["verdicts"] += store.delete_verdicts(batch.verdict_ids)["verdicts"]
    images = store.expired_orphans(verdict_cutoff)["images"]
    for sha in images.values():
        for key in blobs.list_keys(f"thumbnails/{sha[:2]}/{sha}"):
            blobs.delete(key)
            done["thumbnails"] += 1
    orphans = store.delete_orphans(verdict_cutoff, list(images))
    done["events"], done["images"] = orphans["events"], orphans["images"]
    log.info("retention applied heatmap_days=%d verdict_days=%d %s", heatmap_days, verdict_days,
             " ".join(f"{k}={v}" for k, v in done.items()))
    return done
