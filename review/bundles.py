"""Evidence bundles: a zip of manifest.json, manifest.sig, the original and the heatmaps, and `verify_bundle`,
which checks one without the secret. The format and how an outside authority verifies it: docs/security.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pipeline.errors import InvalidInput
from review import signing
from review.context import ReviewContext

log = logging.getLogger(__name__)

FORMAT = "deepscreen-evidence/1"
MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"
MAX_SIGNATURE_BYTES = 4096
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


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


@dataclass(frozen=True)
class BundleSignature:
    """What manifest.sig states."""

    purpose: str
    timestamp: int
    hmac_sha256: str
    ed25519: str | None = None
    ed25519_key: str | None = None

    def text(self) -> str:
        lines = [f"purpose={self.purpose}", f"t={self.timestamp}", f"hmac-sha256={self.hmac_sha256}"]
        if self.ed25519:
            lines += [f"ed25519={self.ed25519}", f"ed25519-key={self.ed25519_key}"]
        return "\n".join(lines) + "\n"


def sign_manifest(secret: str, manifest_bytes: bytes, created_at: datetime,
                  key: Ed25519PrivateKey | None = None) -> BundleSignature:
    timestamp = int(created_at.timestamp())
    purpose = signing.BUNDLE_PURPOSE
    mac = signing.hmac_sign(secret, purpose, timestamp, manifest_bytes)
    if key is None:
        return BundleSignature(purpose, timestamp, mac)
    return BundleSignature(purpose, timestamp, mac, signing.ed25519_sign(key, purpose, timestamp, manifest_bytes),
                           signing.key_id(key.public_key()))


def parse_signature(text: bytes) -> BundleSignature:
    """manifest.sig's fields; BundleInvalid for anything but the purpose-labelled, timestamped form."""
    fields: dict[str, str] = {}
    for line in text.decode("ascii", errors="replace").splitlines():
        name, sep, value = line.strip().partition("=")
        if sep:
            fields[name] = value
    if "purpose" not in fields:
        # the unlabelled HMAC of earlier bundles was made under the raw secret that also signed webhooks
        raise BundleInvalid("legacy_signature" if "hmac-sha256" in fields else "signature_malformed")
    if fields["purpose"] != signing.BUNDLE_PURPOSE:
        raise BundleInvalid("wrong_purpose")
    if not fields.get("t", "").isdigit() or "hmac-sha256" not in fields:
        raise BundleInvalid("signature_malformed")
    return BundleSignature(fields["purpose"], int(fields["t"]), fields["hmac-sha256"], fields.get("ed25519"),
                           fields.get("ed25519-key"))


def signing_key(settings: Any) -> Ed25519PrivateKey | None:
    """The Ed25519 key bundles are signed with, when one is configured (SigningKeyError if it is unusable)."""
    path: Path | None = settings.bundle_signing_key_file
    return signing.load_private_key(Path(path)) if path else None


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
                                            "created_at", "threshold_fake", "threshold_real", "min_face_side")},
        "faces": [{k: f[k] for k in ("index", "box", "detection_probability", "fake_probability", "verdict")}
                  for f in item["faces"]],
        "history": [{k: h[k] for k in ("at", "actor", "actor_role", "action", "previous_state", "new_state", "note")}
                    for h in item["history"]],
        "files": [{"name": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                  for name, data in files],
        "missing": missing,
    }


def pack(manifest_bytes: bytes, signature: BundleSignature, files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, manifest_bytes)
        archive.writestr(SIGNATURE, signature.text())
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def create_bundle(ctx: ReviewContext, item_id: int, created_by: str) -> dict[str, Any]:
    """Build, sign and store the bundle of an item; returns its row (with `manifest` and `zip` added)."""
    key_pair = signing_key(ctx.settings)  # first: a broken key file stops the bundle before any work
    item = ctx.reviews.item(item_id)
    files, missing = collect_files(ctx, item)
    created_at = datetime.now(UTC)
    manifest = build_manifest(item, files, missing, created_by, created_at)
    manifest_bytes = canonical_json(manifest)
    signature = sign_manifest(ctx.settings.signing_secret.get_secret_value(), manifest_bytes, created_at, key_pair)
    archive = pack(manifest_bytes, signature, files)
    manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
    key = ctx.blobs.put(f"bundles/{item_id}/{manifest_sha256}.zip", archive, "application/zip")
    row = ctx.escalations.add_bundle(item_id, key, manifest_sha256, signature.hmac_sha256, created_by, created_at)
    log.info("bundle created item_id=%s bundle_id=%s files=%d missing=%d", item_id, row["id"], len(files),
             len(missing))
    return {**row, "manifest": json.loads(manifest_bytes), "zip": archive}


def verify_bundle(archive: bytes, secret: str | None = None,
                  public_key: Ed25519PublicKey | bytes | None = None) -> dict[str, Any]:
    """The manifest of a genuine, complete bundle; BundleInvalid(reason) otherwise. Checks the HMAC when
    given the secret, the Ed25519 signature when given the public key (PEM bytes or a key), or both."""
    if secret is None and public_key is None:
        raise ValueError("verify_bundle needs the signing secret or an Ed25519 public key")
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
            names = set(bundle.namelist())
            if MANIFEST not in names or SIGNATURE not in names:
                raise BundleInvalid("manifest_missing")
            if bundle.getinfo(SIGNATURE).file_size > MAX_SIGNATURE_BYTES or \
                    bundle.getinfo(MANIFEST).file_size > MAX_MANIFEST_BYTES:
                raise BundleInvalid("manifest_too_large")
            manifest_bytes = bundle.read(MANIFEST)
            stated = parse_signature(bundle.read(SIGNATURE))
            _check_signatures(stated, manifest_bytes, secret, public_key)
            manifest = json.loads(manifest_bytes)
            for entry in manifest["files"]:
                if entry["name"] not in names:
                    raise BundleInvalid(f"file_missing:{entry['name']}")
                if hashlib.sha256(bundle.read(entry["name"])).hexdigest() != entry["sha256"]:
                    raise BundleInvalid(f"file_altered:{entry['name']}")
            return manifest
    except zipfile.BadZipFile:
        raise BundleInvalid("not_a_zip") from None
    except (ValueError, KeyError, TypeError):
        raise BundleInvalid("manifest_malformed") from None


def _check_signatures(stated: BundleSignature, manifest_bytes: bytes, secret: str | None,
                      public_key: Ed25519PublicKey | bytes | None) -> None:
    if secret is not None and not signing.hmac_matches(secret, stated.purpose, stated.timestamp, manifest_bytes,
                                                       stated.hmac_sha256):
        raise BundleInvalid("bad_signature")
    if public_key is None:
        return
    key = signing.load_public_key(public_key) if isinstance(public_key, bytes) else public_key
    if not stated.ed25519:
        raise BundleInvalid("ed25519_missing")
    if not signing.ed25519_matches(key, stated.purpose, stated.timestamp, manifest_bytes, stated.ed25519):
        raise BundleInvalid("bad_signature")
