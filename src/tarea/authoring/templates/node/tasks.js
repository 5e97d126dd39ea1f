// {{name}}: tarea's task protocol in Node.js (docs/protocol.md in tarea's repository).
// Log with console.error, never console.log: stdout carries only protocol messages.
"use strict";
const readline = require("node:readline");

// Each function: its OpenRPC description (what rpc.discover answers) and its code.
const functions = {
  saludar: {
    describe: {
      summary: "Greet nombre, veces times.",
      params: [
        { name: "nombre", required: true, schema: { type: "string" } },
        { name: "veces", required: false, schema: { type: "integer", minimum: 1, default: 1 } },
      ],
      result: { name: "result", schema: { type: "string" } },
    },
    run({ nombre, veces = 1 }, progress) {
      const greetings = [];
      for (let done = 1; done <= veces; done++) {
        greetings.push(`Hola, ${nombre}`);
        progress(done / veces, `${done} of ${veces}`);
      }
      return greetings.join(" ");
    },
  },
};

class RpcError extends Error {
  constructor(code, message, data) {
    super(message);
    Object.assign(this, { code, data });
  }
}

// The params check tarea.runtime does: required, known, and of the described type.
function check(name, params) {
  const described = functions[name].describe.params;
  for (const key of Object.keys(params)) {
    if (!described.some((p) => p.name === key)) {
      throw new RpcError(-32602, `Invalid params: unknown parameter ${key}`, { param: key, reason: "unknown parameter" });
    }
  }
  for (const p of described) {
    if (!(p.name in params)) {
      if (p.required) {
        throw new RpcError(-32602, `Invalid params: missing ${p.name}`, { param: p.name, reason: "missing required parameter" });
      }
      continue;
    }
    const value = params[p.name];
    const type = p.schema.type;
    const ok = type === "integer" ? Number.isInteger(value) : typeof value === type;
    if (!ok || (p.schema.minimum !== undefined && value < p.schema.minimum)) {
      throw new RpcError(-32602, `Invalid params: ${p.name} must be ${type}`, { param: p.name, reason: `expected ${type}` });
    }
  }
}

// When tarea asks (TAREA_LOG_MARK=1), a mark goes to stderr before each answer, after
// all the call wrote there, and a "logged" notification says so: the call's logs are
// then whole (docs/protocol.md). Pipes are written synchronously on Linux: the mark
// cannot overtake the call's own lines.
const marking = process.env.TAREA_LOG_MARK === "1";
const write = (message) => process.stdout.write(JSON.stringify({ jsonrpc: "2.0", ...message }) + "\n");
const send = (message) => {
  if (marking && "id" in message) {
    process.stderr.write("\x1b]tarea-log-mark\x07");
    write({ method: "logged", params: {} });
  }
  write(message);
};

function discover() {
  const methods = Object.entries(functions)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([name, f]) => ({ name, paramStructure: "by-name", ...f.describe }));
  return { openrpc: "1.3.2", info: { title: "{{name}}", version: "1" }, methods };
}

function answer(request) {
  if (request === null || typeof request !== "object" || Array.isArray(request)) {
    return send({ id: null, error: { code: -32600, message: "Invalid Request" } });
  }
  if (!("id" in request)) return; // a notification: never answered
  const { id, method } = request;
  const params = request.params ?? {};
  try {
    if (request.jsonrpc !== "2.0" || typeof method !== "string") throw new RpcError(-32600, "Invalid Request");
    if (Array.isArray(params)) throw new RpcError(-32602, "Invalid params: pass parameters by name", { param: null, reason: "params must be an object" });
    if (typeof params !== "object") throw new RpcError(-32600, "Invalid Request: params must be an object");
    if (method === "rpc.discover") return send({ id, result: discover() });
    if (!Object.hasOwn(functions, method)) throw new RpcError(-32601, "Unknown function", { function: method });
    check(method, params);
    const progress = (fraction, message) => send({ method: "progress", params: { id, progress: fraction, message } });
    send({ id, result: functions[method].run(params, progress) });
  } catch (e) {
    const code = e instanceof RpcError ? e.code : -32000;
    send({ id, error: { code, message: e.message, data: e.data ?? { type: e.name, message: e.message } } });
  }
}

send({ method: "ready", params: { protocol: "tarea/1", functions: Object.keys(functions).sort(), log_mark: marking } });
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  let request;
  try {
    request = JSON.parse(line);
  } catch {
    return send({ id: null, error: { code: -32700, message: "Parse error" } });
  }
  answer(request);
});
process.on("SIGTERM", () => process.exit(0));
// When stdin closes, readline closes and node exits 0.
