"""What deploy/ ships, proven against a real Prometheus: the configuration and rules pass promtool,
and with the service under gunicorn (2 workers, PostgreSQL) scraped every second, after creates,
acknowledges and resolves of every severity, every PromQL of the README and every query of the
Grafana dashboard returns numbers, and every rule evaluates with health `ok`.

Grafana itself is not run: the dashboard's JSON is checked for what Grafana needs, and its queries
run against this Prometheus.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from incident_app.lifecycle import SEVERITIES
from tests.support.gunicorn import ROOT, GunicornService, free_port, stop_process_group

CONFIG = ROOT / "deploy" / "prometheus.yml"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "incident-management.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "dashboards.yml"
DEADLINE_SECONDS = 90


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not installed (Debian package prometheus; .ci/run installs it)"
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
    return path


def readme_promql() -> list[str]:
    blocks = re.findall(r"```promql\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "the README shows PromQL"
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for target in panel["targets"]]


def recorded_names() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["record"] for group in groups for rule in group["rules"] if "record" in rule]


@pytest.mark.parametrize(
    "command", [["check", "config", str(CONFIG)], ["check", "rules", str(RULES)]], ids=["config", "rules"]
)
def test_promtool_accepts_the_shipped_configuration_and_rules(command):
    done = subprocess.run([tool("promtool"), *command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_is_a_grafana_dashboard_with_a_prometheus_query_in_every_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    assert [v["name"] for v in dashboard["templating"]["list"] if v["type"] == "datasource"] == ["datasource"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["type"] in ("timeseries", "stat", "gauge", "table")
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and all(t["expr"].strip() and t["refId"] for t in panel["targets"])
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    queries = " ".join(dashboard_queries())
    # open_incidents is the same global figure on every replica: summing it would multiply it.
    assert "max by (severity) (open_incidents)" in queries and "sum by (severity) (open_incidents)" not in queries
    provider = yaml.safe_load(PROVISIONING.read_text())
    assert provider["apiVersion"] == 1 and provider["providers"][0]["type"] == "file"
    assert provider["providers"][0]["options"]["path"]


class Prometheus:
    """Debian's Prometheus on a free port with a temporary data directory, stopped by the test."""

    def __init__(self, config: Path, data: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={data}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=out, stderr=out, start_new_session=True,
            )

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "prometheus exited"
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus not ready in time")

    def query(self, promql: str) -> list[float]:
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5).json()
        assert answer["status"] == "success", (promql, answer)
        data = answer["data"]
        if data["resultType"] == "scalar":
            return [float(data["result"][1])]
        return [float(sample["value"][1]) for sample in data["result"]]

    def stop(self) -> None:
        stop_process_group(self.process, timeout=15)


def numbers(values: list[float]) -> bool:
    return bool(values) and all(math.isfinite(v) for v in values)


@pytest.fixture
def service(pg_database, _session_peers, tmp_path):
    oncall, notifier = _session_peers
    oncall.respond(200, {"primary": {"name": "Alice", "email": "alice@example.com"}})
    notifier.respond(200, {"status": "sent"})
    service = GunicornService(
        {"DATABASE_URL": pg_database(), "ONCALL_SERVICE_URL": oncall.url,
         "NOTIFICATION_SERVICE_URL": notifier.url, "HTTP_CLIENT_TIMEOUT": "2"},
        workers=2, log_path=tmp_path / "service.log",
    ).start()
    yield service
    service.stop()


@pytest.fixture
def prometheus(service, tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    [job] = config["scrape_configs"]
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{service.port}"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    server = Prometheus(tmp_path / "prometheus.yml", tmp_path / "tsdb", tmp_path / "prometheus.log")
    try:
        server.wait_ready(time.monotonic() + 30)
        yield server
    finally:
        server.stop()


def test_every_readme_and_dashboard_query_and_every_rule_gives_numbers_on_a_real_prometheus(service, prometheus):
    deadline = time.monotonic() + DEADLINE_SECONDS
    # rate() needs the zeros of the series before the first event: two scrapes of them first.
    while sum(prometheus.query('count_over_time(up{job="incident-management"}[1m])') or [0]) < 2:
        assert time.monotonic() < deadline, "the service was not scraped twice"
        time.sleep(0.5)

    api = f"{service.url}/api/v1/incidents"
    for severity in SEVERITIES:
        for _ in range(2):
            created = requests.post(api, json={"title": "Disk full", "service": "storage", "severity": severity},
                                    timeout=10)
            assert created.status_code == 201, created.text
            incident = created.json()["incident_id"]
            for status in ("acknowledged", "resolved"):
                assert requests.patch(f"{api}/{incident}", json={"status": status}, timeout=10).status_code == 200
        # One left unresolved, so that open_incidents is above zero for each severity.
        assert requests.post(api, json={"title": "Queue backlog", "service": "jobs", "severity": severity},
                             timeout=10).status_code == 201

    queries = [*readme_promql(), *dashboard_queries(), *recorded_names()]
    while True:
        # HTTP series appear with a route's first request (they are not the contract's): a route
        # whose requests all fell between two scrapes has no rate. Traffic goes on, as in life.
        assert requests.get(api, timeout=10).status_code == 200
        failing = {q: values for q in queries if not numbers(values := prometheus.query(q))}
        resolved = prometheus.query('increase(incidents_total{status="resolved"}[5m])')
        counted = len(resolved) == len(SEVERITIES) and all(v > 0 for v in resolved)
        # A scrape slower than the 1 s interval (a loaded machine) is a miss, and leaves every
        # series stale until the next one: wait for a good scrape rather than fail on one miss.
        up = prometheus.query('up{job="incident-management"}')
        unresolved = prometheus.query("max by (severity) (open_incidents)")
        if not failing and counted and up == [1.0] and unresolved == [1.0] * len(SEVERITIES):
            break
        assert time.monotonic() < deadline, (
            f"no number from: {failing}; resolved: {resolved}; up: {up}; unresolved: {unresolved}"
        )
        time.sleep(1)

    rules = requests.get(f"{prometheus.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    evaluated = [(rule.get("name"), rule["health"]) for group in rules for rule in group["rules"]]
    assert len(evaluated) == sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
    assert [entry for entry in evaluated if entry[1] != "ok"] == []
