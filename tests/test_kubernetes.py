"""deploy/kubernetes/: every manifest valid against the Kubernetes schemas (kubernetes-validate
ships them, no network), the pieces wired to each other (selectors, ports, probes, Secret
keys), the grace period covering the drain, and the ConfigMap's config.toml served by a real
relay whose probes and /metrics answer as the manifests expect. Where `kubectl` is installed
the kustomization is also rendered with `kubectl kustomize`, as `kubectl apply -k` would."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml
from pytest_aiohttp import AiohttpClient

from relay.app import make_app
from relay.config.load import load
from relay.config.schema import Config
from relay.run.server import start_metrics

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes release still supported upstream when this was written, and the newest
# the validator knows.
K8S_VERSIONS = ("1.32.0", kubernetes_validate.utils.latest_version())
COMPONENTS = ("redis", "servicemonitor")  # servicemonitor: only with the Prometheus Operator
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}  # not in the Kubernetes schemas
Doc = dict[str, Any]


def read_docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def kustomization(directory: Path) -> Doc:
    [doc] = read_docs(directory / "kustomization.yaml")
    return doc


def resources_of(directory: Path) -> list[Path]:
    return [directory / name for name in kustomization(directory).get("resources", [])]


def manifests(components: tuple[str, ...] = COMPONENTS) -> list[Doc]:
    """The base's resources plus the named components' (what kustomize assembles)."""
    files = resources_of(K8S) + [f for c in components for f in resources_of(K8S / c)]
    return [doc for f in files for doc in read_docs(f)]


def one(kind: str, name: str, docs: list[Doc] | None = None) -> Doc:
    [doc] = [d for d in docs or manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


DEPLOYMENT = one("Deployment", "relay")
POD = DEPLOYMENT["spec"]["template"]["spec"]
[CONTAINER] = POD["containers"]
SECRET = one("Secret", "relay-secrets")
CONFIG_TOML = one("ConfigMap", "relay-config")["data"]["config.toml"]


def relay_env(redis: bool = True) -> dict[str, str]:
    """The relay container's RELAY__ environment, with the Secret's and ConfigMaps' values."""
    env: dict[str, str] = {}
    for var in CONTAINER["env"]:
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["name"] == SECRET["metadata"]["name"]
        env[var["name"]] = SECRET["stringData"][ref["key"]]
    for source in CONTAINER["envFrom"]:
        name = source["configMapRef"]["name"]
        maps = [
            d for d in manifests() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name
        ]
        if redis:
            env.update(one("ConfigMap", name, maps)["data"])
    return env


def relay_config(tmp_path: Path, redis: bool = True) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG_TOML, encoding="utf-8")
    return load(path, env=relay_env(redis))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    checked = 0
    for doc in manifests():
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 9  # ConfigMaps, Secret, Deployments, Services, PDB, HPA


def test_every_file_is_in_a_kustomization() -> None:
    listed = {K8S / "kustomization.yaml", *resources_of(K8S)}
    for component in COMPONENTS:
        directory = K8S / component
        assert kustomization(directory)["kind"] == "Component"
        listed |= {directory / "kustomization.yaml", *resources_of(directory)}
    assert set(K8S.rglob("*.yaml")) == listed
    base = kustomization(K8S)
    assert base["kind"] == "Kustomization"
    assert base["components"] == ["redis"]  # servicemonitor: commented out, needs its CRDs


