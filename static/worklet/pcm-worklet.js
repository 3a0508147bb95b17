/**
 * AudioWorklet that turns microphone audio into 16 kHz mono Int16 LE chunks.
 *
 * The AudioContext runs at whatever rate the browser picks (44.1 or 48 kHz usually; Firefox
 * refuses a 16 kHz context on a 48 kHz microphone), so the worklet resamples by itself with a
 * windowed-sinc low-pass (Blackman window, cutoff just under the output Nyquist) evaluated at
 * the exact fractional input position of every output sample. The filter state (input history
 * and output position) carries across render quanta, so chunk boundaries are seamless.
 *
 * Messages to the main thread: {type: "chunk", pcm: ArrayBuffer (Int16 LE), samples, rms, peak}
 * about every `chunkMs` ms, and {type: "flushed"} after a {type: "flush"} request, which first
 * sends whatever is pending (a final short chunk).
 *
 * This file is also an ES module that exports the Resampler so tests can drive it directly
 * from a page; the processor is registered only inside an AudioWorkletGlobalScope.
 */

/** Stateful windowed-sinc resampler (any rate to any rate; mono Float32). */
export class Resampler {
  /**
   * @param {number} inRate input sample rate (Hz, integer)
   * @param {number} outRate output sample rate (Hz, integer)
   * @param {{zeroCrossings?: number, phases?: number, rolloff?: number}} [opts]
   */
  constructor(inRate, outRate, opts = {}) {
    this.inRate = Math.round(inRate);
    this.outRate = Math.round(outRate);
    this.passthrough = this.inRate === this.outRate;
    // Cutoff as a fraction of the input rate: below the lower Nyquist, with room for the
    // transition band so what folds back is already attenuated.
    const rolloff = opts.rolloff ?? 0.9;
    this.cutoff = 0.5 * Math.min(1, this.outRate / this.inRate) * rolloff;
    const zeroCrossings = opts.zeroCrossings ?? 16;
    // Half-width in input samples: `zeroCrossings` lobes of the low-pass sinc on each side.
    this.half = Math.ceil(zeroCrossings / (2 * this.cutoff));
    this.taps = 2 * this.half;
    this.phases = opts.phases ?? 128;
    this.table = this._buildTable();
    // Input history: absolute index of buf[0] is bufStart; bufLen samples valid.
    this.buf = new Float32Array(this.taps + 8192);
    this.bufStart = -this.half; // pretend there were `half` zeros before the first sample
    this.bufLen = this.half;
    this.outCount = 0; // output samples produced so far
  }

  /** Kernel table: row p holds the taps for fractional position p / phases, DC-normalised. */
  _buildTable() {
    const { taps, half, phases, cutoff } = this;
    const table = new Float32Array((phases + 1) * taps);
    for (let p = 0; p <= phases; p++) {
      const frac = p / phases;
      let sum = 0;
      for (let j = 0; j < taps; j++) {
        // Tap j multiplies input sample (i - half + 1 + j); its distance from t = i + frac:
        const d = frac + half - 1 - j;
        const x = 2 * cutoff * d;
        const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
        const w = d / half; // -1..1 across the window
        const blackman = Math.abs(w) >= 1 ? 0 : 0.42 + 0.5 * Math.cos(Math.PI * w) + 0.08 * Math.cos(2 * Math.PI * w);
        const h = 2 * cutoff * sinc * blackman;
        table[p * taps + j] = h;
        sum += h;
      }
      // Exact unity gain at DC for every phase: no amplitude ripple at the output rate.
      for (let j = 0; j < taps; j++) table[p * taps + j] /= sum;
    }
    return table;
  }

  /**
   * Feed input samples; returns the output samples they complete (possibly none).
   * @param {Float32Array} input
   * @returns {Float32Array}
   */
  process(input) {
    if (this.passthrough) return Float32Array.from(input);
    this._append(input);
    const out = [];
    const { inRate, outRate, half, taps, phases, table, buf } = this;
    const bufEnd = this.bufStart + this.bufLen;
    for (;;) {
      // Exact integer arithmetic for the position: no drift over long sessions.
      const num = this.outCount * inRate;
      const i = Math.floor(num / outRate);
      if (i + half >= bufEnd) break; // needs samples not here yet
      const fracPos = ((num - i * outRate) / outRate) * phases;
      const p = Math.floor(fracPos);
      const mix = fracPos - p;
      const row0 = p * taps;
      const row1 = row0 + taps;
      const base = i - half + 1 - this.bufStart;
      let acc0 = 0;
      let acc1 = 0;
      for (let j = 0; j < taps; j++) {
        const s = buf[base + j];
        acc0 += s * table[row0 + j];
        acc1 += s * table[row1 + j];
      }
      out.push(acc0 + (acc1 - acc0) * mix);
      this.outCount++;
    }
    this._discardBefore(Math.floor((this.outCount * inRate) / outRate) - half + 1);
    return Float32Array.from(out);
  }

