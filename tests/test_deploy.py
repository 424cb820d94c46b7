"""deploy/: the compose example, Prometheus config and alert rules, the Grafana dashboard.

The rules, every dashboard query and the Prometheus config go through promtool when it is
installed (Debian: `apt-get install prometheus`); without it those three tests skip with a
warning, and the structural checks still run. Every metric and label the rules and the
dashboard use must exist on a live relay's /metrics (scraped after a simulated turn and a
push, so the histograms have samples) and in docs/metrics.md.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from relay.app import make_app
from relay.config.load import load, parse
from tests.relay.fakes import FakeBusiness

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = "promtool not installed (apt-get install prometheus): PromQL not parsed"
SERVICES = {"redis", "relay-1", "relay-2", "business", "prometheus", "grafana"}
RELAYS = ("relay-1", "relay-2")
# Labels Prometheus adds to every scraped series, and the histogram bucket label.
SCRAPE_LABELS = {"instance", "job"}
_METRIC = re.compile(r"\brelay_[a-z0-9_]+\b")
_SELECTOR = re.compile(r"\b(relay_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for group in load_yaml(ALERTS)["groups"]:
        rules.extend(group["rules"])
    return rules


def documented_rules() -> list[dict[str, Any]]:
    """The rules of docs/metrics.md's "Example alert rules" YAML block."""
    text = METRICS_DOC.read_text(encoding="utf-8")
    block = text.split("## Example alert rules", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    rules: list[dict[str, Any]] = []
    for group in yaml.safe_load(block)["groups"]:
        rules.extend(group["rules"])
    return rules


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    """docs/metrics.md tables: metric name -> (type, label names)."""
    out: dict[str, tuple[str, set[str]]] = {}
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`relay_"):
            out[cells[0].strip("`")] = (cells[1], set(re.findall(r"`([a-z_]+)`", cells[2])))
    return out


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Prometheus would receive it."""
    return expr.replace("$__rate_interval", "5m").replace("$instance", ".*")


def every_expr() -> list[str]:
    return [r["expr"] for r in alert_rules()] + [as_promql(e) for e in dashboard_exprs()]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=30, check=False
    )


# ---- alert rules ------------------------------------------------------------------------


def test_alert_rules_are_the_documented_ones() -> None:
    def key(rule: dict[str, Any]) -> tuple[str, str, str]:
        return (rule["alert"], " ".join(rule["expr"].split()), rule.get("for", ""))

    assert [key(r) for r in alert_rules()] == [key(r) for r in documented_rules()]
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"Relay[A-Za-z]+", rule["alert"])
        assert re.fullmatch(r"[0-9]+[smhd]", rule.get("for", "0s")), rule
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule
        assert rule["annotations"]["summary"], rule


def require_promtool() -> None:
    """Skip, with a warning in the summary too, when promtool is not installed."""
    if PROMTOOL is None:
        warnings.warn(NO_PROMTOOL, stacklevel=2)
        pytest.skip(NO_PROMTOOL)


def test_alert_rules_pass_promtool() -> None:
    require_promtool()
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


# ---- dashboard ----------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    dash = dashboard()
    assert dash["uid"] == "voice-relay"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels():
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert 'instance=~"$instance"' in target["expr"], target["expr"]
    # The views the brief asks for, each from its metric.
    used = {m for e in dashboard_exprs() for m in _METRIC.findall(e)}
    for metric in (
        "relay_connections_active",
        "relay_messages_total",
        "relay_business_requests_total",
        "relay_business_first_event_seconds_bucket",
        "relay_business_request_duration_seconds_bucket",
        "relay_speech_end_to_first_audio_seconds_bucket",
        "relay_tts_seconds_bucket",
        "relay_push_total",
        "relay_redis_errors_total",
        "relay_pacing_lead_seconds_bucket",
    ):
        assert metric in used, metric
    quantiles = {e for e in dashboard_exprs() if "histogram_quantile(0.99" in e}
    assert any("relay_business_first_event_seconds_bucket" in e for e in quantiles)


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    require_promtool()
    rules = [
        {"record": f"dashboard:query_{i}", "expr": as_promql(e)}
        for i, e in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# ---- every metric and label used exists -----------------------------------------------


def exposed_names(text: str) -> dict[str, set[str]]:
    """Series names a scrape of `text` can hold -> label names seen, suffixes included."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names.setdefault(family.name, set())
        for suffix in _SUFFIXES.get(family.type, ()):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def base_name(series: str, documented: dict[str, tuple[str, set[str]]]) -> str:
    """The documented metric a series name belongs to (histograms: without the suffix)."""
    if series in documented:
        return series
    for suffix in ("_bucket", "_count", "_sum"):
        if series.endswith(suffix) and series.removesuffix(suffix) in documented:
            return series.removesuffix(suffix)
    raise AssertionError(f"{series} is not in docs/metrics.md")


async def scrape_live_relay(aiohttp_server: Any, aiohttp_client: Any) -> str:
    """A relay after one spoken turn and one push: histograms and labelled counters filled."""
    business: TestServer = await aiohttp_server(FakeBusiness().app())
    cfg = {
        # The light voice: the metrics are under test, not the speech (Kokoro would load here).
        "tts": {"provider": "espeak"},
        "business": [{"name": "fake", "url": str(business.make_url("/chat"))}],
    }
    client: TestClient[Any, Any] = await aiohttp_client(make_app(parse(cfg)))
    resp = await client.post("/api/v1/simulate", json={"device_id": "d1", "text": "hi"})
    assert resp.status == 200
    assert b'"state":"stop"' in await resp.read()
    resp = await client.post("/api/v1/devices/nobody/messages", json={"speak": "hi"})
    assert resp.status == 404
    resp = await client.get("/metrics")
    assert resp.status == 200
    return await resp.text()


async def test_metrics_used_exist_on_a_live_relay(aiohttp_server: Any, aiohttp_client: Any) -> None:
    exposed = exposed_names(await scrape_live_relay(aiohttp_server, aiohttp_client))
    # The scrape really has samples for the histograms the rules and the dashboard read.
    assert "le" in exposed["relay_business_first_event_seconds_bucket"]
    assert "le" in exposed["relay_pacing_lead_seconds_bucket"]
    assert "result" in exposed["relay_push_total"]
    documented = documented_metrics()
    for expr in every_expr():
        used = set(_METRIC.findall(expr))
        assert used, expr
        allowed = set(SCRAPE_LABELS)
        for series in used:
            assert series in exposed, f"{series} (in {expr!r}) is not on /metrics"
            metric = base_name(series, documented)
            labels = documented[metric][1] | exposed[series]
            if series.endswith("_bucket"):
                labels.add("le")
            allowed |= labels
            for selector in _SELECTOR.finditer(expr):
                if selector.group(1) == series:
                    for label in _MATCHER.findall(selector.group(2)):
                        assert label in labels | SCRAPE_LABELS, f"{series} has no {label}"
        for clause in _BY.findall(expr):
            for label in filter(None, (x.strip() for x in clause.split(","))):
                assert label in allowed, f"{label} in {expr!r} belongs to none of {used}"


def test_every_documented_metric_is_on_the_dashboard() -> None:
    used = {m for e in dashboard_exprs() for m in _METRIC.findall(e)}
    documented = documented_metrics()
    on_dashboard = {base_name(m, documented) for m in used}
    assert set(documented) - on_dashboard == set()


# ---- compose and Prometheus config ---------------------------------------------------------


def test_compose_names_the_services_and_wires_them() -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    assert set(services) == SERVICES
    envs = [services[r]["environment"] for r in RELAYS]
    assert {e["RELAY__REDIS__URL"] for e in envs} == {"redis://redis:6379/0"}
    assert [e["RELAY__REDIS__NODE_ID"] for e in envs] == list(RELAYS)
    assert {e["RELAY__BUSINESS__0__URL"] for e in envs} == {"http://business:8090/chat"}
    assert "8090" in services["business"]["command"]
    assert [p.split(":")[-1] for r in RELAYS for p in services[r]["ports"]] == ["8000", "8000"]
    # Files the services mount are the ones in deploy/.
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).is_file(), volume
    mounts = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    prometheus = load_yaml(PROMETHEUS)
    assert set(prometheus["rule_files"]) <= mounts
    # Prometheus scrapes with the relays' metrics-only token, never one of their API tokens.
    secret = services["prometheus"]["secrets"][0]
    assert compose["secrets"][secret] == {"environment": "RELAY_METRICS_TOKEN"}
    assert {e["RELAY__METRICS__TOKENS"].split(":")[0] for e in envs} == {"${RELAY_METRICS_TOKEN"}
    assert {e["RELAY__API__TOKENS"].split(":")[0] for e in envs} == {"${RELAY_API_TOKEN"}
    (job,) = prometheus["scrape_configs"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": f"/run/secrets/{secret}"}
    (targets,) = job["static_configs"]
    assert targets["targets"] == [f"{r}:8000" for r in RELAYS]
    assert job.get("metrics_path", "/metrics") == "/metrics"


@pytest.mark.parametrize("relay", RELAYS)
def test_compose_relay_environment_is_a_valid_config(relay: str) -> None:
    env = dict(load_yaml(COMPOSE)["services"][relay]["environment"])
    env["RELAY__API__TOKENS"] = "t0ken"  # what compose substitutes from RELAY_API_TOKEN
    env["RELAY__METRICS__TOKENS"] = "m3trics"  # and from RELAY_METRICS_TOKEN
    config = load(ROOT / "config.toml", env=env)
    assert config.metrics.tokens == ("m3trics",)
    assert config.redis.url == "redis://redis:6379/0"
    assert config.redis.node_id == relay
    assert config.api.tokens == ("t0ken",)
    assert config.business[0].url == "http://business:8090/chat"


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    require_promtool()
    config = load_yaml(PROMETHEUS)
    token = tmp_path / "token"
    token.write_text("t0ken")
    config["rule_files"] = [str(ALERTS)]
    config["scrape_configs"][0]["authorization"]["credentials_file"] = str(token)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_config_with_docker_if_available() -> None:
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False, timeout=30
        ).returncode
    ):
        pytest.skip("docker compose not available: compose file checked as YAML only")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        env={"RELAY_API_TOKEN": "t0ken", "PATH": "/usr/bin:/bin:/usr/local/bin"},
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_image_copies_every_package_it_installs() -> None:
    # `pip install .` in the Dockerfile builds every package pyproject lists: a top-level
    # folder that is not copied before it breaks the image build (docker is not run here).
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    dockerfile = (ROOT / "Dockerfile").read_text()
    install = dockerfile.index("RUN pip install")
    copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile[:install], re.M))
    assert {p.split(".")[0] for p in packages} <= copied
