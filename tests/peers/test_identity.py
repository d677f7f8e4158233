"""The official Python SDK as a client sending a signed ServiceAccount-style token through the
real mcp-warden sidecar (started with --jwks): its calls are decided under its grant, another
caller gets the base rules, and a client with a bad token never reaches the server."""

import contextlib
import json
import tempfile
import time
from pathlib import Path

import jwt
import pytest
from conftest import ROOT, SDK_MAJOR, stack

ISSUER = "https://kubernetes.default.svc.cluster.local"
FIXTURES = ROOT / "tests" / "fixtures" / "identity"
CI = "system:serviceaccount:ci:builder"
OTHER = "system:serviceaccount:agents:helper"

POLICY = """
version: "1"
default: deny
identity:
  service_account: {audiences: [mcp-warden]}
  required: true
tools:
  notebook_read: {}
  run_cell:
    limits: [{counter: run_cell_rate, window: hour, max: 1, scope: grant}]
grants:
  - subjects: ["system:serviceaccount:ci:*"]
    tools:
      run_cell:
        limits: [{counter: ci_run_cell_rate, window: hour, max: 3, scope: grant}]
"""


def token(sub, **over):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": ["mcp-warden"], "sub": sub, "iat": now, "nbf": now - 1, "exp": now + 600}
    claims.update(over)
    key = (FIXTURES / "rsa-test-key.pem").read_text()
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "test-rsa"})


@contextlib.contextmanager
def guarded():
    with tempfile.TemporaryDirectory() as d:
        policy = Path(d) / "policy.yaml"
        policy.write_text(POLICY)
        keys = json.loads((FIXTURES / "rsa-test-jwks.json").read_text())
        keys["issuer"] = ISSUER
        jwks = Path(d) / "jwks.json"
        jwks.write_text(json.dumps(keys))
        with stack(json=True, stateless=True, policy=policy, sidecar_args=["--jwks", str(jwks)]) as s:
            yield s


@contextlib.asynccontextmanager
async def session(url, bearer):
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {bearer}"})
    async with http:
        if SDK_MAJOR >= 2:
            from mcp import Client

            async with Client(streamable_http_client(url, http_client=http)) as c:
                yield c
        else:
            from mcp import ClientSession

            async with streamable_http_client(url, http_client=http) as streams:
                async with ClientSession(streams[0], streams[1]) as s:
                    await s.initialize()
                    yield s


def failed(result):
    return bool(result.is_error if hasattr(result, "is_error") else result.isError)


def decision(result):
    meta = getattr(result, "meta", None) or {}
    return meta.get("dev.mcpwarden/decision", {})


@pytest.mark.anyio
async def test_a_service_account_token_selects_its_grant():
    with guarded() as s:
        async with session(s.url, token(CI)) as c:
            for _ in range(3):
                r = await c.call_tool("run_cell", {"code": "1"})
                assert not failed(r), r
            r = await c.call_tool("run_cell", {"code": "1"})
            assert failed(r)
            d = decision(r)
            assert d["counter"] == "ci_run_cell_rate", d
            assert d["identity"] == CI and d["grant"] == "grants[0]", d
        async with session(s.url, token(OTHER)) as c:
            assert not failed(await c.call_tool("run_cell", {"code": "1"}))
            r = await c.call_tool("run_cell", {"code": "1"})
            assert failed(r) and decision(r)["counter"] == "run_cell_rate", decision(r)
        metrics = s.metrics()
        assert 'mcp_warden_grant_decisions_total{decision="allow",grant="grants[0]"' in metrics, metrics


@pytest.mark.anyio
async def test_a_client_with_a_bad_token_is_refused_before_the_server():
    with guarded() as s:
        with pytest.raises(BaseException):
            async with session(s.url, token(CI, aud=["someone-else"])) as c:
                await c.list_tools()
        metrics = s.metrics()
        assert 'reason="wrong_audience"' in metrics, metrics
        requests = [l for l in metrics.splitlines() if l.startswith("mcp_warden_requests_total{")]
        assert requests, "the request series exist at zero from the policy's load"
        assert all(l.endswith(" 0") for l in requests), ("nothing was decided, so nothing forwarded", requests)
