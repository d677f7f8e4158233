"""A real Prometheus for the tests: the chart's rules rendered with Helm and checked with
promtool, a Prometheus server scraping mcp-warden processes on loopback, and the dashboard's
panels evaluated against it with their template variables substituted as Grafana would.

Used by tests/prometheus (a sidecar under scripted traffic) and by the journey (the controller
on the test control plane)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mcp-warden"
DASHBOARD = CHART / "dashboards" / "mcp-warden.json"
HELM = os.environ.get("MCP_WARDEN_HELM", str(ROOT / "target" / "tools" / "package" / "bin" / "helm"))
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
SCRAPE_SECONDS = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_rules(out_dir: Path) -> Path:
    """The chart's PrometheusRule (default values) as a Prometheus rules file."""
    out = subprocess.run([HELM, "template", "mcp-warden", str(CHART), "--kube-version", "1.33.0",
                          "--set", "prometheusRule.enabled=true", "-s", "templates/prometheusrule.yaml"],
                         capture_output=True, text=True, check=True).stdout
    rule = yaml.safe_load(out)
    path = out_dir / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def alerts_in(rules: Path) -> list[str]:
    return [r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"] if "alert" in r]


class Prometheus:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path):
        self.url, self.proc, self.log = url, proc, log

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def targets_up(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as r:
            active = json.loads(r.read())["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def scraped_after(self, since: float) -> bool:
        """Whether every target has been scraped after `since` (seconds since the epoch)."""
        from datetime import datetime
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as r:
            active = json.loads(r.read())["data"]["activeTargets"]

        def ts(s: str) -> float:
            s = re.sub(r"(\.\d{6})\d*", r"\1", s.replace("Z", "+00:00"))
            return datetime.fromisoformat(s).timestamp()
        return bool(active) and all(ts(a["lastScrape"]) > since for a in active)

    def wait_scraped(self, timeout: float = 30) -> None:
        """Waits until every target has been scraped twice after now and rules evaluated."""
        start = time.time()
        deadline = start + timeout
        while time.time() < deadline:
            if self.scraped_after(start + SCRAPE_SECONDS):
                time.sleep(SCRAPE_SECONDS * 1.5)  # one rule evaluation after the scrape
                return
            time.sleep(0.2)
        raise AssertionError(f"Prometheus did not scrape every target in {timeout} s: {self.log.read_text()[-2000:]}")


@contextlib.contextmanager
def prometheus(targets: list[tuple[str, dict[str, str]]], rules: Path | None = None):
    """A Prometheus server scraping `targets` ((host:port, labels)) every second, evaluating
    `rules` every second."""
    d = Path(tempfile.mkdtemp(prefix="mcp-warden-prometheus-"))
    port = free_port()
    cfg = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "scrape_configs": [{
            "job_name": "mcp-warden",
            "static_configs": [{"targets": [addr], "labels": labels} for addr, labels in targets],
        }],
    }
    if rules:
        shutil.copy(rules, d / "rules.yaml")
        cfg["rule_files"] = [str(d / "rules.yaml")]
    (d / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    log = d / "prometheus.log"
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    p = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.time() + 30
        while True:
            try:
                if p.targets_up():
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"Prometheus did not start: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield p
    finally:
        stop(proc)
        shutil.rmtree(d, ignore_errors=True)


def stop(proc: subprocess.Popen) -> None:
    """Terminates a process, killing it if it does not exit within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def panels() -> list[dict]:
    """Every panel with queries (rows excluded)."""
    d = json.loads(DASHBOARD.read_text())
    return [p for p in d["panels"] if p.get("targets")]


def substitute(expr: str, range_seconds: int, rate_interval: str = "1m") -> str:
    """The query Grafana sends with every variable at "All" (`.*`) and the time range given."""
    for var in ("namespace", "policy", "pod"):
        expr = expr.replace(f"${var}", ".*")
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__range", f"{range_seconds}s")
    assert "$" not in expr, f"a variable is left in {expr}"
    return expr


def legend_labels(legend: str | None) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend or ""))
