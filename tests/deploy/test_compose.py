"""docker-compose.yml against the Dockerfile, the scripts, the settings and deploy/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.deploy.conftest import APP_PORT, DEPLOY, REPO, load_yaml_documents, shell_variables
from tests.deploy.dockerfile import read_dockerfile


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (source, read_only)."""
    found = {}
    for spec in service.get("volumes", []):
        # The source may be a `${VAR:-default}` with colons of its own.
        match = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::([\w,]+))?", spec)
        assert match, f"unreadable volume {spec!r}"
        source, target, mode = match.groups()
        found[target] = (source, "ro" in (mode or "").split(","))
    return found


def test_stack_has_every_service(services: dict[str, Any]) -> None:
    assert {"redis", "trainer", "app", "prometheus", "grafana", "app-gpu"} <= set(services)


def test_build_targets_exist(services: dict[str, Any]) -> None:
    stages = read_dockerfile(REPO / "Dockerfile").stages
    targets = {"trainer": "train", "app": "serve", "app-gpu": "serve-gpu"}
    for name, target in targets.items():
        assert services[name]["build"] == {"context": ".", "target": target}
        assert target in stages


def test_app_waits_for_the_trainer_and_a_healthy_redis(services: dict[str, Any]) -> None:
    assert "healthcheck" in services["redis"]
    assert services["trainer"]["restart"] == "no"
    for name in ("app", "app-gpu"):
        assert services[name]["depends_on"] == {
            "trainer": {"condition": "service_completed_successfully"},
            "redis": {"condition": "service_healthy"},
        }


def test_app_env_names_are_settings(services: dict[str, Any], serve_env_names: set[str]) -> None:
    for name in ("app", "app-gpu"):
        env = services[name]["environment"]
        assert set(env) <= serve_env_names, set(env) - serve_env_names
        redis = urlparse(env["REDIS_URL"])
        assert redis.hostname in services and redis.port == 6379
        assert env["MODEL_DIR"] == "/models/current"
        # Multiprocess metrics need their directory on a writable filesystem.
        assert env["PROMETHEUS_MULTIPROC_DIR"] in services[name]["tmpfs"]
        assert f"{APP_PORT}" == services[name]["ports"][0].rsplit(":", 1)[1]


def test_trainer_writes_the_volume_the_app_reads(services: dict[str, Any]) -> None:
    trainer, app = services["trainer"], services["app"]
    out_dir = trainer["environment"]["OUT_DIR"]
    assert set(trainer["environment"]) <= shell_variables(DEPLOY / "docker" / "train-if-missing.sh")
    source, read_only = _mounts(trainer)[out_dir]
    assert not read_only
    for name in ("app", "app-gpu"):
        app_source, app_ro = _mounts(services[name])[out_dir]
        assert app_source == source and app_ro
    assert app["environment"]["MODEL_DIR"].startswith(out_dir + "/")


