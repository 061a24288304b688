"""Cache-aside for /recommend: Redis or an in-process LRU, never a reason to fail a request.

With Redis, a small in-process LRU (the near cache, L1) sits in front of it with its own
short TTL (CACHE_LOCAL_TTL_SECONDS): a repeated key is answered from memory without a
round trip. Keys carry the bundle version, variant and model file, so L1 can never serve a
list from another model; it is only ever as old as its TTL. Without Redis the LRU backend
is already the only, in-process tier and no second one is added.

A Redis error or timeout counts as result="error" and the request is computed without the
shared tier; the near cache still keeps the result, so a Redis outage does not turn all
caching off. A circuit breaker stops waiting on a dead Redis after a few failures and lets
one probe through now and then to notice its return. Concurrent misses of one key within a
process compute once (single-flight); across processes each worker may compute once.

Redis is not trusted: a value read from it passes `check` (app/fragment_check.py) before
use; one that fails is counted as result="invalid", logged, recomputed and overwritten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.metrics import Metrics

logger = logging.getLogger(__name__)

CacheResult = Literal["hit", "miss", "error", "invalid"]
# A cached value in, the value to serve out (None: not acceptable, treat as a miss).
ValueCheck = Callable[[bytes], bytes | None]


class CacheUnavailableError(Exception):
    """The backend failed or the breaker is open; the caller serves uncached."""


class CacheBackend(Protocol):
    name: str

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, *, ttl_seconds: int) -> None: ...

    def status(self) -> str: ...

    def close(self) -> None: ...


class LocalLRUCache:
    """In-process LRU with per-entry expiry; the default when no REDIS_URL is set."""

    name = "memory"

    def __init__(self, *, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, value = entry
            if expires <= now:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return value

    def set(self, key: str, value: bytes, *, ttl_seconds: int) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic() + ttl_seconds, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def status(self) -> str:
        return "up"

    def close(self) -> None:
        with self._lock:
            self._entries.clear()


class CircuitBreaker:
    """closed -> open after `threshold` consecutive failures; after `reset_seconds` one
    caller probes (half-open); its success closes the circuit, its failure reopens it."""

    def __init__(
        self, *, threshold: int, reset_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = threshold
        self._reset_seconds = reset_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if self._clock() - self._opened_at >= self._reset_seconds:
                return "half_open"
            return "open"

    def allow(self) -> bool:
        with self._lock:
            if self._opened_at is None:
                return True
            if self._probing or self._clock() - self._opened_at < self._reset_seconds:
                return False
            self._probing = True
            return True

    def record_success(self) -> None:
        with self._lock:
            if self._opened_at is not None:
                logger.info("cache backend is back, circuit closed")
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def record_inconclusive(self) -> None:
        """A call that says nothing about the backend (this process was too busy to tell):
        it neither opens nor closes the circuit, but a probe it was frees the probe's place,
        else the circuit would stay open for good."""
        with self._lock:
            self._probing = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            was_probing = self._probing
            self._probing = False
            if was_probing or (self._opened_at is None and self._failures >= self._threshold):
                if self._opened_at is None:
                    logger.warning(
                        "cache backend failing, circuit opened", extra={"failures": self._failures}
                    )
                self._opened_at = self._clock()


class RedisCache:
    """Redis with short timeouts and no retries, guarded by a circuit breaker."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        socket_timeout: float,
        breaker: CircuitBreaker,
        password: str | None = None,
    ) -> None:
        self._client = redis.Redis.from_url(
            url,
            # A password in the URL wins over this one (redis-py's rule).
            password=password,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            # redis-py retries by default; a retry multiplies the wait on a dead server.
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self.breaker = breaker

    def _call(self, operation: Callable[[], object]) -> object:
        if not self.breaker.allow():
            raise CacheUnavailableError("circuit open")
        try:
            result = operation()
        except (redis.RedisError, OSError) as exc:
            self.breaker.record_failure()
            raise CacheUnavailableError(str(exc)) from exc
        self.breaker.record_success()
        return result

    def get(self, key: str) -> bytes | None:
        value = self._call(lambda: self._client.get(key))
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes, *, ttl_seconds: int | None) -> None:
        """Store `value`; `ttl_seconds=None` keeps it until overwritten."""
        self._call(lambda: self._client.set(key, value, ex=ttl_seconds))

    def status(self) -> str:
        """'up' or 'degraded'; pings only when the breaker would let a request through."""
        try:
            self._call(self._client.ping)
        except CacheUnavailableError:
            return "degraded"
        return "up"

    def close(self) -> None:
        self._client.close()


@dataclass
class _Flight:
    event: threading.Event
    value: bytes | None = None
    result: CacheResult = "miss"
    error: BaseException | None = None


