"""Knowing the server's tools, against real Python SDK servers: the sidecar lists the server's
tools itself on every transport (streamable HTTP with and without sessions, JSON and SSE replies,
the legacy HTTP+SSE transport), categories decide by the annotations the SDK sends, and the seed
policy passes `check --server` against the real MCP Python Interpreter while a misspelt copy does
not."""

import json
import subprocess
import time
import urllib.request

import pytest
from conftest import BIN, ROOT, SDK_MAJOR, stack
from test_python_sdk import MODES, connect

CATEGORIES = ROOT / "tests" / "fixtures" / "categories-policy.yaml"
SEED = ROOT / "examples" / "policies" / "mcp-python-interpreter.yaml"


def seen(admin, token):
    req = urllib.request.Request(admin + "/tools", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def wait_listed(admin, token):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = seen(admin, token)
        if body["listedAt"] is not None:
            return body
        time.sleep(0.1)
    raise AssertionError(f"the sidecar never listed the server's tools: {body}")


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_categories_decide_by_the_sdks_annotations(mode, tmp_path):
    transport, json_replies, stateless = mode
    token = tmp_path / "admin-token"
    token.write_text("tools-admin-token")
    with stack(transport=transport, json=json_replies, stateless=stateless, policy=CATEGORIES,
               sidecar_args=["--admin-token-file", str(token)]) as s:
        body = wait_listed(s.admin, "tools-admin-token")
        by_name = {t["name"]: t for t in body["tools"]}
        assert by_name["notebook_read"]["categories"] == ["read_only"]
        assert by_name["delete_all"]["categories"] == ["destructive", "open_world"]
        assert by_name["run_cell"]["categories"] == []
        assert by_name["clear_session"]["categories"] == ["destructive", "open_world"], "unannotated"
        assert by_name["run_cell"]["arguments"] == ["code"]
        async with connect(s.url, transport) as c:
            assert await c.names() == ["notebook_read"]
            err, text, _ = await c.call("notebook_read", {"path": "a.ipynb"})
            assert not err and text == "read a.ipynb", text
            err, text, meta = await c.call("delete_all")
            assert (err, text) == (True, "Destructive tools are off here")
            assert meta["dev.mcpwarden/decision"]["rule"] == "categories.destructive"
            err, text, meta = await c.call("run_cell", {"code": "1"})
            assert err and meta["dev.mcpwarden/decision"]["rule"] == "default", text
        metrics = s.metrics()
        assert 'mcp_warden_tool_lists_total{policy="categories-policy",result="ok"}' in metrics


def check_server(url, policy):
    return subprocess.run([BIN, "check", "--server", url, str(policy)], capture_output=True, text=True)


@pytest.mark.skipif(SDK_MAJOR >= 2, reason="mcp-python-interpreter needs the 1.x SDK; it runs in the 1.x venv")
@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
def test_the_seed_policy_matches_the_real_interpreters_tools_and_a_misspelt_one_does_not(transport, tmp_path):
    with stack(kind="interpreter", transport=transport, policy=SEED, workdir=tmp_path) as s:
        good = check_server(s.direct, SEED)
        assert good.returncode == 0, good.stdout + good.stderr
        assert "10 tools" in good.stdout and "every rule names a tool the server offers" in good.stdout, good.stdout
        misspelt = tmp_path / "misspelt.yaml"
        misspelt.write_text(SEED.read_text()
                            .replace("  list_directory:", "  list_directories:")
                            .replace("path: args.code", "path: args.source"))
        bad = check_server(s.direct, misspelt)
        assert bad.returncode == 1, bad.stdout
        assert 'tools.list_directories: "list_directories" matches no tool the server offers' in bad.stdout, bad.stdout
        assert ("tools.run_python_code.deny_if[0]: args.source names an argument tool \"run_python_code\" does not have"
                in bad.stdout), bad.stdout
