// Preloaded into the reference MCP server (node --require) after loopback.cjs: gives every Express
// app it makes the MCP TypeScript SDK's own DNS-rebinding protection (localhostHostValidation,
// what the SDK's createMcpExpressApp adds for a server on loopback), which server-everything's
// hand-built app lacks. The suite's dns-rebinding-protection scenario then has something to find
// directly, and the comparison shows whether the sidecar keeps that protection.
const base = process.env.MCP_WARDEN_REFERENCE_DIR;
const express = require(require.resolve("express", { paths: [base] }));
const { localhostHostValidation } = require(
  require.resolve("@modelcontextprotocol/sdk/server/middleware/hostHeaderValidation.js", { paths: [base] }),
);
const init = express.application.init;
express.application.init = function (...args) {
  const r = init.apply(this, args);
  this.use(localhostHostValidation());
  return r;
};