def test_the_pieces_are_wired_to_each_other() -> None:
    pod_labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one("Service", "relay")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert one("PodDisruptionBudget", "relay")["spec"]["selector"]["matchLabels"] == pod_labels
    target = one("HorizontalPodAutoscaler", "relay")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "relay")
    port_names = {p["name"] for p in CONTAINER["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert CONTAINER[probe]["httpGet"]["port"] in port_names
    assert CONTAINER["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert CONTAINER["livenessProbe"]["httpGet"]["path"] == "/healthz"
    volumes = {v["name"]: v for v in POD["volumes"]}
    [config_mount] = [m for m in CONTAINER["volumeMounts"] if m["mountPath"] == "/etc/relay"]
    assert volumes[config_mount["name"]]["configMap"]["name"] == "relay-config"
    assert CONTAINER["args"][-1] == "/etc/relay/config.toml"


def test_prometheus_scrapes_the_metrics_port_through_a_service_of_its_own() -> None:
    monitor = one("ServiceMonitor", "relay")
    selected = monitor["spec"]["selector"]["matchLabels"].items()
    pod_labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    services = [d for d in manifests() if d["kind"] == "Service"]
    [metrics] = [s for s in services if selected <= s["metadata"]["labels"].items()]
    assert metrics["metadata"]["name"] == "relay-metrics"
    assert metrics["spec"]["selector"].items() <= pod_labels.items()
    assert metrics["spec"].get("type", "ClusterIP") == "ClusterIP"
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert "authorization" not in endpoint  # no token: the [metrics] port wants none
    [port] = [p for p in metrics["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port["targetPort"] == "metrics"
    [container_port] = [p for p in CONTAINER["ports"] if p["name"] == "metrics"]
    # The device-facing Service does not carry it (it may be a LoadBalancer).
    service = one("Service", "relay")
    assert container_port["containerPort"] not in {p["port"] for p in service["spec"]["ports"]}
    assert "metrics" not in {p["targetPort"] for p in service["spec"]["ports"]}


def test_the_grace_period_covers_the_drain(tmp_path: Path) -> None:
    cfg = relay_config(tmp_path)
    command = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = int(command[1])
    # SIGTERM comes after preStop; the relay then drains for up to drain_timeout_s.
    assert POD["terminationGracePeriodSeconds"] >= pre_stop_s + cfg.server.drain_timeout_s + 5


def test_the_config_map_config_is_what_the_manifests_expect(tmp_path: Path) -> None:
    cfg = relay_config(tmp_path)
    ports = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    assert (cfg.server.host, cfg.server.port) == ("0.0.0.0", ports["http"])
    assert (cfg.metrics.host or cfg.server.host, cfg.metrics.port) == ("0.0.0.0", ports["metrics"])
    assert cfg.redis.url == "redis://relay-redis:6379/0"
    redis_service = one("Service", "relay-redis")
    assert f"{redis_service['metadata']['name']}:{redis_service['spec']['ports'][0]['port']}" in (
        cfg.redis.url
    )
    assert cfg.api.tokens == (SECRET["stringData"]["api-tokens"],)  # none of Prometheus's
    assert cfg.business[0].token == SECRET["stringData"]["business-token"]
    assert cfg.business[0].signing_secret == SECRET["stringData"]["business-signing-secret"]
    assert relay_config(tmp_path, redis=False).redis.url == ""  # without the component


async def test_probes_and_metrics_answer_on_a_relay_with_that_config(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    client = await aiohttp_client(make_app(relay_config(tmp_path, redis=False)))
    for probe in ("readinessProbe", "livenessProbe"):
        resp = await client.get(CONTAINER[probe]["httpGet"]["path"])
        assert resp.status == 200, probe
    # The ServiceMonitor scrapes the [metrics] listener without a token (here on a free
    # port: the test binds no fixed one); the main port's /metrics wants a token.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        runner = await start_metrics(client.app, sock)
        try:
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{sock.getsockname()[1]}/metrics"
                async with http.get(url) as resp:
                    assert resp.status == 200
                    assert "relay_" in await resp.text()
        finally:
            await runner.cleanup()
    resp = await client.get("/metrics", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401


def test_the_image_runs_as_the_pods_non_root_user_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    [user] = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert int(user[0]) != 0
    assert (POD["securityContext"]["runAsUser"], POD["securityContext"]["runAsGroup"]) == (
        int(user[0]),
        int(user[1]),
    )
    assert POD["securityContext"]["runAsNonRoot"] is True
    assert re.search(r"^HEALTHCHECK .*/healthz", dockerfile, re.M)


def test_kubectl_kustomize_renders_valid_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl: `kubectl kustomize deploy/kubernetes` NOT run (the files are)")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    )
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    expected = manifests(components=("redis",))
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in expected
    )
    for doc in rendered:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "voice-relay"
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    relay = one("Deployment", "relay", rendered)
    image = kustomization(K8S)["images"][0]
    [container] = relay["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"


def test_kubectl_kustomize_renders_the_servicemonitor_component(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl: the servicemonitor component NOT rendered (its files are read)")
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy)
    base = copy / "kustomization.yaml"
    text = base.read_text(encoding="utf-8")
    assert "  # - servicemonitor\n" in text
    base.write_text(text.replace("  # - servicemonitor\n", "  - servicemonitor\n"), "utf-8")
    result = subprocess.run(
        [kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=60, check=True
    )
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in manifests()
    )
    [endpoint] = one("ServiceMonitor", "relay", rendered)["spec"]["endpoints"]
    [port] = one("Service", "relay-metrics", rendered)["spec"]["ports"]
    assert (endpoint["port"], port["name"], port["targetPort"]) == ("metrics", "metrics", "metrics")