def test_gpu_profile_reserves_a_gpu(services: dict[str, Any]) -> None:
    gpu = services["app-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["environment"]["ORT_PROVIDERS"].startswith("CUDAExecutionProvider")
    assert "profiles" not in services["app"], "plain `docker compose up` must serve on CPU"


def test_prometheus_reads_deploy_prometheus_and_scrapes_the_apps(
    services: dict[str, Any],
) -> None:
    prom = services["prometheus"]
    mounts = _mounts(prom)
    config_flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_path = Path(config_flag.split("=", 1)[1])
    source, read_only = mounts[str(config_path.parent)]
    assert read_only and (REPO / source).resolve() == DEPLOY / "prometheus"
    config = load_yaml_documents(DEPLOY / "prometheus" / "prometheus.yml")[0]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    dns = jobs["recsys"]["dns_sd_configs"][0]
    assert set(dns["names"]) == {"app", "app-gpu"} and dns["port"] == APP_PORT
    assert jobs["recsys"].get("metrics_path", "/metrics") == "/metrics"
    redis_target = jobs["redis"]["static_configs"][0]["targets"][0]
    assert redis_target.split(":")[0] in services


def test_grafana_is_provisioned_from_deploy_grafana(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    mounts = _mounts(grafana)
    for kind in ("datasources", "dashboards"):
        source, read_only = mounts[f"/etc/grafana/provisioning/{kind}"]
        assert read_only and (REPO / source).resolve() == DEPLOY / "grafana" / "provisioning" / kind
    provider = load_yaml_documents(DEPLOY / "grafana/provisioning/dashboards/recsys.yml")[0]
    dashboards_path = provider["providers"][0]["options"]["path"]
    source, _ = mounts[dashboards_path]
    assert (REPO / source / "recsys.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_path}/recsys.json"
    datasource = load_yaml_documents(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")[0]
    url = urlparse(datasource["datasources"][0]["url"])
    assert url.hostname == "prometheus" and url.port == 9090


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    for service in services.values():
        for source, _ in _mounts(service).values():
            if not source.startswith((".", "/", "$")):
                assert source in compose["volumes"], source


def test_volume_mount_points_exist_in_the_images(services: dict[str, Any]) -> None:
    # Docker creates a missing mount point as root, which the non-root user cannot write.
    stages = read_dockerfile(REPO / "Dockerfile").stages
    created = {name: " ".join(stages[name].all("RUN")) for name in ("train", "serve", "serve-gpu")}
    for service, stage in (("trainer", "train"), ("app", "serve"), ("app-gpu", "serve-gpu")):
        for target, (_source, read_only) in _mounts(services[service]).items():
            if not read_only:
                assert "mkdir -p" in created[stage] and target in created[stage], (
                    f"{service}: {target} is not created (and chowned) in stage {stage}"
                )


def _services_with_ports(services: dict[str, Any]) -> dict[str, list[str]]:
    return {name: s["ports"] for name, s in services.items() if s.get("ports")}


def test_secrets_have_no_defaults_and_are_listed_in_the_env_example(
    services: dict[str, Any],
) -> None:
    text = (REPO / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert {"REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= required
    # No `${GRAFANA_ADMIN_PASSWORD:-admin}` style fallback anywhere.
    for name in required:
        assert not re.search(r"\$\{" + name + r":-", text), name
    example = (REPO / ".env.example").read_text()
    for name in required:
        assert re.search(rf"^{name}=$", example, re.MULTILINE), f"{name} not in .env.example"
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_grafana_and_prometheus_are_locked_down(services: dict[str, Any]) -> None:
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in grafana
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert not any("enable-lifecycle" in arg for arg in services["prometheus"]["command"])


def test_ports_listen_on_loopback_unless_configured(services: dict[str, Any]) -> None:
    published = _services_with_ports(services)
    assert {"app", "app-gpu", "prometheus", "grafana"} <= set(published)
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, port)


def test_every_long_running_service_has_a_memory_limit(services: dict[str, Any]) -> None:
    for name, service in services.items():
        limit = service.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
        assert limit, f"{name} has no memory limit"


def test_redis_needs_the_password_the_app_and_exporter_use(services: dict[str, Any]) -> None:
    redis = services["redis"]
    password = redis["environment"]["REDIS_PASSWORD"]
    assert password.startswith("${REDIS_PASSWORD:?")
    command = " ".join(redis["command"])
    assert '--requirepass "$$REDIS_PASSWORD"' in command
    assert "PONG" in " ".join(redis["healthcheck"]["test"])
    assert services["redis-exporter"]["environment"]["REDIS_PASSWORD"] == password
    for name in ("app", "app-gpu"):
        env = services[name]["environment"]
        assert env["REDIS_PASSWORD"] == password
        assert urlparse(env["REDIS_URL"]).password is None, "the password stays out of the URL"


def test_routing_file_is_on_a_volume_every_app_shares(services: dict[str, Any]) -> None:
    sources = set()
    for name in ("app", "app-gpu"):
        path = Path(services[name]["environment"]["ROUTING_FILE"])
        source, read_only = _mounts(services[name])[str(path.parent)]
        assert not read_only
        sources.add(source)
    assert len(sources) == 1, "workers of every app container must read the same file"
