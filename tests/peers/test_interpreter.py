"""MCP Python Interpreter (PyPI mcp-python-interpreter 1.2.3), a seed server, behind the sidecar
with the seed policy: every rule of examples/policies/mcp-python-interpreter.yaml acting on the
server's real tools. Runs in the 1.x venv (the package needs mcp<2)."""

import subprocess

import pytest
from conftest import BIN, ROOT, SDK_MAJOR, stack
from test_python_sdk import connect

POLICY = ROOT / "examples" / "policies" / "mcp-python-interpreter.yaml"

pytestmark = pytest.mark.skipif(SDK_MAJOR >= 2, reason="mcp-python-interpreter needs the 1.x SDK; it runs in the 1.x venv")


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_the_seed_policy_acts_on_the_real_server(transport, tmp_path):
    token = tmp_path / "admin-token"
    token.write_text("interpreter-admin-token")
    with stack(kind="interpreter", transport=transport, policy=POLICY, workdir=tmp_path,
               sidecar_args=["--admin-token-file", str(token)]) as s:
        async with connect(s.url, transport) as c:
            names = set(await c.names())
            assert {"run_python_code", "write_file", "list_directory", "read_file", "clear_session"} <= names
            assert not names & {"install_package", "run_python_file"}

            err, text, _ = await c.call("run_python_code", {"code": "print(6 * 7)"})
            assert not err and "42" in text

            # clear_session needs a person's approval of exactly this call: refused with an id,
            # approved with `mcp-warden approve --admin`, then the real server runs it once.
            err, text, meta = await c.call("clear_session", {"session_id": "default"})
            assert err and "needs a person's approval" in text, text
            approval = meta["dev.mcpwarden/decision"]["approvalId"]
            listed = subprocess.run([BIN, "approvals", "list", "--admin", s.admin, "--admin-token-file", str(token)],
                                    capture_output=True, text=True, check=True).stdout
            assert approval[:12] in listed and '{"session_id":"default"}' in listed, listed
            done = subprocess.run([BIN, "approve", "--admin", s.admin, "--admin-token-file", str(token), approval[:12]],
                                  capture_output=True, text=True)
            assert done.returncode == 0 and "approved clear_session" in done.stdout, done.stderr
            err, text, _ = await c.call("clear_session", {"session_id": "default"})
            assert not err, text
            err, text, _ = await c.call("clear_session", {"session_id": "default"})
            assert err and "needs a person's approval" in text, "one use"
            assert "mcp_warden_approvals_total{policy=\"mcp-python-interpreter\",result=\"used\",tool=\"clear_session\"} 1" in s.metrics()
            err, text, _ = await c.call("run_python_code", {"code": "import shutil; shutil.rmtree('/tmp/x')"})
            assert (err, text) == (True, "Destructive code is not allowed")
            err, text, _ = await c.call("install_package", {"package_name": "requests"})
            assert (err, text) == (True, "Package installs are disabled in this namespace")

            for i in range(30):
                err, text, _ = await c.call("write_file", {"file_path": f"note{i}.py", "content": "hello"})
                assert not err, text
            assert (tmp_path / "note29.py").read_text() == "hello"
            err, text, _ = await c.call("write_file", {"file_path": "note30.py", "content": "hello"})
            assert err and text.startswith("Rate limit exceeded: write_file_rate allows 30 calls per hour")
            assert not (tmp_path / "note30.py").exists()

            for i in range(60):
                err, text, _ = await c.call("list_directory", {"directory_path": str(tmp_path)})
                assert not err, text
            assert "note0.py" in text
            err, text, _ = await c.call("list_directory", {"directory_path": str(tmp_path)})
            assert err and text.startswith("Rate limit exceeded: list_directory_rate allows 60 calls per minute")
