"""The one Settings object. Every variable is DEEPSCREEN_<NAME>; docs/configuration.md has the table."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.decode import DecodeLimits
from pipeline.faces import DetectorConfig
from pipeline.screen import ScreenConfig
from workers.secret_policy import MIN_SECRET_CHARS, SECRET_ADVICE, is_loopback, secret_weakness

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = REPO_ROOT / "models" / "deepscreen-v2"
PLACEHOLDER_MODEL = REPO_ROOT / "models" / "placeholder"
PLACEHOLDER_SECRET = "changethis"


def default_model_dir() -> Path:
    """The shipped trained model when present, else the install-time placeholder (not a detector)."""
    return SHIPPED_MODEL if (SHIPPED_MODEL / "model.json").is_file() else PLACEHOLDER_MODEL


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPSCREEN_", extra="ignore", hide_input_in_errors=True)

    # services
    database_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/deepscreen"
    broker_url: str = "redis://127.0.0.1:6379/0"
    s3_endpoint_url: str | None = None  # MinIO / moto; None = AWS
    s3_region: str = "us-east-1"
    s3_bucket: str = "deepscreen"  # where heatmaps and crops are written
    input_buckets: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["uploads"])
    upload_bucket: str = "uploads"  # where `deepscreen submit --upload` puts local files
    # model and compute
    model_dir: Path = Field(default_factory=default_model_dir)
    device: str = "cpu"
    # auto: bf16 autocast where the CPU has bf16 units (AMX, AVX-512 BF16) or the GPU is Ampere or later (else fp16),
    # fp32 on a CPU without them, where bf16 is emulated and 3x slower (pipeline.model.resolve_precision)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    torch_threads: int = 1  # per screening thread; SCREEN_THREADS chunks run at once (measured best on 2 vCPUs)
    # batching and stages
    batch_size: int = 32
    batch_wait_ms: int = 250
    fetch_threads: int = 8
    decode_threads: int = 1  # per chunk: chunks already decode SCREEN_THREADS at a time
    overlap_chunk: int = 8  # a batch runs in chunks of this many images; 0 = one piece
    crops_chunk: int = 16  # the same in --crops mode: a crop costs little besides its forward, which pays at 16
    screen_threads: int = 2  # chunks screened at once, each with torch_threads threads
    # decoded full-resolution pixels a chunk holds before cutting their faces and letting them go (per chunk;
    # SCREEN_THREADS chunks at once); bounds screening memory by pixels, not by image count
    chunk_pixels: int = Field(default=24_000_000, ge=1)
    scan_batch_mb: int = Field(default=16, ge=1)  # scan: a batch also ends once its files reach this many MB
    heatmaps: Literal["flagged", "all", "none"] = "flagged"
    detect_max_side: int = 720
    min_face_size: int = 20
    face_min_probability: float = 0.90
    max_faces: int = 20
    max_image_bytes: int = 40 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    # hostile inputs (pipeline/containers.py, pipeline/isolation.py): refused before decoding, or capped while
    max_jpeg_scans: int = Field(default=100, ge=1)  # encoders write 1-10 scans; each one re-walks every block
    max_image_segments: int = Field(default=100_000, ge=1)  # JPEG markers, PNG chunks, GIF blocks, TIFF strips
    decode_memory_mb: int = Field(default=1024, ge=16)  # most one decode may hold (decoded image, work, RGB)
    decode_isolation: bool = True  # decode in child processes capped by the three limits below
    decode_cpu_s: float = Field(default=3.0, gt=0)  # CPU one decode may use (a 40 MP JPEG takes about 0.5 s)
    decode_wall_s: float = Field(default=30.0, gt=0)  # wall-clock time one decode may take
    # a batch past the soft limit settles its events (retried one at a time; alone: failed `time_limit`);
    # past the hard limit the prefork pool kills its process. Both below visibility_timeout; 0 = none.
    task_soft_time_limit_s: float = Field(default=600.0, ge=0)
    task_time_limit_s: float = Field(default=900.0, ge=0)
    # reliability
    visibility_timeout: int = 3600  # seconds a reserved, unacknowledged message waits before redelivery
    max_attempts: int = 8  # per-event failures; 2+4+...+60 s of backoff rides out a few minutes of S3 trouble
    stuck_after_s: float = 7200.0  # an event still `queued` this long is put on its queue again (> visibility_timeout)
    stuck_check_s: float = 300.0  # how often beat looks for such events
    max_deliveries: int = 3  # a message that was in hand this many times when a worker died is dead-lettered
    retry_backoff_s: float = 2.0
    retry_backoff_max_s: float = 60.0
    malloc_arena_max: int = 2  # glibc malloc arenas per worker process (0: glibc's default); see workers/memory.py
    malloc_trim: bool = True  # hand freed heap back to the system (workers/memory.py)
    # 0: after every batch. Above 0: when a worker process goes idle, and after a batch at most this often;
    # 3-5% more images/s, but not the default while a kill -9 chaos run that lost an event with it is unexplained
    malloc_trim_interval_s: float = 0.0
    # A prefork pool of two processes, each screening on one of SCREEN_THREADS: a `solo` process's threads
    # queue for Python's lock while it fetches and writes (docs/benchmarks.md). One process per GPU on a GPU host: DEEPSCREEN_CONCURRENCY=1.
    pool: Literal["solo", "prefork", "threads"] = "prefork"
    concurrency: int = 2
    # re-scans (workers/rescan.py) and model roll-outs
    rescan_rate_per_s: float = 20.0  # images a run enqueues per second (fresh uploads are polled first anyway)
    rescan_chunk: int = 200  # most images enqueued by one tick of one run
    rescan_tick_s: float = 5.0  # how often beat moves runs forward
    rescan_max_queued: int = 2000  # a run waits while the re-scan queue holds this many messages
    rescan_cron: str = "0 2 * * *"  # nightly run (minute hour day month weekday, UTC); "" = no nightly run
    # known-fake memory (PDQ hash banks)
    known_fakes: bool = True  # hash every image and match it against the banks
    known_fake_distance: int = Field(default=31, ge=0, le=128)  # Hamming bits of 256: PDQ's documented default
    pdq_min_quality: int = Field(default=50, ge=0, le=100)  # hashes below this quality are never matched on
    pdq_max_side: int = Field(default=512, ge=64)  # hashes are taken on a copy at most this long
    bank_refresh_s: float = Field(default=60.0, gt=0)  # a worker sees bank changes within this many seconds
    # embedded mode
    home: Path = Path(".deepscreen")
    # review API and console (review/)
    environment: Literal["local", "test", "production"] = "local"  # production: secure cookies, a real secret
    signing_secret: SecretStr = SecretStr(PLACEHOLDER_SECRET)  # bundle and webhook HMAC keys are derived from it
    webhook_url: str | None = None  # where escalations (and subscribed topics) are POSTed
    webhook_topics: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["escalation"])
    webhook_max_attempts: int = 5
    webhook_backoff_s: float = 1.0  # first retry delay; doubles each attempt
    webhook_backoff_max_s: float = 60.0
    webhook_timeout_s: float = 10.0
    review_lease_seconds: int = 600  # a claim expires after this long without a decision
    presign_seconds: int = 300  # lifetime of presigned S3 links to originals and heatmaps
    session_hours: float = 12.0  # console login lifetime
    max_request_bytes: int = 1024 * 1024  # body limit of POST /v1/events
    gold_rate: float = 0.0  # share of claim-next calls that serve a gold item (0 = off)
    auth_failures_per_minute: int = 20  # failed authentications per client per minute before 429
    proxy_headers: bool = True  # serve: take the client address from X-Forwarded-For sent by a trusted proxy
    forwarded_allow_ips: str | None = None  # serve: trusted proxy IPs/CIDRs; None = $FORWARDED_ALLOW_IPS or loopback
    readiness_cache_s: float = Field(default=2.0, ge=0)  # /readyz reuses its last answer this long
    api_spec: bool = True  # /openapi.json for admin tokens; False: not served at all
    # operations (workers/metrics.py, workers/heartbeat.py, workers/retention.py, workers/logs.py)
    metrics_port: int = 9100  # the worker's Prometheus exporter (0 = off); serve exports on its own /metrics
    metrics_dir: Path | None = None  # prometheus multiprocess folder, wiped at worker start (default: a temp dir)
    heartbeat_file: Path = Path("/tmp/deepscreen-worker-heartbeat.json")
    heartbeat_seconds: float = 10.0
    heartbeat_max_age_s: float = 300.0  # `deepscreen probe worker` fails beyond this (must exceed a batch)
    retention_heatmap_days: int = 90  # heatmaps are deleted after this many days
    retention_verdict_days: int = 365  # verdicts, faces, crops and decided review items after this many
    log_format: Literal["text", "json"] = "text"
    # webhook relay and evidence-bundle signing (review/relay.py, review/signing.py)
    webhook_relay_in_serve: bool = True  # `serve` delivers the webhook outbox from a background thread
    webhook_relay_interval_s: float = Field(default=2.0, gt=0)  # how often an idle relay looks at the outbox
    bundle_signing_key_file: Path | None = None  # Ed25519 private key (PEM) that also signs evidence bundles

    @field_validator("input_buckets", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _one_screener_per_thread(self) -> Settings:
        if self.pool == "threads" and self.concurrency > 1:
            raise ValueError("pool=threads shares one model between threads (Grad-CAM hooks are per network): "
                             "use prefork for concurrency > 1")
        return self

    @model_validator(mode="after")
    def _real_secret_outside_local(self) -> Settings:
        weakness = secret_weakness(self.signing_secret.get_secret_value())
        if self.environment == "production" and weakness:
            raise ValueError(f"DEEPSCREEN_SIGNING_SECRET is refused in production: {weakness}; set a random value "
                             f"of {MIN_SECRET_CHARS}+ characters ({SECRET_ADVICE})")
        return self

    def serve_secret_problem(self, host: str) -> str | None:
        """Why `serve` bound to `host` must not start with this signing secret, or None. Whoever can reach the
        server, or receives its webhooks, could forge what it signs with a guessable key, in any environment."""
        weakness = secret_weakness(self.signing_secret.get_secret_value())
        if weakness is None:
            return None
        if not is_loopback(host):
            exposure = f"the server binds {host or 'every address'} (beyond loopback)"
        elif self.webhook_url:
            exposure = "a webhook is configured"
        else:
            return None
        return (f"DEEPSCREEN_SIGNING_SECRET is refused: {weakness}, and {exposure}; "
                f"set a random value of {MIN_SECRET_CHARS}+ characters ({SECRET_ADVICE})")

    @model_validator(mode="after")
    def _time_limits_below_visibility(self) -> Settings:
        # a batch still running when its messages come back would be screened twice, by two workers
        soft, hard = self.task_soft_time_limit_s, self.task_time_limit_s
        if (soft or hard) and not 0 < soft < hard < self.visibility_timeout:
            raise ValueError("0 < task_soft_time_limit_s < task_time_limit_s < visibility_timeout is required "
                             f"(now {soft:g}, {hard:g}, {self.visibility_timeout}); 0 and 0 turn both off")
        return self

    @field_validator("presign_seconds")
    @classmethod
    def _sigv4_lifetime(cls, value: int) -> int:
        if not 1 <= value <= 604800:
            raise ValueError("presign_seconds must be 1..604800 (Signature V4 links live at most 7 days)")
        return value

    @field_validator("rescan_cron")
    @classmethod
    def _cron_fields(cls, value: str) -> str:
        if value.strip() and len(value.split()) != 5:
            raise ValueError("rescan_cron needs five fields: minute hour day-of-month month day-of-week")
        return value.strip()

    @field_validator("batch_size", "torch_threads", "decode_threads", "fetch_threads", "max_attempts", "concurrency",
                     "rescan_chunk", "rescan_max_queued", "max_deliveries")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    def pool_child(self) -> Settings:
        """The settings one worker process screens with: a prefork pool shares SCREEN_THREADS among its
        children (2 threads, 2 children: one each), so the pool uses the cores that one process would."""
        if self.pool != "prefork" or self.concurrency <= 1:
            return self
        return self.model_copy(update={"screen_threads": max(1, self.screen_threads // self.concurrency)})

    def decode_limits(self, isolated: bool | None = None) -> DecodeLimits:
        """What any decode of an untrusted image may cost; `isolated` overrides decode_isolation."""
        return DecodeLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels,
                            max_jpeg_scans=self.max_jpeg_scans, max_segments=self.max_image_segments,
                            max_decode_bytes=self.decode_memory_mb << 20,
                            isolated=self.decode_isolation if isolated is None else isolated,
                            cpu_seconds=self.decode_cpu_s, wall_seconds=self.decode_wall_s)

    def screen_config(self, crops: bool = False) -> ScreenConfig:
        return ScreenConfig(
            detector=DetectorConfig(
                max_side=self.detect_max_side,
                min_face_size=self.min_face_size,
                min_probability=self.face_min_probability,
                max_faces=self.max_faces,
            ),
            decode=self.decode_limits(),
            heatmaps=self.heatmaps,
            crops=crops,
            decode_threads=self.decode_threads,
            classify_batch=max(64, self.batch_size),
            overlap_chunk=max(0, self.crops_chunk if crops else self.overlap_chunk),
            screen_threads=max(1, self.screen_threads),
            chunk_pixels=self.chunk_pixels,
            pdq=self.known_fakes,
            pdq_max_side=self.pdq_max_side,
            pdq_min_quality=self.pdq_min_quality,
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
