"""The chart's alerts unit-tested with promtool, and every sidecar panel of the dashboard
evaluated by a real Prometheus that scraped a real sidecar (the binary, in front of the Python
SDK's server) under scripted traffic: allowed, denied, rate-limited and invalid calls, a call
that needs approval, counter overflow, and a reload with a bad policy. Each panel must return
series carrying the labels its legend names, and the values must agree with what the client
saw. The operator's panels are checked the same way in the journey, against the controller on
the test control plane."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
import yaml

import promlib
from promlib import PROMTOOL, ROOT, free_port, legend_labels, panels, prometheus, render_rules, substitute

BIN = os.environ.get("MCP_WARDEN_BIN", str(ROOT / "target" / "debug" / "mcp-warden"))
HERE = Path(__file__).resolve().parent
POLICY = HERE / "policy.yaml"
LABEL = "prom/panels"
# Metrics only the controller exports: the journey evaluates the panels that read them.
CONTROLLER = ("mcp_warden_policy_rendered_info", "mcp_warden_injections_total", "admission_duration",
              "mcp_warden_reconcil", "mcp_warden_webhook_certificate")


def test_promtool_checks_the_rules_and_every_alert_has_unit_tests(tmp_path):
    rules = render_rules(tmp_path)
    check = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    tested = {t["alertname"] for case in yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    assert set(promlib.alerts_in(rules)) == tested, "every alert has unit tests, and only alerts that exist"
    for alert in tested:
        cases = [t for case in yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
                 for t in case.get("alert_rule_test", []) if t["alertname"] == alert]
        assert any(t["exp_alerts"] for t in cases) and any(not t["exp_alerts"] for t in cases), \
            f"{alert}: a case where it fires and one where it is silent"
    run = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "alerts_test.yaml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@contextlib.contextmanager
def running(args, port, what):
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                    pass
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    raise AssertionError(f"{what} did not start: {log.read().decode(errors='replace')[-3000:]}")
                time.sleep(0.1)
        yield proc
    finally:
        promlib.stop(proc)


class Stack:
    def __init__(self, url: str, admin: str, policy: Path, prom: promlib.Prometheus):
        self.url, self.admin, self.policy, self.prom = url, admin, policy, prom

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.admin}/metrics", timeout=5) as r:
            return r.read().decode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("prom")
    policy = d / "policy.yaml"
    shutil.copy(POLICY, policy)
    rules = render_rules(d)
    up, proxy, admin = free_port(), free_port(), free_port()
    server = [sys.executable, str(ROOT / "tests" / "peers" / "peer_server.py"), "--kind", "notebook",
              "--port", str(up), "--json", "--stateless"]
    sidecar = [BIN, "sidecar", "--policy", str(policy), "--upstream", f"http://127.0.0.1:{up}/mcp",
               "--listen", f"127.0.0.1:{proxy}", "--admin-listen", f"127.0.0.1:{admin}",
               "--max-keys-per-counter", "2", "--drain-delay-seconds", "0"]
    with running(server, up, "the Python SDK server"), running(sidecar, admin, "the sidecar"), \
            prometheus([(f"127.0.0.1:{admin}", {"namespace": "prom", "pod": "prom-0"})], rules) as prom:
        yield Stack(f"http://127.0.0.1:{proxy}/mcp", f"http://127.0.0.1:{admin}", policy, prom)


HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream",
           "mcp-protocol-version": "2025-06-18"}


def call(client: httpx.Client, url: str, agent: str, tool: str | None, args: dict | None = None, n: int = 1) -> str:
    """One tools/call as `agent`; the decision the client saw (`ran` when the server answered)."""
    params = {"arguments": args or {}}
    if tool is not None:
        params["name"] = tool
    r = client.post(url, headers={**HEADERS, "x-agent": agent},
                    json={"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params})
    if r.status_code == 400:
        return "invalid"
    msg = r.json()
    if "error" in msg:
        return "invalid"
    meta = msg["result"].get("_meta", {}).get("dev.mcpwarden/decision")
    return meta["decision"] if meta else "allow"


def test_every_sidecar_panel_shows_the_traffic(stack):
    # Every series the policy can produce exists at zero before the first call.
    stack.prom.wait_scraped()
    started = time.time()
    seen = collections.Counter()
    with httpx.Client(timeout=10) as c:
        named = set(yaml.safe_load(POLICY.read_text())["tools"])

        def go(agent, tool, args=None):
            # Tools no rule names are labelled `_other` (bounded labels).
            seen[(tool if tool in named else "_other", call(c, stack.url, agent, tool, args))] += 1
        for agent in ("a1", "a2", "a3", "a4"):  # the key cap is 2: a3 and a4 overflow
            for _ in range(4):
                go(agent, "notebook_read", {"path": "x"})
        for code in ("print(1)", "print(2)", "print(3)", "rm -rf /", "rm -rf ~"):
            go("a1", "run_cell", {"code": code})
        go("a1", "delete_all")
        go("a2", "delete_all")
        go("a1", "not_a_tool")
        go("a1", "clear_session")
        go("a1", "write_file")  # the user's confirmation, from a client that cannot be asked
        go("a1", None)  # no tool name: invalid
    # A bad policy: refused, the last good one stays.
    good = stack.policy.read_text()
    stack.policy.write_text("version: [\n")
    deadline = time.time() + 20
    while 'mcp_warden_policy_reloads_total{policy="prom/panels",result="error"} 1' not in stack.metrics():
        assert time.time() < deadline, "the bad policy was not seen"
        time.sleep(0.2)
    stack.policy.write_text(good)
    stack.prom.wait_scraped()
    # Evaluated at the last scrape, over a window that starts while every counter the traffic
    # moved was still 0 (the sidecar creates them at zero): increase() and rate() then need no
    # extrapolation at either end, so a panel shows exactly the calls made.
    at = float(stack.prom.query("max(timestamp(mcp_warden_policy_info))")[0]["value"][1])
    range_s = int(at - started) + 3

    assert seen[("notebook_read", "allow")] == 3 + 3 + 3 and seen[("notebook_read", "rate_limited")] == 7, seen
    assert seen[("run_cell", "deny")] == 2 and seen[("_other", "invalid")] == 1, seen
    denied = collections.Counter()
    for (tool, decision), n in seen.items():
        if decision in ("deny", "rate_limited"):
            denied[tool] += n

    checked = 0
    for panel in panels():
        for target in panel["targets"]:
            if any(m in target["expr"] for m in CONTROLLER):
                continue
            expr = substitute(target["expr"], range_s, rate_interval=f"{range_s}s")
            result = stack.prom.query(expr, at=at)
            assert result, f"panel {panel['title']!r} returned nothing: {expr}"
            for series in result:
                missing = legend_labels(target.get("legendFormat")) - set(series["metric"])
                assert not missing, f"panel {panel['title']!r}: series without {missing}: {series}"
            values = {tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in result}
            title = panel["title"]
            if title == "Top denied tools (range)":
                got = {dict(k)["tool"]: round(v) for k, v in values.items() if round(v)}
                assert got == dict(denied), f"{title}: {got} != {dict(denied)}"
            elif title == "Decisions per tool":
                nonzero = {(dict(k)["tool"], dict(k)["decision"]) for k, v in values.items() if v > 0}
                assert nonzero == set(seen), f"{title}: {nonzero} != {set(seen)}"
                # Over the whole traffic, rate x range is the count.
                for (tool, decision), n in seen.items():
                    key = tuple(sorted({"tool": tool, "decision": decision}.items()))
                    assert round(values[key] * range_s, 6) == n, (title, tool, decision, values[key] * range_s, n)
            elif title == "Decisions per policy":
                total = sum(v * range_s for v in values.values())
                assert round(total, 6) == sum(seen.values()), (title, total, sum(seen.values()))
                assert {dict(k)["policy"] for k in values} == {LABEL}
            elif title == "Requests per method":
                calls = {dict(k)["method"]: round(v * range_s, 6) for k, v in values.items() if v > 0}
                assert calls == {"tools/call": sum(seen.values())}, calls
            elif title == "Rate-limit hits per counter":
                hits = {dict(k)["counter"]: round(v * range_s, 6) for k, v in values.items() if v > 0}
                assert hits == {"reads": seen[("notebook_read", "rate_limited")]}, hits
            elif title == "Requests waiting for approval":
                assert list(values.values()) == [1.0], values
            elif title == "Oldest waiting request":
                assert 0 < list(values.values())[0] <= range_s + 2, values
            elif title == "Rate-limit keys and overflow" and "live keys" in (target.get("legendFormat") or ""):
                assert list(values.values()) == [2.0], f"the key cap: {values}"
            elif title == "Rate-limit keys and overflow":
                assert list(values.values())[0] > 0, "overflowing callers are counted"
            elif title == "Policy reloads and errors":
                by = {dict(k)["result"]: v for k, v in values.items()}
                assert round(by.get("error", 0)) >= 1, by
            elif title == "Approvals by result":
                assert {dict(k)["result"] for k, v in values.items() if v > 0} == {"requested"}, values
            elif title == "Questions to users at their clients":
                got = {(dict(k)["tool"], dict(k)["result"]): round(v * range_s, 6) for k, v in values.items() if v > 0}
                assert got == {("write_file", "user_unreachable"): 1}, got
            elif title == "Policy hash per pod vs rendered":
                want = hashlib.sha256(POLICY.read_bytes()).hexdigest()
                assert [dict(k)["hash"] for k in values] == [want], values
            elif title in ("Sidecar latency (request received to response headers)", "Decision time"):
                v = list(values.values())[0]
                assert 0 < v < 1, f"{title}: {v}"
            checked += 1
    assert checked >= 12, f"only {checked} sidecar queries checked"
