// Tests of {{name}} with no Docker: node --test
"use strict";
const { test } = require("node:test");
const assert = require("node:assert");
const { spawnSync } = require("node:child_process");
const path = require("node:path");

function converse(...requests) {
  const input = requests.map((r) => (typeof r === "string" ? r : JSON.stringify(r)) + "\n").join("");
  const run = spawnSync("node", [path.join(__dirname, "tasks.js")], { input });
  assert.strictEqual(run.status, 0);
  return run.stdout.toString().trim().split("\n").map((line) => JSON.parse(line));
}

test("ready, a call with progress, and errors", () => {
  const [ready, ...rest] = converse(
    { jsonrpc: "2.0", id: 1, method: "saludar", params: { nombre: "Ana", veces: 2 } },
    { jsonrpc: "2.0", id: 2, method: "saludar", params: { nombre: 5 } },
    { jsonrpc: "2.0", id: 3, method: "nada" },
    "not json",
  );
  assert.deepStrictEqual(ready.params, { protocol: "tarea/1", functions: ["saludar"], log_mark: false });
  const byId = Object.fromEntries(rest.filter((m) => "id" in m && !m.method).map((m) => [m.id, m]));
  assert.strictEqual(byId[1].result, "Hola, Ana Hola, Ana");
  assert.strictEqual(byId[2].error.code, -32602);
  assert.strictEqual(byId[3].error.code, -32601);
  assert.strictEqual(byId[null].error.code, -32700);
  assert.strictEqual(rest.filter((m) => m.method === "progress").length, 2);
});

test("rpc.discover describes saludar", () => {
  const [, doc] = converse({ jsonrpc: "2.0", id: 1, method: "rpc.discover" });
  assert.deepStrictEqual(doc.result.methods.map((m) => m.name), ["saludar"]);
});
