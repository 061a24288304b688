"""deploy/k8s: structure, and agreement with the image, the settings and each other."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import pytest

from app.main import app
from tests.deploy.conftest import APP_PORT, DEPLOY, REPO, load_yaml_documents, shell_variables
from tests.deploy.dockerfile import read_dockerfile

K8S = DEPLOY / "k8s"
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def kustomization() -> Doc:
    return load_yaml_documents(K8S / "kustomization.yaml")[0]


@pytest.fixture(scope="module")
def docs(kustomization: Doc) -> dict[tuple[str, str], Doc]:
    found = {}
    for name in kustomization["resources"]:
        for doc in load_yaml_documents(K8S / name):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"duplicate {key}"
            found[key] = doc
    return found


@pytest.fixture(scope="module")
def deployment(docs: dict[tuple[str, str], Doc]) -> Doc:
    return docs[("Deployment", "recsys-app")]


@pytest.fixture(scope="module")
def app_container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "app")


@pytest.fixture(scope="module")
def configmap(docs: dict[tuple[str, str], Doc]) -> dict[str, str]:
    return docs[("ConfigMap", "recsys-config")]["data"]


def _pod_specs(docs: dict[tuple[str, str], Doc]) -> list[tuple[str, Doc]]:
    return [
        (name, doc["spec"]["template"]["spec"])
        for (kind, name), doc in docs.items()
        if kind in {"Deployment", "Job", "StatefulSet"}
    ]


def test_kustomization_lists_every_manifest(kustomization: Doc) -> None:
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_every_object_is_namespaced_and_labelled(docs: dict[tuple[str, str], Doc]) -> None:
    for (kind, name), doc in docs.items():
        assert doc["apiVersion"] and doc["metadata"]["labels"], (kind, name)
        if kind != "Namespace":
            assert doc["metadata"]["namespace"] == "recsys", (kind, name)


def test_probes_hit_the_app_routes_on_its_port(app_container: Doc) -> None:
    ports = {p["name"]: p["containerPort"] for p in app_container["ports"]}
    assert ports == {"http": APP_PORT}
    assert app_container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert app_container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert app_container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz", "/metrics"} <= set(app.openapi()["paths"])


def test_container_runs_the_image_serve_script(app_container: Doc) -> None:
    serve = read_dockerfile(REPO / "Dockerfile").stages["serve"]
    copied = [args.split()[-1] for args in serve.all("COPY") if "serve.sh" in args]
    assert app_container["command"] == ["sh", copied[0]]


def test_every_container_is_bounded_and_unprivileged(docs: dict[tuple[str, str], Doc]) -> None:
    for owner, pod in _pod_specs(docs):
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0, owner
        assert pod["automountServiceAccountToken"] is False, owner
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{owner}/{container['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), where
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where


def test_serving_runs_as_the_image_uid(deployment: Doc) -> None:
    dockerfile = read_dockerfile(REPO / "Dockerfile")
    uid = int(dockerfile.global_args["APP_UID"])
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid


def test_env_names_are_settings(
    app_container: Doc, configmap: dict[str, str], serve_env_names: set[str]
) -> None:
    names = set(configmap) | {e["name"] for e in app_container["env"]}
    assert names <= serve_env_names, names - serve_env_names
    assert app_container["envFrom"] == [{"configMapRef": {"name": "recsys-config"}}]
    assert "ADMIN_TOKEN" not in configmap, "the admin token belongs in the Secret"


def test_admin_token_comes_from_the_secret(
    app_container: Doc, docs: dict[tuple[str, str], Doc]
) -> None:
    ref = next(e for e in app_container["env"] if e["name"] == "ADMIN_TOKEN")
    key = ref["valueFrom"]["secretKeyRef"]
    secret = docs[("Secret", key["name"])]
    assert key["key"] in secret["stringData"]


def test_multiworker_metrics_have_a_shared_memory_dir(
    app_container: Doc, configmap: dict[str, str], deployment: Doc
) -> None:
    assert int(configmap["WEB_CONCURRENCY"]) > 1
    directory = configmap["PROMETHEUS_MULTIPROC_DIR"]
    mount = next(m for m in app_container["volumeMounts"] if m["mountPath"] == directory)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"
    # One onnxruntime thread per worker keeps workers within the CPU limit.
    limit = app_container["resources"]["limits"]["cpu"]
    cores = float(limit[:-1]) / 1000 if limit.endswith("m") else float(limit)
    threads = int(configmap["ORT_INTRA_OP_THREADS"])
    assert threads >= 1 and threads * int(configmap["WEB_CONCURRENCY"]) <= cores
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(APP_PORT)


def test_bundle_volume_is_read_only_and_written_by_the_job(
    docs: dict[tuple[str, str], Doc], deployment: Doc, app_container: Doc, configmap: dict[str, str]
) -> None:
    pod = deployment["spec"]["template"]["spec"]
    claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = docs[("PersistentVolumeClaim", claim["claimName"])]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    mount = next(m for m in app_container["volumeMounts"] if m["name"] == "models")
    assert configmap["MODEL_DIR"].startswith(mount["mountPath"] + "/") and mount["readOnly"]
    init = pod["initContainers"][0]
    assert configmap["MODEL_DIR"] + "/manifest.json" in " ".join(init["command"])

    job_pod = docs[("Job", "recsys-train")]["spec"]["template"]["spec"]
    job_claim = next(v for v in job_pod["volumes"] if v["name"] == "models")
    assert job_claim["persistentVolumeClaim"]["claimName"] == claim["claimName"]
    train = job_pod["containers"][0]
    env = {e["name"]: e["value"] for e in train["env"]}
    assert set(env) <= shell_variables(DEPLOY / "docker" / "train-if-missing.sh")
    job_mount = next(m for m in train["volumeMounts"] if m["name"] == "models")
    assert env["OUT_DIR"] == job_mount["mountPath"] == mount["mountPath"]
    assert not job_mount.get("readOnly", False)


def test_service_selects_the_pods_on_the_app_port(
    docs: dict[tuple[str, str], Doc], deployment: Doc
) -> None:
    service = docs[("Service", "recsys-app")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = docs[("PodDisruptionBudget", "recsys-app")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_hpa_scales_the_deployment_on_cpu(
    docs: dict[tuple[str, str], Doc], app_container: Doc
) -> None:
    hpa = docs[("HorizontalPodAutoscaler", "recsys-app")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "recsys-app")
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    # Utilisation is relative to the request, so the request must exist.
    assert "cpu" in app_container["resources"]["requests"]


def test_redis_url_points_at_the_redis_service(
    docs: dict[tuple[str, str], Doc], configmap: dict[str, str]
) -> None:
    url = urlparse(configmap["REDIS_URL"])
    service = docs[("Service", url.hostname or "")]
    assert url.port == service["spec"]["ports"][0]["port"] == 6379
    redis = docs[("Deployment", "redis")]["spec"]["template"]
    assert service["spec"]["selector"].items() <= redis["metadata"]["labels"].items()
    names = {c["name"] for c in redis["spec"]["containers"]}
    assert "redis-exporter" in names, "the RedisDown alert reads redis_exporter's redis_up"


def test_images_are_the_kustomized_ones(
    docs: dict[tuple[str, str], Doc], kustomization: Doc
) -> None:
    names = {image["name"] for image in kustomization["images"]}
    for owner, pod in _pod_specs(docs):
        for container in pod.get("initContainers", []) + pod["containers"]:
            image = container["image"].split(":")[0]
            if image in {"redis", "oliver006/redis_exporter"}:
                continue
            assert image in names, f"{owner}/{container['name']} image {image} not kustomized"


def _env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def test_redis_requires_the_password_the_app_is_given(
    docs: dict[tuple[str, str], Doc], app_container: Doc, configmap: dict[str, str]
) -> None:
    pod = docs[("Deployment", "redis")]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    refs = []
    for container in (containers["redis"], containers["redis-exporter"], app_container):
        ref = _env(container)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert not ref.get("optional", False)
        refs.append((ref["name"], ref["key"]))
    assert len(set(refs)) == 1
    name, key = refs[0]
    assert key in docs[("Secret", name)]["stringData"]
    redis = containers["redis"]
    script = " ".join(redis["command"])
    assert '--requirepass "$REDIS_PASSWORD"' in script and 'test -n "$REDIS_PASSWORD"' in script
    assert "REDISCLI_AUTH" in " ".join(redis["readinessProbe"]["exec"]["command"])
    assert urlparse(configmap["REDIS_URL"]).password is None


def test_only_the_app_reaches_redis(docs: dict[tuple[str, str], Doc], deployment: Doc) -> None:
    policies = [doc for (kind, _), doc in docs.items() if kind == "NetworkPolicy"]
    redis_labels = docs[("Deployment", "redis")]["spec"]["template"]["metadata"]["labels"]
    app_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (policy,) = [
        p
        for p in policies
        if p["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        if 6379 in ports:
            sources = rule["from"]
            assert sources and all(
                set(s) == {"podSelector"}
                and s["podSelector"]["matchLabels"].items() <= app_labels.items()
                for s in sources
            )
        else:
            assert ports == {9121}, "only the exporter's metrics port is open to others"


def test_production_restricts_the_variant_override(configmap: dict[str, str]) -> None:
    assert configmap["VARIANT_OVERRIDE"] in {"admin", "deny"}
