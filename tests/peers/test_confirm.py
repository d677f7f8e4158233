"""Approval by the user at the client (`approval: {by: user}`) with the official Python SDK as a
released client: on the 2.x line the sidecar answers with `input_required` (2026-07-28) and the
SDK's own driver asks the user and retries; on the 1.x line (2025-11-25) the sidecar asks with
`elicitation/create` on the call's stream. Either way the call runs once after "accept", and
never after "decline"."""

import re

import pytest
from conftest import SDK_MAJOR, stack

POLICY = """
version: "1"
default: allow
tools:
  clear_session:
    approval: {by: user}
"""


def counter(metrics: str, name: str, **labels) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


class User:
    """The person at the client: answers every question with `action`, and keeps what it saw."""

    def __init__(self, action):
        self.action = action
        self.shown = []

    async def __call__(self, _context, params):
        from mcp import types

        self.shown.append(params.message)
        content = {"confirm": True} if self.action == "accept" else None
        return types.ElicitResult(action=self.action, content=content)


async def call(url, user, name, args):
    if SDK_MAJOR >= 2:
        from mcp import Client

        async with Client(url, elicitation_callback=user) as c:
            return await c.call_tool(name, args)
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with streamable_http_client(url) as streams:
        async with ClientSession(streams[0], streams[1], elicitation_callback=user) as s:
            await s.initialize()
            return await s.call_tool(name, args)


def is_error(result):
    return getattr(result, "is_error", None) or getattr(result, "isError", None)


def text(result):
    return "".join(getattr(c, "text", "") for c in result.content)


@pytest.mark.anyio
async def test_the_user_confirms_in_their_client_and_the_call_runs_once(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with stack(policy=policy) as s:
        user = User("accept")
        r = await call(s.url, user, "clear_session", {})
        assert text(r) == "cleared" and not is_error(r), r
        assert len(user.shown) == 1 and "clear_session" in user.shown[0], user.shown
        m = s.metrics()
        assert counter(m, "mcp_warden_decisions_total", tool="clear_session", decision="allow") == 1
        assert counter(m, "mcp_warden_approvals_total", result="user_confirmed") == 1
        # 2.x speaks 2026-07-28 (input_required); 1.x was asked on the call's stream.
        modern = counter(m, "mcp_warden_requests_total", method="server/discover") > 0
        assert modern == (SDK_MAJOR >= 2), m

        no = User("decline")
        r = await call(s.url, no, "clear_session", {})
        assert is_error(r) and re.search("declined this call", text(r)), r
        m = s.metrics()
        assert counter(m, "mcp_warden_decisions_total", tool="clear_session", decision="allow") == 1, "never ran"
        assert counter(m, "mcp_warden_approvals_total", result="user_declined") == 1
