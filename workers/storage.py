"""Blob stores (S3 via boto3, or a local folder) behind one small interface, and the input reader.

Only configured buckets are read: an event cannot make a worker fetch an arbitrary URL.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path
from typing import Protocol

from pipeline.errors import InvalidInput

log = logging.getLogger(__name__)


OPAQUE = "application/octet-stream"
# Raster formats the decoder reads, by magic bytes: (content type, key suffix). MPO starts as a JPEG.
_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg", ".jpg"), (b"\x89PNG\r\n\x1a\n", "image/png", ".png"),
    (b"GIF87a", "image/gif", ".gif"), (b"GIF89a", "image/gif", ".gif"), (b"II*\x00", "image/tiff", ".tif"),
    (b"MM\x00*", "image/tiff", ".tif"), (b"BM", "image/bmp", ".bmp"),
)
_SUFFIX_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
                 ".webp": "image/webp", ".tif": "image/tiff", ".tiff": "image/tiff", ".bmp": "image/bmp"}
# What a stored object may say it is: a type a browser renders without running anything, or a download.
# text/html, image/svg+xml and XML types can carry script, so they (and any client's guess) become OPAQUE.
SAFE_CONTENT_TYPES = frozenset({*_SUFFIX_TYPES.values(), "application/zip", "application/json", OPAQUE})


def _image_signature(data: bytes) -> tuple[str, str] | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", ".webp"
    return next(((kind, suffix) for magic, kind, suffix in _SIGNATURES if data.startswith(magic)), None)


def original_content_type(data: bytes) -> str:
    """The content type an uploaded original is stored with: its raster format by magic bytes, else OPAQUE."""
    found = _image_signature(data)
    return found[0] if found else OPAQUE


def original_suffix(data: bytes) -> str:
    """The key suffix of an uploaded original (".jpg", ...), from its magic bytes; "" when not an image."""
    found = _image_signature(data)
    return found[1] if found else ""


def safe_content_type(content_type: str) -> str:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind if kind in SAFE_CONTENT_TYPES else OPAQUE


def response_content_type(key: str) -> str:
    """The type a link to `key` answers with: a raster type by the key's suffix, else OPAQUE. Objects outside
    producers wrote may say text/html; a link never passes that on."""
    name = key.rsplit("/", 1)[-1]
    suffix = name[name.rfind("."):].lower() if "." in name else ""
    return _SUFFIX_TYPES.get(suffix, OPAQUE)


class TransientError(RuntimeError):
    """Infrastructure trouble (S3 or the database unreachable): retry later, never a verdict."""


class BlobStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> str: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def locate(self, key: str) -> str: ...
    def list_keys(self, prefix: str) -> list[str]: ...


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"unsafe blob key {key!r}")
    return key


class LocalBlobStore:
    """A folder on disk (embedded mode). Writes are atomic: a reader never sees half a file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._made: set[str] = set()  # folders this store has made (or found): a scan writes thousands of blobs

    def _path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        path = os.path.join(self.root, _safe_key(key))
        folder, name = os.path.split(path)
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
        except FileNotFoundError:  # the folder went away since (a deleted home, a retention sweep): make it again
            os.makedirs(folder, exist_ok=True)
            with open(tmp, "wb") as handle:
                handle.write(data)
        os.replace(tmp, path)
        return key

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def locate(self, key: str) -> str:
        return str(self._path(key))

    def list_keys(self, prefix: str) -> list[str]:
        if not self.root.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not k.rsplit("/", 1)[-1].startswith("."))


def s3_client(endpoint_url: str | None, region: str):  # noqa: ANN201 - boto3 client type is dynamic
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30)
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _is_missing(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound")


class S3BlobStore:
    def __init__(self, client, bucket: str) -> None:  # noqa: ANN001
        self.client = client
        self.bucket = bucket

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=_safe_key(key), Body=data,
                                   ContentType=safe_content_type(content_type))
        except (BotoCoreError, ClientError) as exc:
            raise TransientError(f"s3 put {self.bucket}/{key} failed: {exc}") from exc
        return key

    def get(self, key: str) -> bytes:
        response = self.client.get_object(Bucket=self.bucket, Key=_safe_key(key))
        return response["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=_safe_key(key))
            return True
        except ClientError as exc:
            if _is_missing(exc):
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=_safe_key(key))

    def locate(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def list_keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


class InputReader:
    """Reads the image an event points at: s3://bucket/key from allowed buckets, or (embedded) a local path."""

    def __init__(self, client=None, allowed_buckets: tuple[str, ...] = (), allow_local: bool = False,  # noqa: ANN001
                 max_bytes: int = 40 * 1024 * 1024) -> None:
        self.client = client
        self.allowed_buckets = tuple(allowed_buckets)
        self.allow_local = allow_local
        self.max_bytes = max_bytes

    def read(self, uri: str) -> bytes:
        if uri.startswith("s3://"):
            bucket, _, key = uri[5:].partition("/")
            if bucket not in self.allowed_buckets or self.client is None:
                raise InvalidInput("forbidden_bucket", bucket)
            return self._read_s3(bucket, key)
        if "://" in uri or not self.allow_local:
            raise InvalidInput("unsupported_uri", uri.split("://")[0] if "://" in uri else "local path")
        return self._read_local(Path(uri))

    def _read_local(self, path: Path) -> bytes:
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInput("unreadable", "not a regular file")  # a FIFO or device would hang or never end
            if info.st_size > self.max_bytes:
                raise InvalidInput("too_many_bytes", f"{info.st_size} > {self.max_bytes}")
            with path.open("rb") as handle:
                data = handle.read(self.max_bytes + 1)
            if len(data) > self.max_bytes:
                raise InvalidInput("too_many_bytes", f"> {self.max_bytes}")
            return data
        except FileNotFoundError:
            raise InvalidInput("not_found", str(path)) from None
        except (IsADirectoryError, PermissionError) as exc:
            raise InvalidInput("unreadable", type(exc).__name__) from None

    def _read_s3(self, bucket: str, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
            length = int(response.get("ContentLength") or 0)
            if length > self.max_bytes:
                response["Body"].close()
                raise InvalidInput("too_many_bytes", f"{length} > {self.max_bytes}")
            data = response["Body"].read(self.max_bytes + 1)
        except ClientError as exc:
            if _is_missing(exc):
                raise InvalidInput("not_found", f"s3://{bucket}/{key}") from None
            # AccessDenied, NoSuchBucket, throttling, 5xx: the worker's configuration or the store's health,
            # not the event's fault, so it is retried (and dead-lettered after max_attempts) rather than final
            raise TransientError(f"s3 get s3://{bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"s3 get s3://{bucket}/{key}: {exc}") from exc
        if len(data) > self.max_bytes:
            raise InvalidInput("too_many_bytes", f"> {self.max_bytes}")
        return data
