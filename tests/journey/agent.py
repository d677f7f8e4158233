"""An agent in a pod: the official Python SDK calling a guarded MCP server through its Service,
with the pod's projected ServiceAccount token (issued by the kubelet) as its bearer token.

Run in the journey's client pod: MCP_URL names the Service's address, TOKEN_FILE the projected
token, CALLS a JSON list of [tool, arguments]. Prints one JSON line per call: error flag, text,
and the sidecar's decision metadata."""

import asyncio
import json
import os

from mcp import ClientSession
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


async def main() -> None:
    token = open(os.environ["TOKEN_FILE"]).read().strip()
    calls = json.loads(os.environ["CALLS"])
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http, \
            streamable_http_client(os.environ["MCP_URL"], http_client=http) as streams:
        async with ClientSession(streams[0], streams[1]) as s:
            await s.initialize()
            for tool, args in calls:
                r = await s.call_tool(tool, args)
                meta = getattr(r, "meta", None) or {}
                print(json.dumps({"tool": tool, "error": bool(r.isError),
                                  "text": r.content[0].text if r.content else "",
                                  "decision": meta.get("dev.mcpwarden/decision", {})}), flush=True)


asyncio.run(main())