class SingleFlight:
    """Lets one caller per key do the work while the others wait for its result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}

    def do(
        self, key: str, work: Callable[[], tuple[bytes, CacheResult]]
    ) -> tuple[bytes, CacheResult]:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = _Flight(event=threading.Event())
                self._flights[key] = flight
        if not leader:
            flight.event.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.value is not None
            return flight.value, flight.result
        try:
            flight.value, flight.result = work()
            return flight.value, flight.result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.event.set()


class RecommendationCache:
    """Cache-aside over a backend, with an optional near cache, metrics and single-flight.

    `local` is the near cache in front of a remote backend (None: no near cache); its
    entries live `local_ttl_seconds`, at most `ttl_seconds`. `peek` reads only process
    memory and never blocks on I/O, so it may run on the event loop; `get_or_compute` may
    call the backend and compute, so it must run in a worker thread.
    """

    def __init__(
        self,
        backend: CacheBackend,
        *,
        ttl_seconds: int,
        metrics: Metrics,
        local: LocalLRUCache | None = None,
        local_ttl_seconds: int = 0,
        check: ValueCheck | None = None,
    ) -> None:
        self.backend = backend
        self._check = check
        self._ttl = ttl_seconds
        self._metrics = metrics
        self._flights = SingleFlight()
        self._local_ttl = min(local_ttl_seconds, ttl_seconds)
        self._local = local if self._local_ttl > 0 else None
        # What `peek` may read without I/O: the near cache, or an in-process backend.
        self._memory: LocalLRUCache | None = (
            backend if isinstance(backend, LocalLRUCache) else self._local
        )
        self._hit = metrics.cache_requests_total.labels(result="hit")

    def peek(self, key: str) -> bytes | None:
        """The bytes for `key` if process memory holds them (counted as a hit), else None."""
        memory = self._memory
        if memory is None:
            return None
        value = memory.get(key)
        if value is not None:
            self._hit.inc()
            self._metrics.cache_local_hits_total.inc()
        return value

    def get_or_compute(self, key: str, compute: Callable[[], bytes]) -> tuple[bytes, bool]:
        """The cached bytes for `key`, or `compute()`'s (then stored); and whether it was a hit."""
        value = self.peek(key)
        if value is not None:
            return value, True
        value, result = self._flights.do(key, lambda: self._lookup(key, compute))
        self._metrics.cache_requests_total.labels(result=result).inc()
        return value, result == "hit"

    @property
    def in_process(self) -> bool:
        """Whether every tier is process memory: then a miss needs no I/O to resolve."""
        return self._memory is self.backend

    def compute_in_process(self, key: str, compute: Callable[[], bytes]) -> bytes:
        """A miss resolved on the caller's thread: `compute()`, stored; only when
        `in_process` (nothing here waits on I/O, so the event loop may call it)."""
        if not self.in_process:
            raise RuntimeError("compute_in_process needs the in-process cache")
        value = compute()
        self.backend.set(key, value, ttl_seconds=self._ttl)
        self._metrics.cache_requests_total.labels(result="miss").inc()
        return value

    def _lookup(self, key: str, compute: Callable[[], bytes]) -> tuple[bytes, CacheResult]:
        result: CacheResult
        try:
            cached = self.backend.get(key)
        except CacheUnavailableError as exc:
            logger.debug("cache read failed", extra={"reason": str(exc)})
            value = compute()
            self._remember(key, value)
            return value, "error"
        result = "miss"
        if cached is not None and self._check is not None:
            checked = self._check(cached)
            if checked is None:
                logger.warning(
                    "cached value rejected, recomputing", extra={"key": key, "size": len(cached)}
                )
                result = "invalid"
            cached = checked
        if cached is not None:
            self._remember(key, cached)
            return cached, "hit"
        value = compute()
        try:
            self.backend.set(key, value, ttl_seconds=self._ttl)
        except CacheUnavailableError as exc:
            logger.debug("cache write failed", extra={"reason": str(exc)})
            self._metrics.cache_write_errors_total.inc()
        self._remember(key, value)
        return value, result

    def _remember(self, key: str, value: bytes) -> None:
        if self._local is not None:
            self._local.set(key, value, ttl_seconds=self._local_ttl)

    def status(self) -> str:
        return self.backend.status()

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        self.backend.close()


def build_cache(
    *,
    redis_url: str,
    ttl_seconds: int,
    max_entries: int,
    socket_timeout: float,
    breaker_threshold: int,
    breaker_reset_seconds: float,
    metrics: Metrics,
    local_ttl_seconds: int = 0,
    redis_password: str | None = None,
    check: ValueCheck | None = None,
) -> RecommendationCache:
    """Redis (with a near cache unless `local_ttl_seconds` is 0) when `redis_url` is set,
    else the in-process LRU alone. `check` vets what Redis returns (the LRU holds only what
    this process wrote)."""
    if redis_url:
        breaker = CircuitBreaker(threshold=breaker_threshold, reset_seconds=breaker_reset_seconds)
        return RecommendationCache(
            RedisCache(
                redis_url, socket_timeout=socket_timeout, breaker=breaker, password=redis_password
            ),
            ttl_seconds=ttl_seconds,
            metrics=metrics,
            local=LocalLRUCache(max_entries=max_entries) if local_ttl_seconds > 0 else None,
            local_ttl_seconds=local_ttl_seconds,
            check=check,
        )
    return RecommendationCache(
        LocalLRUCache(max_entries=max_entries), ttl_seconds=ttl_seconds, metrics=metrics
    )
