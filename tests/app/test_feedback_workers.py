"""Two uvicorn workers share one experiment: each records the lists it serves and the
feedback it receives, and both give the same readout, because its counts live in Redis."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from bench._server import uvicorn_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

TOKEN = "workers-token"


def _ids(bundle: Path, kind: str) -> list[str]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return [
        str(i)
        for i in json.loads((bundle / manifest["files"]["id_maps"]["file"]).read_text())[kind]
    ]


def test_two_workers_report_the_same_readout(bundle_dir: Path, loop_redis_url: str) -> None:
    users = _ids(bundle_dir, "users")[:20]
    env = {
        "MODEL_DIR": str(bundle_dir),
        "REDIS_URL": loop_redis_url,
        "ORT_PROVIDERS": "CPUExecutionProvider",
        "ORT_INTRA_OP_THREADS": "1",
        "ADMIN_TOKEN": TOKEN,
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "WARNING",
    }
    headers = {"Authorization": f"Bearer {TOKEN}", "Connection": "close"}
    with uvicorn_server(env, workers=2) as server:
        metrics_dir = server.log_path.parent / "prometheus"
        hits = {"teacher": 0, "student": 0}
        # A new connection per request, so that both workers take their share.
        for n, user in enumerate(users):
            served = httpx.get(
                f"{server.base_url}/recommend",
                params={"user_id": user, "k": 5},
                headers={"Connection": "close"},
            ).json()
            if n % 2:
                clicked = {
                    "user_id": user,
                    "item_id": served["items"][0]["item_id"],
                    "event": "click",
                    "request_id": served["request_id"],
                }
                for _ in range(2):  # the repeat counts once, whichever worker takes it
                    response = httpx.post(
                        f"{server.base_url}/feedback", json=clicked, headers={"Connection": "close"}
                    )
                    assert response.status_code == 202
                hits[served["variant"]] += 1
        readouts = [
            httpx.get(f"{server.base_url}/admin/experiment", headers=headers).json()
            for _ in range(12)
        ]
        # Each worker that answered a request wrote its own histogram file; the kernel
        # spreads connections, so a few more requests settle a lopsided start.
        for _ in range(100):
            if len(list(metrics_dir.glob("histogram_*.db"))) >= 2:
                break
            httpx.get(f"{server.base_url}/admin/experiment", headers=headers)
        answered = sorted(metrics_dir.glob("histogram_*.db"))
    assert len(answered) == 2, "only one worker answered; the comparison would prove nothing"
    first = readouts[0]
    for readout in readouts[1:]:
        assert readout["variants"] == first["variants"]
        assert readout["experiment"] == first["experiment"]
        assert {**readout["difference"], "looks": 0} == {**first["difference"], "looks": 0}
    variants = first["variants"]
    assert variants["teacher"]["impressions"] + variants["student"]["impressions"] == len(users)
    for variant, expected in hits.items():
        assert variants[variant]["lists_with_hit"] == variants[variant]["hits"] == expected
        assert variants[variant]["feedback"] == 2 * expected
    assert [r["difference"]["looks"] for r in readouts] == list(range(1, 13))
