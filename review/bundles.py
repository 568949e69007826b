"""Evidence bundles: a zip of manifest.json (sha256 of every file, model version, timestamps, the decision
history), manifest.sig (HMAC-SHA256 of manifest.json under the signing secret), the original and the heatmaps.

Verifying a bundle needs only the secret: check the HMAC of manifest.json, then each file's sha256.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import zipfile
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from pipeline.errors import InvalidInput
from review.context import ReviewContext

log = logging.getLogger(__name__)

FORMAT = "deepscreen-evidence/1"
MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"


class BundleInvalid(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def canonical_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=_json_default).encode()


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sign(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def _suffix(key: str | None) -> str:
    """A stored key's file suffix (".jpg"), or "" for a missing key."""
    return PurePosixPath(key).suffix if key else ""


def _extension(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def collect_files(ctx: ReviewContext, item: dict[str, Any]) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The files of a bundle, and the names of those that could not be read (listed in the manifest)."""
    files: list[tuple[str, bytes]] = []
    missing: list[str] = []
    try:
        data = ctx.reader.read(item["image"]["uri"])
        files.append((f"original.{_extension(data)}", data))
    except (InvalidInput, OSError) as exc:
        missing.append(f"original ({getattr(exc, 'reason', type(exc).__name__)})")
    # heatmaps are JPEG; verdicts written before that change point at PNGs, so the name follows the key
    keys = [(f"heatmap{_suffix(item['verdict']['heatmap_key'])}", item["verdict"]["heatmap_key"])]
    for face in item["faces"]:
        keys.append((f"faces/face-{face['index']}-heatmap{_suffix(face['heatmap_key'])}", face["heatmap_key"]))
        keys.append((f"faces/face-{face['index']}-crop.jpg", face["crop_key"]))
    for name, key in keys:
        if not key:
            continue
        try:
            files.append((name, ctx.blobs.get(key)))
        except Exception as exc:  # noqa: BLE001 - a bundle with a named gap beats no bundle
            missing.append(f"{name} ({type(exc).__name__})")
    return files, missing


def build_manifest(item: dict[str, Any], files: list[tuple[str, bytes]], missing: list[str], created_by: str,
                   created_at: datetime) -> dict[str, Any]:
    image, verdict = item["image"], item["verdict"]
    return {
        "format": FORMAT,
        "created_at": created_at,
        "created_by": created_by,
        "review_item": {k: item[k] for k in ("id", "state", "reason", "source", "created_at", "decision",
                                              "decided_by", "decided_at")},
        "image": {k: image[k] for k in ("id", "sha256", "uri", "source", "width", "height", "size_bytes",
                                        "uploaded_at")},
        "verdict": {k: verdict[k] for k in ("id", "model_version", "status", "verdict", "fake_probability",
                                            "created_at")},
        "faces": [{k: f[k] for k in ("index", "box", "detection_probability", "fake_probability", "verdict")}
                  for f in item["faces"]],
        "history": [{k: h[k] for k in ("at", "actor", "actor_role", "action", "previous_state", "new_state", "note")}
                    for h in item["history"]],
        "files": [{"name": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                  for name, data in files],
        "missing": missing,
    }


def pack(manifest_bytes: bytes, signature: str, files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, manifest_bytes)
        archive.writestr(SIGNATURE, f"hmac-sha256={signature}\n")
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def create_bundle(ctx: ReviewContext, item_id: int, created_by: str) -> dict[str, Any]:
    """Build, sign and store the bundle of an item; returns its row (with `manifest` and `zip` added)."""
    item = ctx.reviews.item(item_id)
    files, missing = collect_files(ctx, item)
    created_at = datetime.now(UTC)
    manifest = build_manifest(item, files, missing, created_by, created_at)
    manifest_bytes = canonical_json(manifest)
    signature = sign(ctx.settings.signing_secret.get_secret_value(), manifest_bytes)
    archive = pack(manifest_bytes, signature, files)
    manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
    key = ctx.blobs.put(f"bundles/{item_id}/{manifest_sha256}.zip", archive, "application/zip")
    row = ctx.escalations.add_bundle(item_id, key, manifest_sha256, signature, created_by, created_at)
    log.info("bundle created item_id=%s bundle_id=%s files=%d missing=%d", item_id, row["id"], len(files),
             len(missing))
    return {**row, "manifest": json.loads(manifest_bytes), "zip": archive}


def verify_bundle(archive: bytes, secret: str) -> dict[str, Any]:
    """The manifest of a genuine, complete bundle; BundleInvalid(reason) otherwise."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
            names = set(bundle.namelist())
            if MANIFEST not in names or SIGNATURE not in names:
                raise BundleInvalid("manifest_missing")
            manifest_bytes = bundle.read(MANIFEST)
            stated = bundle.read(SIGNATURE).decode().strip().removeprefix("hmac-sha256=")
            if not hmac.compare_digest(stated, sign(secret, manifest_bytes)):
                raise BundleInvalid("bad_signature")
            manifest = json.loads(manifest_bytes)
            for entry in manifest["files"]:
                if entry["name"] not in names:
                    raise BundleInvalid(f"file_missing:{entry['name']}")
                if hashlib.sha256(bundle.read(entry["name"])).hexdigest() != entry["sha256"]:
                    raise BundleInvalid(f"file_altered:{entry['name']}")
            return manifest
    except zipfile.BadZipFile:
        raise BundleInvalid("not_a_zip") from None
