"""Sticky A/B routing: a stable hash of (salt, user) picks the variant.

The split can change at run time (PUT /admin/routing). Such a change carries a version (the
wall-clock time it was made, in nanoseconds; 0 for the split from the settings), and every
copy of it, in a worker, in Redis or in ROUTING_FILE, is compared by that version: the
newest wins everywhere. So a Redis flush, a Redis restart or a worker restart cannot make
workers disagree for longer than ROUTING_SYNC_SECONDS: a worker holding the newer split
writes it back to Redis (and to the file), and the others adopt it from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from app.cache import CacheUnavailableError, RedisCache

logger = logging.getLogger(__name__)

BUCKETS = 10_000
ROUTING_KEY = "recsys:ab:routing"


def bucket_of(user_id: str, *, salt: str) -> int:
    """Bucket 0..9999; stable across processes and restarts (unlike Python's hash())."""
    digest = hashlib.blake2b(f"{salt}\x1f{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True)
class RoutingConfig:
    student_percent: float
    salt: str
    # When an admin made this split (ns since the epoch); 0: the settings' split.
    version: int = 0

    def order(self) -> tuple[int, float, str]:
        # Ties (two changes in one nanosecond) still order the same way in every worker.
        return (self.version, self.student_percent, self.salt)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"student_percent": self.student_percent, "salt": self.salt, "version": self.version}
        )

    @classmethod
    def from_json(cls, payload: bytes) -> RoutingConfig | None:
        """The config in `payload`, or None when it is malformed or out of range."""
        try:
            shared = orjson.loads(payload)
            config = cls(
                student_percent=float(shared["student_percent"]),
                salt=str(shared["salt"]),
                # Written before versions existed: newer than the settings, older than any
                # versioned change.
                version=int(shared.get("version", 1)),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None
        if not 0 <= config.student_percent <= 100 or not config.salt or config.version < 0:
            return None
        return config


class ABRouter:
    """Variant per user; the config can change at run time (admin route), so it is swapped
    as one immutable object and each decision reads a single snapshot."""

    def __init__(self, *, student_percent: float, salt: str) -> None:
        self._config = RoutingConfig(student_percent=student_percent, salt=salt)
        self._lock = threading.Lock()

    @property
    def config(self) -> RoutingConfig:
        return self._config

    def update(
        self, *, student_percent: float | None = None, salt: str | None = None
    ) -> RoutingConfig:
        """An admin change: the new split gets a new version, newer than any before it."""
        with self._lock:
            current = self._config
            self._config = RoutingConfig(
                student_percent=current.student_percent
                if student_percent is None
                else student_percent,
                salt=current.salt if salt is None else salt,
                version=max(time.time_ns(), current.version + 1),
            )
            return self._config

    def adopt(self, config: RoutingConfig) -> bool:
        """Takes `config` if it is newer than the current one; whether it did."""
        with self._lock:
            if config.order() <= self._config.order():
                return False
            self._config = config
            return True

    def assign(self, user_id: str) -> str:
        config = self._config
        threshold = round(config.student_percent * BUCKETS / 100)
        return "student" if bucket_of(user_id, salt=config.salt) < threshold else "teacher"


class RoutingSync:
    """Keeps the split of every worker equal to the newest one known anywhere.

    Where it is kept: Redis (`store`, shared by every worker and replica; volatile) and
    ROUTING_FILE (`path`, a small JSON file on a volume the workers share; survives a restart
    of everything). Either may be absent. The local router is the fallback for both.
    """

    def __init__(
        self, router: ABRouter, store: RedisCache | None, *, path: Path | None = None
    ) -> None:
        self._router = router
        self._store = store
        self._path = path
        self._file_stamp: tuple[int, int] | None = None  # (mtime_ns, size) last read
        self._file_config: RoutingConfig | None = None

    def publish(self, config: RoutingConfig) -> bool:
        """Writes `config` everywhere it is kept; whether some other worker can now see it."""
        shared = self._write_file(config)
        if self._store is not None:
            try:
                self._store.set(ROUTING_KEY, config.to_json(), ttl_seconds=None)
                shared = True
            except CacheUnavailableError as exc:
                logger.warning(
                    "routing change not shared, Redis unavailable", extra={"reason": str(exc)}
                )
        return shared

    def refresh(self) -> None:
        """Adopts the newest split of Redis and the file, and writes it back where older."""
        in_redis, redis_up = self._read_redis()
        in_file = self._read_file()
        for candidate in (in_redis, in_file):
            if candidate is not None and self._router.adopt(candidate):
                logger.info(
                    "routing adopted",
                    extra={
                        "student_percent": candidate.student_percent,
                        "version": candidate.version,
                    },
                )
        best = self._router.config
        if best.version == 0:
            return  # the settings' split: every worker has it already, nothing to spread
        if redis_up and self._store is not None and _older(in_redis, best):
            # Redis was flushed or restarted (or holds an older change): put it back.
            with contextlib.suppress(CacheUnavailableError):
                self._store.set(ROUTING_KEY, best.to_json(), ttl_seconds=None)
        if self._path is not None and _older(in_file, best):
            self._write_file(best)

    def _read_redis(self) -> tuple[RoutingConfig | None, bool]:
        if self._store is None:
            return None, False
        try:
            payload = self._store.get(ROUTING_KEY)
        except CacheUnavailableError:
            return None, False  # keep the config we have; the breaker logs the outage
        if payload is None:
            return None, True
        config = RoutingConfig.from_json(payload)
        if config is None:
            logger.warning("ignoring malformed shared routing config")
        return config, True

    def _read_file(self) -> RoutingConfig | None:
        if self._path is None:
            return None
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._file_stamp:
                self._file_config = RoutingConfig.from_json(self._path.read_bytes())
                self._file_stamp = stamp
                if self._file_config is None:
                    logger.warning(
                        "ignoring malformed routing file", extra={"path": str(self._path)}
                    )
        except FileNotFoundError:
            self._file_stamp, self._file_config = None, None
        except OSError as exc:
            logger.warning("routing file unreadable", extra={"reason": str(exc)})
        return self._file_config

    def _write_file(self, config: RoutingConfig) -> bool:
        if self._path is None:
            return False
        # Written aside and renamed: a worker reading at the same time sees old or new.
        tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(config.to_json())
            os.replace(tmp, self._path)
        except OSError as exc:
            logger.warning("routing file not written", extra={"reason": str(exc)})
            return False
        return True


def _older(found: RoutingConfig | None, best: RoutingConfig) -> bool:
    return found is None or found.order() < best.order()
