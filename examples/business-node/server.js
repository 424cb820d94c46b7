#!/usr/bin/env node
// Business service for the voice relay in Node.js: plain `http`, no dependencies (Node 18+).
// It does what examples/business_service.py does; read that file's docstring and
// docs/integration.md for the contract. In short:
//   the relay POSTs one JSON object to /chat (or /): {"auth":{...},"type":"chat"|"report"|...,
//   "details":{...,"session_id":"S"}}; you answer 200 text/event-stream, one `data: <json>`
//   line plus a blank line per event, each written at once, every event echoing
//   details.session_id as a top-level "session_id", the last one {"event":"message_end"}.
// Only event=message/type=chat is spoken (details.answer; details.emotion shows a face);
// every other event reaches the device untouched.
// With a signing secret every request must carry X-Relay-Signature: t=<unix seconds>,
// v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>; a missing or wrong one, or a t more than
// 5 minutes off, is answered 401.
// Device tools (docs/protocol.md §3.3), for a relay [[business]] with `device_tools = true`:
// a chat request then carries the device's MCP tools in details.tools. Asked "louder" /
// "大声一点" (or "quieter" / "小声一点") by a device that has self.audio_speaker.set_volume,
// this service answers with a `tool_call` event; the relay runs it on the device and POSTs a
// `tool_result` request, answered here with a spoken sentence.
// Run: node examples/business-node/server.js --port 8090 [--token T] [--signing-secret S]
// (or env BUSINESS_TOKEN, BUSINESS_SIGNING_SECRET).
"use strict";

const crypto = require("node:crypto");
const http = require("node:http");
const { parseArgs } = require("node:util");

// Words in the user's message that trigger a device action (English matched case-insensitively).
const KEYWORD_ACTIONS = [
  [["dance", "跳舞"], "dance", { duration: 5 }],
  [["wag", "摇尾巴"], "wag_tail", { duration: 3 }],
];
// Phrases that change the volume of a device with the firmware's volume tool (§3.3), and the
// volume each sets (a model would first read self.get_device_status and go up from there).
const VOLUME_TOOL = "self.audio_speaker.set_volume";
const VOLUME_PHRASES = [
  [["louder", "turn it up", "大声一点", "大声点", "声音大一点"], 80],
  [["quieter", "turn it down", "小声一点", "小声点", "声音小一点"], 30],
];
const DEMO_BATTERY_LEVEL = 85; // a real service would answer from its own records
const SIGNATURE_MAX_SKEW_S = 300; // a signed request older (or newer) than this is refused
const MAX_BODY_BYTES = 1024 * 1024;

// details.emotion (docs/protocol.md §2.2): the face on the device's screen while it answers.
const GREETING = /\b(hello|hi|hey|good (morning|afternoon|evening))\b|你好|您好|嗨|早上好|晚上好/;
const QUESTION = /[?？]|^(what|how|why|when|where|who|can|could|is|are|do|does)\b|吗|什么|怎么/;

function isChinese(text) {
  return /[\u4e00-\u9fff]/.test(text);
}

function emotionOf(msg) {
  if (!msg) return "confused";
  const lowered = msg.toLowerCase();
  if (GREETING.test(lowered)) return "happy";
  if (QUESTION.test(lowered)) return "thinking";
  return "neutral";
}

function command(action, params) {
  return { event: "message", type: "command", details: { actions: [{ action, params }] } };
}

const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

// A tool_call setting the volume, when `msg` asks for it and the device has the tool.
function volumeCall(msg, tools) {
  if (!Array.isArray(tools) || !tools.some((t) => isObject(t) && t.name === VOLUME_TOOL)) return null;
  const lowered = msg.toLowerCase();
  for (const [words, volume] of VOLUME_PHRASES) {
    if (words.some((w) => lowered.includes(w))) {
      // The call id carries what this service needs to word the result.
      const callId = `volume-${volume}-${isChinese(msg) ? "zh" : "en"}`;
      const details = { call_id: callId, name: VOLUME_TOOL, arguments: { volume } };
      return { event: "message", type: "tool_call", details };
    }
  }
  return null;
}

