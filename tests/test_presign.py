"""Presigned links: Signature V4 query links that carry the configured lifetime, dated now.

The moto server does not enforce X-Amz-Expires (measured: a 2 s link still answered 200 after 3.5 s), so the
expiry itself is enforced by S3 or MinIO in production; what deepscreen controls is tested here: every link
is SigV4 with X-Amz-Expires = DEEPSCREEN_PRESIGN_SECONDS and a signing time of now, the lifetime is inside
SigV4's 7-day ceiling, and foreign buckets get no link at all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError

from review.context import S3Presigner, _presign_client
from workers.settings import Settings

pytestmark = pytest.mark.services


def test_links_carry_the_configured_lifetime_and_a_signing_time_of_now(s3_server) -> None:  # noqa: ANN001
    settings = Settings(s3_endpoint_url=s3_server.endpoint, presign_seconds=120)
    presigner = S3Presigner(_presign_client(settings), "deepscreen", ("uploads",), settings.presign_seconds)
    for url in (presigner.blob("heatmaps/x.png"), presigner.uri("s3://uploads/a/b.jpg")):
        assert url is not None
        query = parse_qs(urlsplit(url).query)
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
        assert query["X-Amz-Expires"] == ["120"]
        signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - signed_at).total_seconds()) < 30
        assert len(query["X-Amz-Signature"][0]) == 64
    assert presigner.uri("s3://someone-elses-bucket/a.jpg") is None
    assert presigner.uri("/etc/passwd") is None


@pytest.mark.parametrize("seconds", [0, -5, 604801])
def test_a_lifetime_outside_sigv4_limits_is_refused(seconds: int) -> None:
    with pytest.raises(ValidationError, match="presign_seconds"):
        Settings(presign_seconds=seconds)
