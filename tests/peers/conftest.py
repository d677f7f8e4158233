"""Fixtures: a real Python-SDK server and the real mcp-warden binary in front of it."""

import contextlib
import importlib.metadata
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("MCP_WARDEN_BIN", str(ROOT / "target" / "debug" / "mcp-warden"))
SDK_MAJOR = int(importlib.metadata.version("mcp").split(".")[0])


@pytest.fixture
def anyio_backend():
    return "asyncio"


sys.path.insert(0, str(ROOT / "tests"))
from ports import free_port  # noqa: E402


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


@contextlib.contextmanager
def running(args, port, what, **kw):
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **kw)
    try:
        wait_for_port(port, proc, what)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.returncode not in (0, -15):
            log.seek(0)
            sys.stderr.write(f"--- {what} output ---\n{log.read().decode(errors='replace')[-4000:]}\n")


@contextlib.contextmanager
def stack(kind="notebook", transport="streamable-http", json=False, stateless=False, policy=None, workdir=None,
          event_store=False, sidecar_args=(), upstream_path=None):
    """Starts a server and the sidecar in front of it; yields the URL clients connect to."""
    port, proxy, admin = free_port(), free_port(), free_port()
    args = [sys.executable, str(ROOT / "tests" / "peers" / "peer_server.py"), "--kind", kind,
            "--transport", transport, "--port", str(port)]
    if json:
        args.append("--json")
    if stateless:
        args.append("--stateless")
    if workdir:
        args += ["--dir", str(workdir)]
    if event_store:
        args.append("--event-store")
    policy = policy or ROOT / "tests" / "fixtures" / "notebook-policy.yaml"
    path = "/sse" if transport == "sse" else "/mcp"
    up_path = upstream_path or path
    with running(args, port, f"{kind} server", cwd=workdir):
        sidecar = [BIN, "sidecar", "--policy", str(policy), "--upstream", f"http://127.0.0.1:{port}{up_path}",
                   "--listen", f"127.0.0.1:{proxy}", "--admin-listen", f"127.0.0.1:{admin}",
                   "--drain-delay-seconds", "0", *sidecar_args]
        with running(sidecar, proxy, "mcp-warden sidecar"):
            yield Stack(f"http://127.0.0.1:{proxy}{up_path}", f"http://127.0.0.1:{admin}",
                        f"http://127.0.0.1:{port}{up_path}")


class Stack:
    def __init__(self, url, admin, direct=None):
        self.url = url
        self.admin = admin
        self.direct = direct

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(self.admin + "/metrics") as r:
            return r.read().decode()
