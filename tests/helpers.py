"""Small helpers shared by the service, fault and deployment tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def copy_bundle(source: Path, target_root: Path, *, version: str) -> Path:
    """A copy of a bundle under a new version; the manifest itself carries no hash."""
    target = target_root / version
    shutil.copytree(source.resolve(), target)
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = version
    manifest_path.write_text(json.dumps(manifest))
    return target


def metric_total(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`, from exposition text."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def error_body(response: Any) -> dict[str, Any]:
    """An error response's body without its request id, once that id is checked to be the
    one of the X-Request-ID header (every error carries it, app/errors.py)."""
    body = dict(response.json())
    assert body.pop("request_id") == response.headers["x-request-id"], body
    return body


def modules_loaded_by(imports: str, *, forbidden: set[str]) -> list[str]:
    """Top-level packages in `forbidden` that a fresh interpreter loads for `imports`
    (a comma-separated module list): what an import really pulls in, not what a file names."""
    repo = Path(__file__).resolve().parents[1]
    code = (
        f"import sys, {imports}\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(forbidden)!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [m for m in result.stdout.strip().split(",") if m]
