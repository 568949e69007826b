"""Erasure of an image (by sha256, image id or source): derivatives in the blob store, rows, a tombstone.

Blobs go before rows, so a failure half-way leaves rows pointing at missing objects (a re-run completes the
erasure), never objects no row remembers. A save that commits during an erasure is caught by the row
deletion, which re-reads under the content lock, and by a second pass over the blob store after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db.erasure_store import ErasurePlan, ErasureStore
from workers.known_fakes import forget_entries, home_index_file
from workers.processing import heatmap_keys
from workers.storage import BlobStore

log = logging.getLogger(__name__)


class NothingToErase(LookupError):
    """An image id that names no image."""


@dataclass
class ErasureReport:
    selector: str
    sha256: list[str]
    rows: dict[str, int]
    blobs_deleted: list[str] = field(default_factory=list)
    originals_deleted: list[str] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)  # keys still found after the erasure (should be none)

    def as_dict(self) -> dict[str, Any]:
        return {"selector": self.selector, "sha256": self.sha256, "rows": self.rows,
                "blobs_deleted": len(self.blobs_deleted), "originals_deleted": len(self.originals_deleted),
                "remaining": self.remaining}


def derivative_prefixes(sha256: str, model_versions: set[str]) -> list[str]:
    """Every prefix the pipeline and the API write an image's derivatives under (and `checks/`, where an
    embedded home keeps the originals uploaded on the console's check page)."""
    prefixes = [f"thumbnails/{sha256[:2]}/{sha256}", f"checks/{sha256[:2]}/{sha256}"]
    prefixes += [heatmap_keys(version, sha256)[0] + "/" for version in sorted(model_versions)]
    return prefixes


def s3_original_deleter(client: Any, input_buckets: tuple[str, ...]) -> Callable[[str], bool]:
    """Deletes s3://bucket/key originals in the configured input buckets (nothing elsewhere)."""
    def delete(uri: str) -> bool:
        if not uri.startswith("s3://"):
            return False
        bucket, _, key = uri[5:].partition("/")
        if bucket not in input_buckets or not key:
            return False
        client.delete_object(Bucket=bucket, Key=key)
        return True

    return delete


def erase(store: ErasureStore, blobs: BlobStore, *, erased_by: str, actor_role: str, reason: str,
          sha256: str | None = None, image_id: int | None = None, source: str | None = None,
          delete_original: Callable[[str], bool] | None = None, keep_originals: bool = False,
          index_file: Path | None = None) -> ErasureReport:
    """`index_file`: a saved bank index to drop the image's entries from (default: the embedded home's, when
    `store` opens an embedded home's database)."""
    plan = store.plan(sha256=sha256, image_id=image_id, source=source)
    if image_id is not None and not plan.images:
        raise NothingToErase(f"no image {image_id}")
    shas = plan.sha256s or ([sha256] if sha256 else [])
    keys = set(plan.blob_keys) | _listed(blobs, plan, shas)
    for key in sorted(keys):
        blobs.delete(key)
    deleter = None if keep_originals else delete_original
    tried = set(plan.originals)
    originals = [uri for uri in sorted(tried) if deleter is not None and deleter(uri)]
    rows = store.erase(plan, erased_by, actor_role, reason, sha256=sha256)
    shas = plan.sha256s or shas
    # what a save that committed before the rows went had written
    late = _listed(blobs, plan, shas) | {k for k in plan.blob_keys if blobs.exists(k)}
    for key in sorted(late):
        blobs.delete(key)
    keys |= late
    originals += [uri for uri in sorted(plan.originals - tried) if deleter is not None and deleter(uri)]
    index_file = index_file or home_index_file(store.engine)
    if index_file is not None:
        rows["index_file_entries"] = forget_entries(index_file, sorted(plan.bank_entries))
    remaining = sorted(_listed(blobs, plan, shas) | {k for k in plan.blob_keys if blobs.exists(k)})
    report = ErasureReport(plan.selector, shas, rows, sorted(keys), originals, remaining)
    log.warning("erased selector=%s images=%d blobs=%d originals=%d by=%s remaining=%d", plan.selector,
                len(plan.images), len(keys), len(originals), erased_by, len(remaining))
    return report


def _listed(blobs: BlobStore, plan: ErasurePlan, shas: list[str]) -> set[str]:
    return {key for prefix in _prefixes(plan, shas) for key in blobs.list_keys(prefix)}


def _prefixes(plan: ErasurePlan, shas: list[str]) -> list[str]:
    prefixes: list[str] = []
    for sha in shas:
        prefixes += derivative_prefixes(sha, plan.model_versions.get(sha, set()))
    return prefixes
