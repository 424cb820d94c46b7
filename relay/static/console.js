// The relay console: a virtual xiaozhi device in the browser (docs/protocol.md §1).
// Handshake in query-parameter form (§1.1), a PCM (or WebCodecs Opus) hello (§1.2), binary
// framing v1/v2/v3 (§1.4), listen modes (§1.3), answer audio played from the downlink the
// relay's hello declares. Everything received is rendered with textContent, never as HTML.
"use strict";

(() => {
  const RATE = 16000; // uplink: 16 kHz mono s16le, 60 ms frames (960 samples)
  const FRAME_MS = 60;
  const FRAME_SAMPLES = (RATE * FRAME_MS) / 1000;
  const LOG_MAX = 500;
  const TRANSCRIPT_MAX = 50;
  const STORE = "relay-console.";
  const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  const hasWebCodecs = typeof AudioEncoder === "function" && typeof AudioDecoder === "function";

  const $ = (id) => document.getElementById(id);

  const state = {
    ws: null,
    version: 1,
    codec: "pcm",
    deviceId: "",
    sessionId: "",
    downlink: null, // {format, rate, frameMs} from the relay's hello
    listening: false,
    mode: "manual",
    speaking: false,
    framesIn: 0,
    framesOut: 0,
    encoder: null, // WebCodecs AudioEncoder (Opus uplink)
    decoder: null, // WebCodecs AudioDecoder (Opus downlink)
    encTs: 0,
    decTs: 0,
    ticker: 0,
    relisten: 0, // timer: auto mode listens again once the answer has played
  };

  // ---- storage (non-secret fields only; tokens are never stored) -------------------------

  function load(key, fallback) {
    try {
      return localStorage.getItem(STORE + key) || fallback;
    } catch (_err) {
      return fallback;
    }
  }

  function save(key, value) {
    try {
      localStorage.setItem(STORE + key, value);
    } catch (_err) {
      /* storage disabled: defaults next time */
    }
  }

  function randomHex(bytes) {
    const b = new Uint8Array(bytes);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  function randomMac() {
    // A locally administered unicast MAC (02:…), the shape a real device id has (§1.1).
    return ("02" + randomHex(5)).match(/../g).join(":").toUpperCase();
  }

  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const h = randomHex(16);
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function canonicalId(raw) {
    // docs/protocol.md §1.1 Decision: a MAC loses its separators and is upper-cased.
    const v = raw.trim();
    const mac = /^[0-9A-Fa-f]{2}([:-]?)(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$/;
    return mac.test(v) ? v.replace(/[:-]/g, "").toUpperCase() : v.slice(0, 64);
  }

  // ---- log -----------------------------------------------------------------------------

  function clock() {
    const d = new Date();
    const p = (n, w = 2) => String(n).padStart(w, "0");
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function logEntry(dir, type, kind, body) {
    const log = $("log");
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 30;
    const li = el("li");
    li.dataset.dir = dir;
    li.dataset.type = type;
    li.append(
      el("span", "time", clock()),
      el("span", "dir", dir === "in" ? "↓" : dir === "out" ? "↑" : "•"),
      el("span", "kind", kind),
      el("span", "body", body),
    );
    log.append(li);
    while (log.childElementCount > LOG_MAX) log.firstElementChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function logMessage(dir, msg, text) {
    const type = typeof msg.type === "string" ? msg.type : "?";
    let kind = type;
    if (typeof msg.state === "string") kind += ` ${msg.state}`;
    const resp = msg.payload && msg.payload.business_response;
    if (type === "custom" && resp && typeof resp.event === "string") kind += ` ${resp.event}`;
    logEntry(dir, type, kind, text);
  }

  function logSys(text, type = "sys") {
    logEntry("sys", type, type === "error" ? "console error" : "console", text);
  }

  function transcript(who, text) {
    const box = $("transcript");
    const p = el("p");
    p.append(el("span", "who", who), el("span", "", text));
    box.append(p);
    while (box.childElementCount > TRANSCRIPT_MAX) box.firstElementChild.remove();
    box.scrollTop = box.scrollHeight;
  }

  // ---- binary framing (§1.4) ------------------------------------------------------------

  function encodeFrame(version, type, payload) {
    if (version === 1) return payload;
    const head = version === 2 ? 16 : 4;
    const out = new Uint8Array(head + payload.length);
    const dv = new DataView(out.buffer);
    if (version === 2) {
      dv.setUint16(0, 2);
      dv.setUint16(2, type);
      dv.setUint32(4, 0);
      dv.setUint32(8, Math.floor(performance.now()) >>> 0);
      dv.setUint32(12, payload.length);
    } else {
      dv.setUint8(0, type);
      dv.setUint8(1, 0);
      dv.setUint16(2, payload.length);
    }
    out.set(payload, head);
    return out;
  }

  function decodeFrame(version, buf) {
    const bytes = new Uint8Array(buf);
    if (version === 1) return { type: 0, payload: bytes };
    const dv = new DataView(buf);
    let type, size, head;
    if (version === 2) {
      if (bytes.length < 16) return null;
      [type, size, head] = [dv.getUint16(2), dv.getUint32(12), 16];
    } else {
      if (bytes.length < 4) return null;
      [type, size, head] = [dv.getUint8(0), dv.getUint16(2), 4];
    }
    if (size !== bytes.length - head || (type !== 0 && type !== 1)) return null;
    return { type, payload: bytes.subarray(head) };
  }

  // ---- audio: one AudioContext for the microphone graph and answer playback ---------------

  const audio = {
    ctx: null,
    next: 0, // context time at which the next answer chunk starts
    scheduled: 0, // seconds of answer audio handed to the output since connecting
    sources: new Set(),
    stream: null,
    node: null,
    graph: [],
    moduleLoaded: false, // the worklet module, once per AudioContext

    ensure() {
      if (!this.ctx) this.ctx = new AudioContext({ latencyHint: "interactive" });
      if (this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
      return this.ctx;
    },

    play(samples, rate) {
      const ctx = this.ctx;
      if (!ctx || samples.length === 0) return;
      const buf = ctx.createBuffer(1, samples.length, rate);
      buf.copyToChannel(samples, 0);
      const src = ctx.createBufferSource();
      src.buffer = buf;
      src.connect(ctx.destination);
      // Underrun (first chunk, or the network paused): restart with a small cushion.
      if (this.next < ctx.currentTime + 0.02) this.next = ctx.currentTime + 0.12;
      src.start(this.next);
      this.next += buf.duration;
      this.scheduled += buf.duration;
      $("scheduled-ms").textContent = String(Math.round(this.scheduled * 1000));
      this.sources.add(src);
      src.onended = () => this.sources.delete(src);
    },

    playPcm(bytes, rate) {
      const n = bytes.length >> 1;
      const dv = new DataView(bytes.buffer, bytes.byteOffset, n * 2);
      const f = new Float32Array(n);
      for (let i = 0; i < n; i++) f[i] = dv.getInt16(2 * i, true) / 32768;
      this.play(f, rate);
    },

    flush() {
      for (const s of this.sources) {
        try {
          s.stop();
        } catch (_err) {
          /* not started yet */
        }
      }
      this.sources.clear();
      this.next = 0;
    },

    queuedMs() {
      return this.ctx ? Math.max(0, this.next - this.ctx.currentTime) * 1000 : 0;
    },

    async openMic() {
      if (this.node) return true;
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        logSys("no microphone API: the page must come over https:// or from localhost", "error");
        return false;
      }
      const ctx = this.ensure();
      if (!ctx.audioWorklet) {
        logSys("this browser has no AudioWorklet: microphone unavailable", "error");
        return false;
      }
      const aec = $("aec").checked;
      try {
        this.stream = await navigator.mediaDevices.getUserMedia({
          audio: {
            channelCount: 1,
            echoCancellation: aec,
            noiseSuppression: false,
            autoGainControl: false,
          },
        });
        if (!this.moduleLoaded) await ctx.audioWorklet.addModule("console/console-worklet.js");
        this.moduleLoaded = true;
      } catch (err) {
        logSys(`microphone: ${err.name}: ${err.message}`, "error");
        this.closeMic();
        return false;
      }
      // Two low-pass stages keep what lies above 8 kHz from folding into the 16 kHz signal.
      const source = ctx.createMediaStreamSource(this.stream);
      const lp1 = new BiquadFilterNode(ctx, { type: "lowpass", frequency: 7000, Q: 0.54 });
      const lp2 = new BiquadFilterNode(ctx, { type: "lowpass", frequency: 7000, Q: 1.31 });
      const node = new AudioWorkletNode(ctx, "uplink-capture", {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        channelCount: 1,
        channelCountMode: "explicit",
        processorOptions: { targetRate: RATE, frameSamples: FRAME_SAMPLES },
      });
      node.port.onmessage = (e) => onMicFrame(new Int16Array(e.data));
      // The node writes no output: connecting it to the destination only keeps it pulled.
      source.connect(lp1).connect(lp2).connect(node).connect(ctx.destination);
      this.graph = [source, lp1, lp2, node];
      this.node = node;
      return true;
    },

    closeMic() {
      for (const n of this.graph) n.disconnect();
      if (this.node) this.node.port.onmessage = null;
      this.graph = [];
      this.node = null;
      if (this.stream) for (const t of this.stream.getTracks()) t.stop();
      this.stream = null;
      $("mic-level").style.width = "0";
    },
  };

  // ---- sending ----------------------------------------------------------------------------

  function sendJson(msg) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      logSys("not connected", "error");
      return false;
    }
    const full = msg.type === "hello" || msg.type === "ping" ? msg : { session_id: state.sessionId, ...msg };
    const text = JSON.stringify(full);
    ws.send(text);
    logMessage("out", full, text);
    return true;
  }

  function sendAudio(payload) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(encodeFrame(state.version, 0, payload));
    state.framesOut += 1;
    $("frames-out").textContent = String(state.framesOut);
  }

  function onMicFrame(pcm) {
    let sum = 0;
    for (let i = 0; i < pcm.length; i++) sum += pcm[i] * pcm[i];
    const level = Math.min(1, Math.sqrt(sum / pcm.length) / 8000);
    $("mic-level").style.width = `${Math.round(level * 100)}%`;
    if (!state.listening || !state.ws) return;
    // §1.3 auto mode: the mic is off while the device speaks (until its answer has played).
    if (state.mode === "auto" && (state.speaking || audio.queuedMs() > 0)) return;
    if (state.codec === "opus") {
      if (!state.encoder || state.encoder.state !== "configured") return;
      const data = new AudioData({
        format: "s16",
        sampleRate: RATE,
        numberOfFrames: pcm.length,
        numberOfChannels: 1,
        timestamp: state.encTs,
        data: pcm,
      });
      state.encTs += FRAME_MS * 1000;
      state.encoder.encode(data);
      data.close();
      return;
    }
    if (!LITTLE_ENDIAN) {
      const dv = new DataView(pcm.buffer);
      for (let i = 0; i < pcm.length; i++) dv.setInt16(2 * i, pcm[i], true);
    }
    sendAudio(new Uint8Array(pcm.buffer));
  }

  // ---- receiving --------------------------------------------------------------------------

  function onText(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (_err) {
      logEntry("in", "invalid", "not JSON", text);
      return;
    }
    if (!msg || typeof msg !== "object" || Array.isArray(msg)) {
      logEntry("in", "invalid", "not an object", text);
      return;
    }
    logMessage("in", msg, text);
    if (msg.type === "hello") onHello(msg);
    else if (msg.type === "stt" && typeof msg.text === "string") transcript("You", msg.text);
    else if (msg.type === "tts") onTts(msg);
    render();
  }

  function onHello(msg) {
    state.sessionId = typeof msg.session_id === "string" ? msg.session_id : "";
    const ap = msg.audio_params && typeof msg.audio_params === "object" ? msg.audio_params : {};
    // §1.2: absent fields mean the firmware's defaults, Opus 24 kHz 60 ms.
    state.downlink = {
      format: ap.format === "pcm" ? "pcm" : "opus",
      rate: Number(ap.sample_rate) || 24000,
      frameMs: Number(ap.frame_duration) || 60,
    };
    const d = state.downlink;
    $("session-id").textContent = state.sessionId || "–";
    $("downlink").textContent = `${d.format} ${d.rate} Hz ${d.frameMs} ms`;
    if (d.format === "opus") openDecoder(d.rate);
  }

  function onTts(msg) {
    if (msg.state === "start") state.speaking = true;
    else if (msg.state === "sentence_start" && typeof msg.text === "string") transcript("Device", msg.text);
    else if (msg.state === "stop") {
      state.speaking = false;
      if (msg.is_aborted === true) audio.flush();
      // The firmware re-sends listen start each time it returns to listening (§1.3), which
      // in auto mode is once the answer has finished playing, not when the relay is done.
      if (state.listening && state.mode === "auto") {
        clearTimeout(state.relisten);
        state.relisten = setTimeout(() => {
          if (state.listening && state.mode === "auto" && !state.speaking) {
            sendJson({ type: "listen", state: "start", mode: "auto" });
          }
        }, audio.queuedMs());
      }
    }
  }

  function onBinary(buf) {
    const frame = decodeFrame(state.version, buf);
    if (!frame) {
      logEntry("in", "error", "bad frame", `binary frame of ${buf.byteLength} bytes does not match protocol v${state.version}`);
      return;
    }
    if (frame.type === 1) {
      onText(new TextDecoder().decode(frame.payload));
      return;
    }
    state.framesIn += 1;
    $("frames-in").textContent = String(state.framesIn);
    const d = state.downlink;
    if (!d) return;
    if (d.format === "pcm") audio.playPcm(frame.payload, d.rate);
    else if (state.decoder && state.decoder.state === "configured") {
      state.decoder.decode(
        new EncodedAudioChunk({ type: "key", timestamp: state.decTs, data: frame.payload }),
      );
      state.decTs += d.frameMs * 1000;
    }
  }

  // ---- WebCodecs (Opus) -------------------------------------------------------------------

  function openDecoder(rate) {
    if (!hasWebCodecs) {
      logSys("the relay sends Opus and this browser has no WebCodecs: frames are counted, not played", "error");
      return;
    }
    state.decoder = new AudioDecoder({
      output: (data) => {
        const f = new Float32Array(data.numberOfFrames);
        data.copyTo(f, { planeIndex: 0, format: "f32-planar" });
        audio.play(f, data.sampleRate);
        data.close();
      },
      error: (err) => logSys(`opus decoder: ${err.message}`, "error"),
    });
    state.decoder.configure({ codec: "opus", sampleRate: rate, numberOfChannels: 1 });
  }

  async function openEncoder() {
    const config = {
      codec: "opus",
      sampleRate: RATE,
      numberOfChannels: 1,
      bitrate: 32000,
      opus: { frameDuration: FRAME_MS * 1000 },
    };
    const support = await AudioEncoder.isConfigSupported(config);
    if (!support.supported) return false;
    state.encoder = new AudioEncoder({
      output: (chunk) => {
        const b = new Uint8Array(chunk.byteLength);
        chunk.copyTo(b);
        sendAudio(b);
      },
      error: (err) => logSys(`opus encoder: ${err.message}`, "error"),
    });
    state.encoder.configure(config);
    state.encTs = 0;
    return true;
  }

  function closeCodecs() {
    for (const c of [state.encoder, state.decoder]) {
      if (c && c.state !== "closed") c.close();
    }
    state.encoder = state.decoder = null;
    state.decTs = 0;
  }

  // ---- connection -------------------------------------------------------------------------

  function relayUrl() {
    let url;
    try {
      url = new URL($("url").value.trim());
    } catch (_err) {
      return null;
    }
    if (url.protocol === "http:") url.protocol = "ws:";
    if (url.protocol === "https:") url.protocol = "wss:";
    return url.protocol === "ws:" || url.protocol === "wss:" ? url : null;
  }

  async function connect() {
    if (state.ws) return;
    const url = relayUrl();
    const deviceId = $("device-id").value.trim();
    if (!url) return logSys("the relay URL must be a ws://, wss://, http:// or https:// URL", "error");
    if (!deviceId) return logSys("a device id is required", "error");
    state.version = Number($("version").value);
    state.codec = $("codec").value;
    state.deviceId = deviceId;
    save("url", $("url").value.trim());
    save("device-id", deviceId);
    save("version", String(state.version));
    save("codec", state.codec);
    audio.ensure(); // inside the click: browsers start audio only after a user gesture
    if (state.codec === "opus") {
      const ok = hasWebCodecs && (await openEncoder().catch(() => false));
      if (!ok) return logSys("this browser cannot encode Opus (WebCodecs): choose PCM", "error");
    }
    // §1.1: browsers cannot set headers, so the handshake goes in the query string.
    const token = $("token").value.trim();
    const params = [
      ["device-id", deviceId],
      ["client-id", uuid()],
      ["protocol-version", String(state.version)],
    ];
    if (token) params.push(["authorization", token.includes(" ") ? token : `Bearer ${token}`]);
    url.search = params.map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");
    Object.assign(state, { sessionId: "", downlink: null, framesIn: 0, framesOut: 0, speaking: false });
    audio.scheduled = 0;
    $("frames-in").textContent = $("frames-out").textContent = $("scheduled-ms").textContent = "0";
    setStatus("connecting", "connecting");
    const shown = new URL(url);
    if (shown.searchParams.has("authorization")) shown.searchParams.set("authorization", "…");
    logSys(`connecting to ${shown}`);
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    ws.onopen = () => {
      setStatus("connected", "connected");
      const audioParams =
        state.codec === "pcm"
          ? {
              format: "pcm",
              sample_rate: RATE,
              channels: 1,
              bit_depth: 16,
              endianness: "little",
              frame_duration: FRAME_MS,
              frame_size: FRAME_SAMPLES,
              sample_format: "signed_int16",
              play_buffer_duration: 1000,
            }
          : { format: "opus", sample_rate: RATE, channels: 1, frame_duration: FRAME_MS, play_buffer_duration: 1000 };
      sendJson({ type: "hello", version: state.version, transport: "websocket", features: {}, audio_params: audioParams });
    };
    ws.onmessage = (e) => (typeof e.data === "string" ? onText(e.data) : onBinary(e.data));
    ws.onerror = () => logSys("websocket error (see the close code)", "error");
    ws.onclose = (e) => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.listening = state.speaking = false;
      audio.flush();
      audio.closeMic();
      closeCodecs();
      setStatus("closed", `closed ${e.code}`);
      logSys(`closed: code ${e.code}${e.reason ? ` (${e.reason})` : ""}`, e.code === 1000 ? "sys" : "error");
      render();
    };
    render();
  }

  function disconnect() {
    if (state.ws) state.ws.close(1000, "console");
  }

  function setStatus(s, text) {
    const pill = $("status");
    pill.dataset.state = s;
    pill.textContent = text;
  }

  // ---- controls ---------------------------------------------------------------------------

  async function startListening() {
    if (!state.sessionId) return;
    $("listen-start").disabled = true;
    if (!(await audio.openMic())) return render();
    state.mode = $("mode").value;
    if (sendJson({ type: "listen", state: "start", mode: state.mode })) state.listening = true;
    render();
  }

  function stopListening() {
    state.listening = false;
    sendJson({ type: "listen", state: "stop" });
    render();
  }

  function abortSpeech() {
    audio.flush();
    sendJson({ type: "abort" });
  }

  function speakText() {
    const text = $("speak-text").value.trim();
    if (!text) return logSys("nothing to speak", "error");
    sendJson({ type: "listen", state: "detect", text: "console", text_response: text });
  }

  function sendCustom() {
    let payload;
    try {
      payload = JSON.parse($("custom-payload").value);
    } catch (err) {
      return logSys(`custom payload is not JSON: ${err.message}`, "error");
    }
    if (!payload || typeof payload !== "object" || Array.isArray(payload)) {
      return logSys("custom payload must be a JSON object", "error");
    }
    // The business echoes details.session_id on its events (§2.3); fill it when absent.
    if ($("custom-fill-session").checked && state.sessionId) {
      if (payload.details === undefined) payload.details = {};
      const d = payload.details;
      if (d && typeof d === "object" && !Array.isArray(d) && d.session_id === undefined) {
        d.session_id = state.sessionId;
      }
    }
    sendJson({ type: "custom", payload });
  }

  // One call of the relay's HTTP API, on the host of the WebSocket URL; the answer goes to
  // `out` and the log. Returns the parsed JSON answer, or null.
  async function api(method, path, body, out, label) {
    const url = relayUrl();
    if (!url) {
      logSys(`${label} needs the relay URL`, "error");
      return null;
    }
    const base = `${url.protocol === "wss:" ? "https:" : "http:"}//${url.host}`;
    const headers = { "Content-Type": "application/json" };
    const token = $("api-token").value.trim();
    if (token) headers.Authorization = `Bearer ${token}`;
    out.textContent = "…";
    try {
      const resp = await fetch(base + path, { method, headers, body });
      const text = await resp.text();
      out.textContent = `${resp.status} ${text}`;
      logEntry("sys", resp.ok ? label : "error", `${label} ${resp.status}`, text);
      try {
        return JSON.parse(text);
      } catch {
        return null;
      }
    } catch (err) {
      out.textContent = `failed: ${err.message}`;
      logSys(`${label} failed: ${err.message}`, "error");
      return null;
    }
  }

  async function push() {
    const deviceId = $("device-id").value.trim();
    if (!deviceId) return logSys("push needs a device id", "error");
    const path = `/api/v1/devices/${encodeURIComponent(deviceId)}/messages`;
    await api("POST", path, $("push-body").value, $("push-result"), "push");
  }

  function toolsPath() {
    const deviceId = $("tools-device").value.trim() || $("device-id").value.trim();
    return `/api/v1/devices/${encodeURIComponent(deviceId)}/tools`;
  }

  async function listTools() {
    const answer = await api("GET", toolsPath(), undefined, $("tools-result"), "tools");
    const select = $("tools-name");
    select.replaceChildren();
    for (const tool of (answer && Array.isArray(answer.tools) ? answer.tools : [])) {
      const option = document.createElement("option");
      option.value = option.textContent = String(tool.name); // text, never markup
      option.title = String(tool.description || "");
      select.append(option);
    }
  }

  async function callTool() {
    const name = $("tools-name").value;
    if (!name) return logSys("list the tools first, then pick one", "error");
    let args;
    try {
      args = JSON.parse($("tools-args").value || "{}");
    } catch (err) {
      return logSys(`arguments are not JSON: ${err.message}`, "error");
    }
    const body = JSON.stringify({ arguments: args });
    await api("POST", `${toolsPath()}/${encodeURIComponent(name)}`, body, $("tools-result"), "tool call");
  }

  function render() {
    const open = !!state.ws && state.ws.readyState === WebSocket.OPEN && !!state.sessionId;
    $("connect").disabled = !!state.ws;
    $("disconnect").disabled = !state.ws;
    for (const id of ["url", "device-id", "token", "version", "codec"]) $(id).disabled = !!state.ws;
    $("listen-start").disabled = !open || state.listening;
    $("listen-stop").disabled = !open || !state.listening;
    $("mode").disabled = state.listening;
    $("aec").disabled = !!audio.node;
    for (const id of ["abort", "speak-send", "custom-send"]) $(id).disabled = !open;
    $("speaking").textContent = state.speaking ? "yes" : "no";
  }

  function init() {
    const wsScheme = location.protocol === "https:" ? "wss:" : "ws:";
    $("url").value = load("url", `${wsScheme}//${location.host}/xiaozhi/v1/`);
    $("device-id").value = load("device-id", randomMac());
    $("version").value = load("version", "1");
    $("codec").value = load("codec", "pcm");
    if (!hasWebCodecs) {
      $("codec").value = "pcm";
      $("codec").querySelector('option[value="opus"]').disabled = true;
    }
    $("custom-payload").value = JSON.stringify(
      { auth: { device_id: canonicalId($("device-id").value) }, type: "get", details: { events: ["getCurrentTime"] } },
      null,
      2,
    );
    $("connect").addEventListener("click", connect);
    $("disconnect").addEventListener("click", disconnect);
    $("listen-start").addEventListener("click", startListening);
    $("listen-stop").addEventListener("click", stopListening);
    $("abort").addEventListener("click", abortSpeech);
    $("speak-send").addEventListener("click", speakText);
    $("custom-send").addEventListener("click", sendCustom);
    $("push-send").addEventListener("click", push);
    $("tools-list").addEventListener("click", listTools);
    $("tools-call").addEventListener("click", callTool);
    $("log-clear").addEventListener("click", () => $("log").replaceChildren());
    state.ticker = setInterval(() => {
      $("queued-ms").textContent = String(Math.round(audio.queuedMs()));
    }, 200);
    render();
  }

  init();
})();