// Answer a chat message: spoken sentences, then a command if a keyword was heard; a volume
// phrase with the device's volume tool is a tool call instead.
function* chatEvents(details) {
  const msg = typeof details.msg === "string" ? details.msg.trim() : "";
  const call = volumeCall(msg, details.tools);
  if (call !== null) {
    yield call; // the answer is spoken once the relay posts the tool_result
    return;
  }
  let sentences;
  if (isChinese(msg)) {
    sentences = [`你刚才说：「${msg}」。`, "我是示例业务服务，这句话会被合成为语音。"];
  } else if (msg) {
    sentences = [`You said: "${msg}".`, "I am the reference business service speaking."];
  } else {
    sentences = ["I did not catch that, could you say it again?"];
  }
  // Several message/chat events are spoken in order; the first carries the emotion.
  for (const [n, answer] of sentences.entries()) {
    const chat = n === 0 ? { answer, emotion: emotionOf(msg) } : { answer };
    yield { event: "message", type: "chat", details: chat };
  }
  const lowered = msg.toLowerCase();
  const actions = KEYWORD_ACTIONS.filter(([words]) => words.some((w) => lowered.includes(w))).map(
    ([, action, params]) => ({ action, params: { ...params } }),
  );
  if (actions.length) yield { event: "message", type: "command", details: { actions } };
}

// A report needs no answer beyond message_end; store details.events here if you care.
function* reportEvents() {}

