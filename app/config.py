"""Service settings, read from the environment (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.retrieval import RetrievalSettings

DEFAULT_PROVIDERS = "CUDAExecutionProvider,CPUExecutionProvider"


class Settings(BaseSettings):
    """Every knob of the service; environment names are the upper-case field names."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    model_dir: Path = Path("models/current")
    # Empty means the embedded in-process LRU cache (no Redis needed).
    redis_url: str = ""
    cache_ttl_seconds: int = Field(default=300, ge=1)
    cache_max_entries: int = Field(default=10_000, ge=1)
    # With Redis: how long a list stays in the in-process near cache in front of it
    # (capped by CACHE_TTL_SECONDS; 0 turns the near cache off). Bounded by CACHE_MAX_ENTRIES.
    cache_local_ttl_seconds: int = Field(default=5, ge=0)
    # Short on purpose: a slow Redis must cost a request milliseconds, not seconds.
    redis_socket_timeout_seconds: float = Field(default=0.05, gt=0)
    # Opening a connection: longer, since the timer runs on the event loop, and in a burst
    # of requests at start-up the loop is busy for longer than a read timeout, so new
    # connections to a healthy Redis timed out and tripped the breaker. A refused
    # connection (Redis down) still fails at once.
    redis_connect_timeout_seconds: float = Field(default=0.5, gt=0)
    # Connections the closed loop opens per client at start, before traffic (at most 100).
    # Its /recommend and /feedback calls are group-committed (app/group_commit.py), so a
    # burst needs only a few.
    redis_warm_connections: int = Field(default=4, ge=0, le=100)
    breaker_failure_threshold: int = Field(default=3, ge=1)
    breaker_reset_seconds: float = Field(default=5.0, gt=0)
    ab_student_percent: float = Field(default=50.0, ge=0, le=100)
    ab_salt: str = Field(default="ab-v1", min_length=1)
    # With Redis, admin routing changes are shared and every worker re-reads them this often.
    routing_sync_seconds: float = Field(default=2.0, ge=0)
    # > 0: reload by itself when MODEL_DIR comes to point at another bundle (checked this often).
    model_watch_seconds: float = Field(default=0.0, ge=0)
    # Comma-separated, in order of preference; filtered by what onnxruntime offers.
    ort_providers: str = DEFAULT_PROVIDERS
    # 0 lets onnxruntime pick (all cores); set it when several workers share a host.
    ort_intra_op_threads: int = Field(default=0, ge=0)
    admin_token: SecretStr | None = None
    max_batch_pairs: int = Field(default=1000, ge=1)
    student_model: Literal["student", "student_int8"] = "student"
    # First stage of /recommend: `auto` searches exactly up to RETRIEVAL_ANN_THRESHOLD items
    # and with the bundle's ANN index above it; `exact` and `ann` force one method.
    retrieval: Literal["auto", "exact", "ann"] = "auto"
    # ANN over-fetch: candidates searched before seen items are dropped (at least k + seen).
    retrieval_candidates: int = Field(default=200, ge=1, le=100_000)
    retrieval_ann_threshold: int = Field(default=50_000, ge=0)
    # Threads one search may use (NumPy BLAS, FAISS OpenMP); requests run in parallel already.
    retrieval_threads: int = Field(default=1, ge=1, le=256)
    # Known users' query vectors (users x tower dim x 4 bytes per variant) are computed at
    # load and read per request instead of a user-tower run, when they take at most this
    # (MiB); cold-start users always run the tower. 0: never.
    retrieval_user_vectors_mb: float = Field(default=256.0, ge=0)
    # The student's rating factors (a row per known user and per item, contract/
    # rating_factors.py) are loaded when both matrices together take at most this (MiB);
    # above it, or at 0, known users are rated by the rating graph, as cold-start ones are.
    rating_factors_mb: float = Field(default=1024.0, ge=0)
    # An uncached /recommend whose model work took under this at warm-up runs on the event
    # loop, without the hop to a worker thread (a wake-up and a GIL hand-over that cost as
    # much as the work, docs/BENCHMARKS.md); longer work would hold up other requests.
    # Only with the in-process cache (no REDIS_URL), where a miss waits on no I/O; 0: never.
    inline_max_ms: float = Field(default=2.0, ge=0)
    bench_floor_enabled: bool = False
    log_level: str = "INFO"
    access_log: bool = True
    # Hardening (docs/deploy.md, "Limits"). Model runs at once per worker; more wait at most
    # INFERENCE_QUEUE_SECONDS in a queue of INFERENCE_QUEUE_MAX, the rest get 503 + Retry-After.
    # 2: with one onnxruntime thread per run, more than that per core gains no throughput.
    inference_concurrency: int = Field(default=2, ge=1)
    inference_queue_max: int = Field(default=16, ge=0)
    inference_queue_seconds: float = Field(default=1.0, ge=0)
    # Who may force a variant with X-Variant: anyone, only the admin bearer token, or nobody.
    variant_override: Literal["allow", "admin", "deny"] = "allow"
    # Request bodies above this are refused with 413 before (or while) they are read.
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    # Request line plus headers; more is refused with 431 (app/http_protocol.py).
    http_max_header_bytes: int = Field(default=64 << 10, ge=1024)
    # A connection that has not sent a complete request head by then is closed.
    http_header_timeout_seconds: float = Field(default=10.0, gt=0)
    # A body not complete this long after its head is a 408 (1 MiB takes 10 s at 100 KB/s).
    http_body_timeout_seconds: float = Field(default=30.0, gt=0)
    # Used when REDIS_URL carries no password of its own (kept out of the URL and the logs).
    redis_password: SecretStr | None = None
    # A file every worker can write (a shared volume): PUT /admin/routing is kept there, so
    # the split survives a Redis flush and a restart of every worker. Empty: Redis only.
    routing_file: Path | None = None
    # -- closed loop (docs/experiment.md); needs REDIS_URL --------------------------------
    feedback_enabled: bool = True
    # The event log, impressions and experiment counts; empty: REDIS_URL. Point it at a
    # Redis with persistence and without allkeys eviction when REDIS_URL is a pure cache.
    feedback_redis_url: str = ""
    # How long an impression (request id -> served list) can receive feedback.
    impression_ttl_seconds: int = Field(default=86_400, ge=1)
    # Approximate cap of the event log (XADD MAXLEN ~); export it more often than it wraps.
    feedback_stream_maxlen: int = Field(default=1_000_000, ge=1)
    feedback_batch_limit: int = Field(default=100, ge=1)
    # Feedback and the readout wait longer than /recommend: a 503 costs the client a retry.
    feedback_redis_timeout_seconds: float = Field(default=1.0, gt=0)
    positive_rating_threshold: float = 4.0
    # Items a user rated, clicked or dismissed stay out of their lists this long (or until
    # a bundle trained on them has them as seen); the newest this many are kept.
    fresh_state_ttl_seconds: int = Field(default=7 * 86_400, ge=1)
    fresh_state_max_items: int = Field(default=500, ge=1)
    shadow_percent: float = Field(default=0.0, ge=0, le=100)
    shadow_queue_size: int = Field(default=64, ge=1)
    # mSPRT mixture spread: the hit-rate difference the test is most sensitive to.
    experiment_mixture_sd: float = Field(default=0.05, gt=0)
    # The readout's non-inferiority margin (absolute hit rate), as in the alert rule.
    experiment_margin: float = Field(default=0.02, ge=0)

    @field_validator("admin_token", "redis_password", mode="before")
    @classmethod
    def _empty_secret_is_none(cls, value: object) -> object:
        # ADMIN_TOKEN= (empty) must not enable admin routes with an empty password.
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return value

    @field_validator("routing_file", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def retrieval_settings(self) -> RetrievalSettings:
        return RetrievalSettings(
            mode=self.retrieval,
            candidates=self.retrieval_candidates,
            ann_threshold=self.retrieval_ann_threshold,
            threads=self.retrieval_threads,
            user_vectors_mb=self.retrieval_user_vectors_mb,
        )

    @property
    def provider_list(self) -> list[str]:
        # Comma-separated; a JSON-style list is accepted too, since that is what
        # pydantic-settings users tend to write for list settings.
        text = self.ort_providers.strip().removeprefix("[").removesuffix("]")
        names = (part.strip().strip("\"'").strip() for part in text.split(","))
        return [name for name in names if name]
