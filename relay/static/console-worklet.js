// Microphone capture for the relay console: the context's rate in, 16 kHz s16le frames of
// `frameSamples` samples out (docs/protocol.md §1.2, PCM uplink; §1.4 one frame per packet).
// The graph puts a low-pass filter before this node, so linear interpolation is enough here.
"use strict";

class UplinkCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.rate = opts.targetRate || 16000;
    this.frameSamples = opts.frameSamples || 960;
    this.step = sampleRate / this.rate; // input samples per output sample
    this.pos = 0; // position of the next output sample, relative to the current block
    this.prev = 0; // the last input sample of the previous block (index -1)
    this.frame = new Int16Array(this.frameSamples);
    this.fill = 0;
  }

  process(inputs) {
    const input = inputs[0];
    const x = input && input[0];
    if (!x || x.length === 0) return true;
    let t = this.pos;
    const last = x.length - 1;
    while (t <= last) {
      const i = Math.floor(t);
      const frac = t - i;
      const a = i < 0 ? this.prev : x[i];
      const b = x[i + 1 <= last ? i + 1 : last];
      this.push(a + (b - a) * frac);
      t += this.step;
    }
    this.pos = t - x.length;
    this.prev = x[last];
    return true;
  }

  push(v) {
    const s = v < -1 ? -1 : v > 1 ? 1 : v;
    this.frame[this.fill++] = s < 0 ? s * 0x8000 : s * 0x7fff;
    if (this.fill === this.frameSamples) {
      const buf = this.frame.buffer;
      this.port.postMessage(buf, [buf]);
      this.frame = new Int16Array(this.frameSamples);
      this.fill = 0;
    }
  }
}

registerProcessor("uplink-capture", UplinkCapture);
