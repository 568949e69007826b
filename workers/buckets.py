"""The buckets a first run needs, made by `deepscreen migrate` on a MinIO or other S3-compatible endpoint."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def ensure_buckets(client: Any, names: Iterable[str], region: str) -> list[str]:
    """Creates each named bucket that does not exist yet; returns those it created. A bucket that exists (ours
    or already owned by us) is left alone, so running it again changes nothing."""
    from botocore.exceptions import ClientError

    created: list[str] = []
    for name in dict.fromkeys(names):  # the upload and result buckets may be one bucket
        try:
            client.head_bucket(Bucket=name)
            continue
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket", "NotFound"):
                raise  # 403: it exists and is not ours, or these keys may not see it
        options: dict[str, Any] = {}
        if region != "us-east-1":  # S3 refuses the default region as a location constraint
            options["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            client.create_bucket(Bucket=name, **options)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
            continue  # made at the same moment by another migrate
        created.append(name)
    return created
