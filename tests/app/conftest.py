"""Fixtures for the service tests: clients of the real app on the session bundle.

`bundle_dir` (a real bundle built by the training pipeline) and `redis_url` (a flushed
Redis database) come from tests/conftest.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

import app.api.recommend as recommend_mod
from app.config import Settings
from app.main import create_app
from tests.helpers import copy_bundle, metric_total

__all__ = ["copy_bundle"]


def settings_for(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": "",
        "ort_providers": "CPUExecutionProvider",
        "ort_intra_op_threads": 1,
        "access_log": False,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_client(bundle_dir: Path) -> Iterator[Callable[..., TestClient]]:
    """Builds an app from settings overrides and runs its lifespan; closed after the test."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        overrides.setdefault("model_dir", bundle_dir)
        client = TestClient(create_app(settings_for(**overrides)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


class Reference:
    """Reads a bundle's files and runs its ONNX files directly, independently of app/,
    to check what the service answers."""

    def __init__(self, bundle: Path) -> None:
        self.np = np
        self.dir = bundle.resolve()
        self.manifest = json.loads((self.dir / "manifest.json").read_text())
        files = self.manifest["files"]
        ids = json.loads((self.dir / files["id_maps"]["file"]).read_text())
        self.users: list[str] = [str(u) for u in ids["users"]]
        self.items: list[str] = [str(i) for i in ids["items"]]
        self.popular: list[str] = [
            str(i) for i in json.loads((self.dir / files["popular"]["file"]).read_text())
        ]
        self.feature_map = json.loads((self.dir / files["feature_map"]["file"]).read_text())
        with np.load(self.dir / files["features"]["file"]) as data:
            self.user_feats = data["user_feats"]
            self.item_feats = data["item_feats"]
            self.item_genres = data["item_genres"]
        with np.load(self.dir / files["seen"]["file"]) as data:
            self.indptr, self.indices = data["indptr"], data["indices"]
        self._sessions: dict[str, Any] = {}

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def seen(self, user_index: int) -> set[str]:
        rows = self.indices[self.indptr[user_index] : self.indptr[user_index + 1]]
        return {self.items[i - 1] for i in rows.tolist()}

    def run(
        self, model: str, users: Any, items: Any, user_feats: Any | None = None
    ) -> tuple[Any, Any]:
        np = self.np
        if model not in self._sessions:
            path = self.dir / self.manifest["models"][model]["file"]
            self._sessions[model] = ort.InferenceSession(
                str(path), providers=["CPUExecutionProvider"]
            )
        session = self._sessions[model]
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        feed = {
            "user": users,
            "item": items,
            "user_feats": self.user_feats[users] if user_feats is None else user_feats,
            "item_feats": self.item_feats[items],
            "item_genres": self.item_genres[items],
        }
        names = {node.name for node in session.get_inputs()}
        rating, score = session.run(
            ["rating", "score"], {k: v for k, v in feed.items() if k in names}
        )
        return rating, score


@pytest.fixture(scope="session")
def reference(bundle_dir: Path) -> Reference:
    return Reference(bundle_dir)


def metric_value(client: Any, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`, from GET /metrics."""
    return metric_total(client.get("/metrics").text, name, **labels)


@pytest.fixture
def thread_hops(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the functions /recommend hands to a worker thread, in order."""
    calls: list[str] = []
    real = recommend_mod.anyio.to_thread.run_sync

    async def counting(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(func, "__name__", "?"))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(recommend_mod.anyio.to_thread, "run_sync", counting)
    yield calls
