"""Redis as untrusted and as optional, with a real redis-server: a corrupt or injected cached
value is never served (recomputed, counted, overwritten); a password-protected Redis is used
through REDIS_PASSWORD; and while Redis is dead the near cache keeps caching."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import redis

from app.fragment_check import clean_fragment
from tests.faults.conftest import RedisProcess, bundle_users, metric_value
from tests.faults.served import serve_env, serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PASSWORD = "s3cret-redis"


def _keys(client: redis.Redis) -> list[bytes]:
    return [key for key in client.scan_iter("rec:*") if isinstance(key, bytes)]


def test_corrupt_or_injected_cache_values_are_never_served(
    bundle_dir: Path, redis_process: RedisProcess, tmp_path: Path
) -> None:
    user = bundle_users(bundle_dir)[0]
    env = serve_env(bundle_dir, REDIS_URL=redis_process.url, CACHE_LOCAL_TTL_SECONDS="0")
    store = redis.Redis.from_url(redis_process.url)
    with (
        serving(env, tmp_path / "server.log") as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        first = client.get("/recommend", params={"user_id": user, "k": 5})
        assert first.status_code == 200 and first.json()["cached"] is False
        (key,) = _keys(store)
        assert client.get("/recommend", params={"user_id": user, "k": 5}).json()["cached"]
        bad_values = [
            b"{not json at all",
            b'"items":[],"fallback":null,"admin":true',  # an injected field
            b'"items":[]},{"injected":1',  # breaks out of the object
            json.dumps({"items": "nope"}).encode()[1:-1],
        ]
        for bad in bad_values:
            store.set(key, bad)
            response = client.get("/recommend", params={"user_id": user, "k": 5})
            assert response.status_code == 200
            body = json.loads(response.content)  # strictly valid JSON
            assert body["cached"] is False and body["items"] == first.json()["items"]
            assert set(body) == set(first.json())
            # Overwritten with a good value.
            repaired = store.get(key)
            assert isinstance(repaired, bytes) and clean_fragment(repaired) is not None
        metrics = client.get("/metrics").text
    assert metric_value(metrics, "cache_requests_total", result="invalid") == len(bad_values)
    store.close()


def test_password_protected_redis_and_near_cache_through_an_outage(
    bundle_dir: Path, redis_process: RedisProcess, tmp_path: Path
) -> None:
    users = bundle_users(bundle_dir)
    admin = redis.Redis.from_url(redis_process.url)
    admin.config_set("requirepass", PASSWORD)
    admin.close()
    env = serve_env(
        bundle_dir,
        REDIS_URL=redis_process.url,
        REDIS_PASSWORD=PASSWORD,
        CACHE_LOCAL_TTL_SECONDS="30",
        REDIS_SOCKET_TIMEOUT_SECONDS="0.05",
        BREAKER_RESET_SECONDS="60",
    )
    with (
        serving(env, tmp_path / "server.log") as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):

        def recommend(user: str) -> dict[str, object]:
            response = client.get("/recommend", params={"user_id": user, "k": 3})
            assert response.status_code == 200
            return dict(response.json())

        assert recommend(users[0])["cached"] is False
        stored = redis.Redis.from_url(redis_process.url, password=PASSWORD)
        assert _keys(stored), "the list was written to the password-protected Redis"
        stored.close()
        ready = client.get("/readyz").json()
        assert ready["cache"] == {"backend": "redis", "status": "up"}

        redis_process.kill()
        # Computed while Redis is dead, then served from process memory.
        assert recommend(users[1])["cached"] is False
        assert recommend(users[1])["cached"] is True
        assert recommend(users[0])["cached"] is True  # cached before the outage
        metrics = client.get("/metrics").text
    assert metric_value(metrics, "cache_requests_total", result="error") >= 1
    assert metric_value(metrics, "cache_local_hits_total") >= 2
