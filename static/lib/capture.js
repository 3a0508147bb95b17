/**
 * Microphone capture: getUserMedia -> AudioContext (native rate) -> pcm-capture AudioWorklet,
 * which hands back 16 kHz mono Int16 LE chunks of about 100 ms.
 *
 * Usage:
 *   const mic = new MicCapture({onChunk: ({pcm, samples, rms, peak}) => ...});
 *   await mic.start();        // throws a MicError with a plain-words message on failure
 *   ...
 *   await mic.stop();         // sends the last partial chunk through onChunk first
 */

const WORKLET_URL = new URL("../worklet/pcm-worklet.js", import.meta.url);

/** A microphone failure with a message fit to show to the user. */
export class MicError extends Error {
  constructor(message, cause) {
    super(message);
    this.name = "MicError";
    this.cause = cause;
  }
}

/** Translate a getUserMedia / AudioContext failure into plain words. */
export function describeMicError(err) {
  const name = err && err.name;
  switch (name) {
    case "NotAllowedError":
    case "PermissionDeniedError":
      return "Microphone access was blocked. Allow the microphone for this site (the icon in the address bar) and press Start again.";
    case "NotFoundError":
    case "DevicesNotFoundError":
      return "No microphone was found. Connect one and press Start again.";
    case "NotReadableError":
    case "TrackStartError":
      return "The microphone could not be opened. Another application may be using it.";
    case "OverconstrainedError":
      return "The microphone does not support the requested settings.";
    case "SecurityError":
      return "The browser blocked the microphone on this page. It only works over https:// or on localhost.";
    case "AbortError":
      return "The microphone stopped unexpectedly. Press Start to try again.";
    default:
      return `The microphone could not be started (${(err && err.message) || err}).`;
  }
}

export class MicCapture {
  /**
   * @param {{onChunk: function, onEnded?: function, targetRate?: number, chunkMs?: number}} opts
   *   onChunk({pcm: ArrayBuffer, samples, rms, peak}) for every chunk; onEnded() when the
   *   device goes away (unplugged, permission revoked) while capturing.
   */
  constructor({ onChunk, onEnded, targetRate = 16000, chunkMs = 100 }) {
    this.onChunk = onChunk;
    this.onEnded = onEnded;
    this.targetRate = targetRate;
    this.chunkMs = chunkMs;
    this.stream = null;
    this.context = null;
    this.node = null;
  }

  /** The AudioContext's native rate (what the worklet resamples from), once started. */
  get contextRate() {
    return this.context ? this.context.sampleRate : null;
  }

  async start() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new MicError(
        "This browser cannot use the microphone on this page. Open it over https:// or on localhost, in a current browser.",
      );
    }
    try {
      // Created before any await, while the click's user activation is fresh (Safari needs
      // it). No sampleRate option on purpose: the native rate always works; the worklet
      // resamples.
      this.context = new AudioContext({ latencyHint: "interactive" });
    } catch (err) {
      throw new MicError(`Audio processing could not be started in this browser (${err.message || err}).`, err);
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: {
          channelCount: 1,
          // The recogniser wants the raw signal: WebRTC's echo canceller, noise suppressor and
          // gain control reshape speech in ways that cost accuracy (Whisper copes with levels).
          echoCancellation: false,
          noiseSuppression: false,
          autoGainControl: false,
        },
      });
    } catch (err) {
      await this._teardown();
      throw new MicError(describeMicError(err), err);
    }
    try {
      await this.context.audioWorklet.addModule(WORKLET_URL);
      const source = this.context.createMediaStreamSource(this.stream);
      this.node = new AudioWorkletNode(this.context, "pcm-capture", {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: { targetRate: this.targetRate, chunkMs: this.chunkMs },
      });
      this.node.port.onmessage = (event) => this._onMessage(event.data);
      // A muted path to the destination keeps the graph pulling the worklet in every browser.
      const mute = this.context.createGain();
      mute.gain.value = 0;
      source.connect(this.node).connect(mute).connect(this.context.destination);
      if (this.context.state !== "running") await this.context.resume();
    } catch (err) {
      await this._teardown();
      throw new MicError(`Audio processing could not be started in this browser (${err.message || err}).`, err);
    }
    for (const track of this.stream.getAudioTracks()) {
      track.addEventListener("ended", () => this.onEnded && this.onEnded());
    }
  }

  /** Stop capturing; the last partial chunk goes out through onChunk before this resolves. */
  async stop() {
    if (this.node) {
      const flushed = new Promise((resolve) => {
        this._flushed = resolve;
        setTimeout(resolve, 500); // a suspended context never answers: do not hang
      });
      this.node.port.postMessage({ type: "flush" });
      await flushed;
    }
    await this._teardown();
  }

  _onMessage(msg) {
    if (msg.type === "chunk") this.onChunk(msg);
    else if (msg.type === "flushed" && this._flushed) this._flushed();
  }

  async _teardown() {
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    if (this.node) this.node.port.onmessage = null;
    if (this.context) {
      try {
        await this.context.close();
      } catch {
        /* already closed */
      }
    }
    this.stream = null;
    this.context = null;
    this.node = null;
  }
}
