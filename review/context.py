"""Everything the API needs, built once per process from Settings: stores, blob stores, queue, screener."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from db.engine import connect
from db.escalation_store import EscalationStore
from db.image_store import ImageStore
from db.review_store import ReviewStore
from db.store import Store
from db.token_store import TokenStore
from workers.processing import Runtime
from workers.settings import Settings
from workers.storage import (
    BlobStore,
    InputReader,
    LocalBlobStore,
    S3BlobStore,
    original_content_type,
    response_content_type,
    s3_client,
)


class S3Presigner:
    """Short-lived GET links: heatmaps in the results bucket, originals in the configured input buckets.

    Every link downloads as an attachment with a raster or opaque content type, whatever the object was
    stored with: an upload bucket holds what outside producers wrote, HTML or SVG included."""

    def __init__(self, client: Any, bucket: str, input_buckets: tuple[str, ...], seconds: int) -> None:
        self.client, self.bucket, self.input_buckets, self.seconds = client, bucket, input_buckets, seconds

    def blob(self, key: str) -> str:
        return self._sign(self.bucket, key)

    def uri(self, uri: str) -> str | None:
        if not uri.startswith("s3://"):
            return None
        bucket, _, key = uri[5:].partition("/")
        return self._sign(bucket, key) if bucket in self.input_buckets else None

    def _sign(self, bucket: str, key: str) -> str:
        params = {"Bucket": bucket, "Key": key, "ResponseContentDisposition": "attachment",
                  "ResponseContentType": response_content_type(key)}
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=self.seconds)


@dataclass
class ReviewContext:
    settings: Settings
    store: Store
    reviews: ReviewStore
    images: ImageStore
    tokens: TokenStore
    escalations: EscalationStore
    blobs: BlobStore  # heatmaps, crops, evidence bundles
    reader: InputReader  # originals, where the events said they are
    # (key, bytes, content type) -> image_uri a worker can read; stored with the type the bytes' magic shows,
    # whatever type the caller passes
    put_upload: Callable[[str, bytes, str], str]
    presigner: S3Presigner | None = None
    celery_app: Any = None  # None: no queue (embedded); POST /v1/events answers 503
    runtime_factory: Callable[[], Runtime] | None = None
    _runtime: Runtime | None = field(default=None, repr=False)
    screen_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def runtime(self) -> Runtime:
        """The in-process screener for the "check an image" page, loaded on first use."""
        with self.screen_lock:
            if self._runtime is None:
                if self.runtime_factory is None:
                    raise RuntimeError("this server has no screener configured")
                self._runtime = self.runtime_factory()
            return self._runtime

    def close(self) -> None:
        self.store.engine.dispose()


def get_ctx(request: Request) -> ReviewContext:
    """The ReviewContext create_app was handed: a route takes it as `ctx: Ctx`; code outside a route (an
    exception handler, an auth dependency) calls this."""
    return request.app.state.ctx


Ctx = Annotated[ReviewContext, Depends(get_ctx)]


def _presign_client(settings: Settings) -> Any:
    """Signature V4 (X-Amz-Expires): the links expire, and every region accepts them."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
                        config=Config(signature_version="s3v4"))


def _screener_runtime(settings: Settings, store: Store, blobs: BlobStore, reader: InputReader) -> Callable[[], Runtime]:
    def build() -> Runtime:
        from workers.runtime import build_screener

        return Runtime(screener=build_screener(settings), store=store, blobs=blobs, reader=reader,
                       fetch_threads=settings.fetch_threads)

    return build


def distributed_context(settings: Settings, celery_app: Any = None) -> ReviewContext:
    """Postgres + S3 + the Celery queues: what `deepscreen serve` runs on."""
    engine = connect(settings.database_url)
    store = Store(engine)
    client = s3_client(settings.s3_endpoint_url, settings.s3_region)
    blobs = S3BlobStore(client, settings.s3_bucket)
    reader = InputReader(client, tuple(settings.input_buckets), allow_local=False, max_bytes=settings.max_image_bytes)
    if celery_app is None:
        from workers.app import create_app

        celery_app = create_app(settings)

    def put_upload(key: str, data: bytes, content_type: str) -> str:
        # the type comes from the bytes: a client's file name or header says text/html as easily as image/png
        client.put_object(Bucket=settings.upload_bucket, Key=key, Body=data, ContentType=original_content_type(data))
        return f"s3://{settings.upload_bucket}/{key}"

    return ReviewContext(
        settings=settings, store=store, reviews=ReviewStore(engine, settings.review_lease_seconds),
        images=ImageStore(engine), tokens=TokenStore(engine), escalations=EscalationStore(engine), blobs=blobs, reader=reader, put_upload=put_upload,
        presigner=S3Presigner(_presign_client(settings), settings.s3_bucket, tuple(settings.input_buckets),
                              settings.presign_seconds),
        celery_app=celery_app, runtime_factory=_screener_runtime(settings, store, blobs, reader),
    )


def embedded_context(settings: Settings, home: Path) -> ReviewContext:
    """SQLite + a local folder (the `deepscreen scan` home): the console over local results; no queue."""
    from db.migrate import home_database

    engine = connect(home_database(home))
    store = Store(engine)
    blobs = LocalBlobStore(home / "blobs")
    reader = InputReader(allow_local=True, max_bytes=settings.max_image_bytes)

    def put_upload(key: str, data: bytes, content_type: str) -> str:
        return blobs.locate(blobs.put(key, data, original_content_type(data)))

    return ReviewContext(
        settings=settings, store=store, reviews=ReviewStore(engine, settings.review_lease_seconds),
        images=ImageStore(engine), tokens=TokenStore(engine), escalations=EscalationStore(engine), blobs=blobs, reader=reader, put_upload=put_upload,
        runtime_factory=_screener_runtime(settings, store, blobs, reader),
    )