// Acknowledge a reset (details.type says what to reset, e.g. "count").
function* resetEvents() {
  yield command("reset_complete", { status: "success" });
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

// Answer a get request with the server time and a battery level.
function* getEvents() {
  const now = new Date();
  const date = `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
  const time = `${pad(now.getHours())}:${pad(now.getMinutes())}:${pad(now.getSeconds())}`;
  const offset = -now.getTimezoneOffset();
  const zone = `${offset < 0 ? "-" : "+"}${pad(Math.floor(Math.abs(offset) / 60))}:${pad(Math.abs(offset) % 60)}`;
  yield command("data_response", {
    current_time: `${date} ${time}`, // the guide's format, local time
    timestamp_ms: now.getTime(),
    iso_time: `${date}T${time}.${pad(now.getMilliseconds(), 3)}${zone}`,
    battery_level: DEMO_BATTERY_LEVEL,
  });
}

// Say what came of a tool call: the volume now set, or why the device did not do it.
function* toolResultEvents(details) {
  const { error } = details;
  const callId = typeof details.call_id === "string" ? details.call_id : "";
  let answer;
  if (isObject(error)) {
    const why = typeof error.message === "string" ? error.message : "unknown";
    answer = { answer: `The device could not do it: ${why}.`, emotion: "sad" };
  } else if (callId.startsWith("volume-")) {
    const rest = callId.slice("volume-".length);
    const dash = rest.indexOf("-");
    const [volume, lang] = dash < 0 ? [rest, ""] : [rest.slice(0, dash), rest.slice(dash + 1)];
    const said = lang === "zh" ? `好的，音量已调到 ${volume}。` : `Done, the volume is now ${volume}.`;
    answer = { answer: said, emotion: "happy" };
  } else {
    answer = { answer: "Done." };
  }
  yield { event: "message", type: "chat", details: answer };
}

// A device's MCP notification (its state changed, ...): nothing to say.
function* mcpNotificationEvents() {}

const HANDLERS = {
  chat: chatEvents,
  report: reportEvents,
  reset: resetEvents,
  get: getEvents,
  tool_result: toolResultEvents,
  mcp_notification: mcpNotificationEvents,
};

function safeEqual(a, b) {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

// Whether `header` (X-Relay-Signature) signs `body`, the raw bytes received, with `secret`,
// at a time within SIGNATURE_MAX_SKEW_S of now.
function relaySigned(secret, header, body, nowS = Date.now() / 1000) {
  const fields = {};
  for (const part of header.split(",")) {
    const eq = part.indexOf("=");
    if (eq >= 0) fields[part.slice(0, eq)] = part.slice(eq + 1);
  }
  const t = fields.t || "";
  if (!/^[0-9]+$/.test(t) || Math.abs(nowS - Number(t)) > SIGNATURE_MAX_SKEW_S) return false;
  const mac = crypto.createHmac("sha256", secret).update(`${t}.`).update(body).digest("hex");
  return safeEqual(mac, fields.v1 || "");
}

function jsonError(res, status, message) {
  res.writeHead(status, { "Content-Type": "application/json" });
  res.end(JSON.stringify({ error: message }));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Error("body too large"));
        req.destroy();
      } else chunks.push(chunk);
    });
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Parse and check the request; null when an error answer was sent.
function parseRequest(settings, req, raw, res) {
  const signature = req.headers["x-relay-signature"] || "";
  if (settings.signingSecret && !relaySigned(settings.signingSecret, signature, raw)) {
    jsonError(res, 401, "missing, wrong or expired X-Relay-Signature");
    return null;
  }
  let body;
  try {
    body = JSON.parse(raw.toString("utf8"));
  } catch {
    jsonError(res, 400, "body is not JSON");
    return null;
  }
  if (!isObject(body) || typeof body.type !== "string") {
    jsonError(res, 400, 'body must be a JSON object with a string "type"');
    return null;
  }
  return { type: body.type, details: isObject(body.details) ? body.details : {} };
}

// POST /chat: validate the request, then stream the answer as Server-Sent Events.
async function handle(settings, req, res) {
  if (req.method !== "POST") return jsonError(res, 405, "method not allowed");
  if (settings.token !== null && !safeEqual(req.headers.authorization || "", `Bearer ${settings.token}`)) {
    return jsonError(res, 401, "unauthorized");
  }
  let raw;
  try {
    raw = await readBody(req);
  } catch {
    return jsonError(res, 413, "body too large");
  }
  const request = parseRequest(settings, req, raw, res);
  if (request === null) return;
  // The device this request is for, as the relay vouches for it: use it (not the body's
  // auth.device_id, which a device can write as it likes) to look up your own records.
  let deviceId = req.headers["x-relay-device-id"] || "";
  try {
    deviceId = decodeURIComponent(deviceId);
  } catch {
    // not percent-encoded UTF-8: use it as it is
  }
  const { type, details } = request;
  const handler = Object.hasOwn(HANDLERS, type) ? HANDLERS[type] : null;
  const answer = handler
    ? handler(details, deviceId)
    : [{ event: "error", details: { code: "unknown_type", message: `unsupported request type '${type.slice(0, 40)}'` } }];
  const delayMs = type === "chat" ? settings.chatDelayS * 1000 : 0;

  let gone = false;
  res.on("close", () => {
    gone = !res.writableFinished;
  });
  res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
  res.flushHeaders();
  for (const event of [...answer, { event: "message_end" }]) {
    if (delayMs > 0) await sleep(delayMs); // stands in for model latency before each event
    if (gone) break;
    // Echo on every event, right after "event" as in the guide (docs/protocol.md §2.3).
    const out = "session_id" in details ? { event: event.event, session_id: details.session_id, ...event } : event;
    res.write(`data: ${JSON.stringify(out)}\n\n`);
  }
  if (gone) {
    // The relay closes the connection when it cancels a turn (the user interrupted, or said
    // something new): nobody reads the rest of this answer, and that is no error.
    console.log(`${new Date().toISOString()} INFO client went away during a '${type.slice(0, 40)}' answer`);
  }
  res.end();
}

function makeServer(settings) {
  return http.createServer((req, res) => {
    const path = new URL(req.url, "http://relay").pathname;
    if (path !== "/chat" && path !== "/") return jsonError(res, 404, "not found");
    handle(settings, req, res).catch((err) => {
      console.error(`${new Date().toISOString()} ERROR ${err.stack}`);
      if (!res.headersSent) jsonError(res, 500, "internal error");
      else res.destroy();
    });
  });
}

function main() {
  const { values } = parseArgs({
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "8090" },
      token: { type: "string", default: process.env.BUSINESS_TOKEN || "" },
      "signing-secret": { type: "string", default: process.env.BUSINESS_SIGNING_SECRET || "" },
      "chat-delay": { type: "string", default: "0" }, // seconds before each chat event
    },
  });
  const settings = {
    token: values.token || null,
    signingSecret: values["signing-secret"] ? Buffer.from(values["signing-secret"], "utf8") : null,
    chatDelayS: Number(values["chat-delay"]),
  };
  const server = makeServer(settings);
  server.listen(Number(values.port), values.host, () => {
    console.log(`${new Date().toISOString()} INFO listening on http://${values.host}:${values.port}`);
  });
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeIdleConnections();
    setTimeout(() => process.exit(0), 5000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

if (require.main === module) main();

module.exports = { relaySigned, emotionOf, makeServer };