  /**
   * Output for the input not yet covered (pads the future with zeros): call once at the end.
   * @returns {Float32Array}
   */
  flush() {
    if (this.passthrough) return new Float32Array(0);
    const inputEnd = this.bufStart + this.bufLen; // absolute index just past the last real sample
    const wanted = Math.floor((inputEnd * this.outRate) / this.inRate) - this.outCount;
    if (wanted <= 0) return new Float32Array(0);
    const out = this.process(new Float32Array(this.half + 1));
    return out.subarray(0, Math.min(wanted, out.length));
  }

  _append(input) {
    const needed = this.bufLen + input.length;
    if (needed > this.buf.length) {
      const bigger = new Float32Array(Math.max(needed, this.buf.length * 2));
      bigger.set(this.buf.subarray(0, this.bufLen));
      this.buf = bigger;
    }
    this.buf.set(input, this.bufLen);
    this.bufLen += input.length;
  }

  _discardBefore(absIndex) {
    const drop = absIndex - this.bufStart;
    if (drop <= 0) return;
    this.buf.copyWithin(0, drop, this.bufLen);
    this.bufLen -= drop;
    this.bufStart = absIndex;
  }
}

/** Float [-1, 1] to Int16 little-endian bytes (clamped). */
export function floatToInt16LE(samples) {
  const out = new ArrayBuffer(samples.length * 2);
  const view = new DataView(out);
  for (let k = 0; k < samples.length; k++) {
    const s = Math.max(-1, Math.min(1, samples[k]));
    view.setInt16(k * 2, s < 0 ? Math.round(s * 0x8000) : Math.round(s * 0x7fff), true);
  }
  return out;
}

if (typeof registerProcessor === "function") {
  class PcmCaptureProcessor extends AudioWorkletProcessor {
    constructor(options) {
      super();
      const opts = options.processorOptions || {};
      this.outRate = opts.targetRate || 16000;
      // `sampleRate` is the AudioWorkletGlobalScope's context rate.
      this.resampler = new Resampler(sampleRate, this.outRate);
      this.chunkSamples = Math.round((this.outRate * (opts.chunkMs || 100)) / 1000);
      this.pending = new Float32Array(this.chunkSamples);
      this.pendingLen = 0;
      this.port.onmessage = (event) => {
        if (event.data && event.data.type === "flush") {
          this._push(this.resampler.flush());
          this._emit();
          this.port.postMessage({ type: "flushed" });
        }
      };
    }

    process(inputs) {
      const input = inputs[0];
      if (input && input.length > 0) {
        // Downmix: average the channels (a stereo mic gives the same speech on both).
        const frames = input[0].length;
        let mono = input[0];
        if (input.length > 1) {
          mono = new Float32Array(frames);
          for (const channel of input) for (let k = 0; k < frames; k++) mono[k] += channel[k];
          for (let k = 0; k < frames; k++) mono[k] /= input.length;
        }
        this._push(this.resampler.process(mono));
      }
      return true; // keep running while the node is connected
    }

    _push(samples) {
      let offset = 0;
      while (offset < samples.length) {
        const n = Math.min(samples.length - offset, this.chunkSamples - this.pendingLen);
        this.pending.set(samples.subarray(offset, offset + n), this.pendingLen);
        this.pendingLen += n;
        offset += n;
        if (this.pendingLen === this.chunkSamples) this._emit();
      }
    }

    _emit() {
      if (this.pendingLen === 0) return;
      const samples = this.pending.subarray(0, this.pendingLen);
      let sumSq = 0;
      let peak = 0;
      for (let k = 0; k < samples.length; k++) {
        const a = Math.abs(samples[k]);
        sumSq += a * a;
        if (a > peak) peak = a;
      }
      const pcm = floatToInt16LE(samples);
      this.port.postMessage(
        { type: "chunk", pcm, samples: samples.length, rms: Math.sqrt(sumSq / samples.length), peak },
        [pcm],
      );
      this.pendingLen = 0;
    }
  }

  registerProcessor("pcm-capture", PcmCaptureProcessor);
}
