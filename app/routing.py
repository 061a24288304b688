"""Sticky A/B routing: a stable hash of (salt, user) picks the variant."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass

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
        with self._lock:
            current = self._config
            self._config = RoutingConfig(
                student_percent=current.student_percent
                if student_percent is None
                else student_percent,
                salt=current.salt if salt is None else salt,
            )
            return self._config

    def assign(self, user_id: str) -> str:
        config = self._config
        threshold = round(config.student_percent * BUCKETS / 100)
        return "student" if bucket_of(user_id, salt=config.salt) < threshold else "teacher"


class RoutingSync:
    """The A/B config shared through Redis; the local router is the fallback."""

    def __init__(self, router: ABRouter, store: RedisCache) -> None:
        self._router = router
        self._store = store

    def publish(self, config: RoutingConfig) -> bool:
        payload = orjson.dumps({"student_percent": config.student_percent, "salt": config.salt})
        try:
            self._store.set(ROUTING_KEY, payload, ttl_seconds=None)
        except CacheUnavailableError as exc:
            logger.warning(
                "routing change not shared, Redis unavailable", extra={"reason": str(exc)}
            )
            return False
        return True

    def refresh(self) -> None:
        try:
            payload = self._store.get(ROUTING_KEY)
        except CacheUnavailableError:
            return  # keep the config we have; the breaker logs the outage
        if payload is None:
            return
        try:
            shared = orjson.loads(payload)
            percent = float(shared["student_percent"])
            salt = str(shared["salt"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            logger.warning("ignoring malformed shared routing config")
            return
        if not 0 <= percent <= 100 or not salt:
            logger.warning("ignoring out-of-range shared routing config")
            return
        current = self._router.config
        if (current.student_percent, current.salt) != (percent, salt):
            self._router.update(student_percent=percent, salt=salt)
            logger.info("routing adopted from Redis", extra={"student_percent": percent})
