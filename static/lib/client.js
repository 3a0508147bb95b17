/**
 * A small protocol-v1 client over Socket.IO (see docs/PROTOCOL.md and docs/CLIENT.md).
 * No DOM, no microphone: give it PCM, get transcript events.
 *
 *   const client = new LivescribeClient({io: window.io});
 *   client.on("final", (f) => ...);
 *   const ready = await client.start({backend: "local", language: "auto"});
 *   client.sendAudio(int16ArrayBuffer);
 *   const stopped = await client.stop();
 *
 * Events: "connection" (state: "connecting" | "connected" | "reconnecting" | "disconnected"),
 * "server_info", "ready", "partial", "final", "language", "backend_changed", "stopped",
 * "error", "joined", "left"; "resumed" (the session survived a dropped connection) and
 * "session_lost" (it did not).
 *
 * A dropped connection does not end the session: the server keeps it for
 * `server_info.resume_grace` seconds. Audio given to `sendAudio` meanwhile is kept; once the
 * socket reconnects the client resumes the session with its token, the server replays the
 * finals it missed, and the audio the server never got is sent again (docs/PROTOCOL.md,
 * "Resuming a session").
 */

export const PROTOCOL_VERSION = 1;

const FORWARDED = [
  "server_info",
  "ready",
  "resumed",
  "partial",
  "final",
  "language",
  "backend_changed",
  "stopped",
  "joined",
  "left",
];

// Audio kept for sending again after a dropped connection: a drop is noticed up to 20 s late
// (pings), and the server waits resume_grace (30 s) for the client to come back. No more than
// the server's --max-backlog (60 s) would take in one go.
const KEEP_SECONDS = 60;
const BYTES_PER_FRAME = { pcm_s16le: 2, pcm_f32le: 4 };

/** A server `error` payload ({code, message, fatal}) as an Error. */
export class ServerError extends Error {
  constructor(payload) {
    super((payload && payload.message) || "server error");
    this.name = "ServerError";
    this.code = (payload && payload.code) || "internal_error";
    this.fatal = Boolean(payload && payload.fatal);
    this.payload = payload;
  }
}

export class LivescribeClient {
  /**
   * @param {{io: function, url?: string, socketOptions?: object}} opts
   *   io: the Socket.IO client factory (window.io from the vendored socket.io.min.js);
   *   url: server origin (default: this page's origin).
   */
  constructor({ io, url, socketOptions = {} }) {
    this.listeners = new Map();
    this.connection = "connecting";
    this.serverInfo = null;
    this.session = null; // the `ready` payload of this connection's running session
    this._pending = null; // {kind: "start"|"stop", resolve, reject}
    this._away = false; // the connection dropped while a session ran: resume it on reconnect
    this._sent = 0; // frames of this session's audio given to sendAudio
    this._kept = []; // [{at, frames, pcm}]: the last KEEP_SECONDS of them, to send again
    this._lastSeq = -1; // the `seq` of the last event of this session received
    this._closing = false; // resumed into a session that takes no more audio
    const options = { reconnection: true, reconnectionDelay: 500, reconnectionDelayMax: 5000, ...socketOptions };
    this.socket = url ? io(url, options) : io(options);
    this._wire();
  }

  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return () => this.listeners.get(event).delete(fn);
  }

  _emitLocal(event, payload) {
    for (const fn of this.listeners.get(event) || []) {
      try {
        fn(payload);
      } catch (err) {
        console.error(`livescribe: "${event}" listener failed`, err);
      }
    }
  }

  _setConnection(state) {
    if (state === this.connection) return;
    this.connection = state;
    this._emitLocal("connection", state);
  }

  _wire() {
    const { socket } = this;
    socket.on("connect", () => {
      this._setConnection("connected");
      if (this._away && this.session) {
        const { session_id, resume_token } = this.session;
        socket.emit("resume", { session_id, token: resume_token, after: this._lastSeq });
      }
    });
    socket.on("disconnect", (reason) => {
      const lost = this.session;
      const grace = this.serverInfo && this.serverInfo.resume_grace;
      // A dropped network (not our goodbye, not the server's): the server keeps the session.
      const resumable = lost && lost.resume_token && grace > 0 && reason !== "io client disconnect" && reason !== "io server disconnect";
      const gone = new ServerError({ code: "disconnected", message: "The connection to the server was lost.", fatal: true });
      if (resumable) {
        this._away = true;
        // Emitted into a connection whose death socket.io noticed on that very emit, audio and
        // stop wait in its buffer and would reach the next connection before `resume` (as
        // `not_started`); both go again after `resumed`, from what the server says it has.
        if (Array.isArray(socket.sendBuffer)) {
          socket.sendBuffer = socket.sendBuffer.filter((p) => !(p && Array.isArray(p.data) && (p.data[0] === "audio" || p.data[0] === "stop")));
        }
        this._settle("reject", gone, "start"); // a stop waits for the resumed session's end
        // The server stops the session `grace` after it notices the drop and keeps its end as
        // long again: past that, nothing is left to resume.
        clearTimeout(this._giveUp);
        this._giveUp = setTimeout(() => this._lose(gone), (2 * grace + 10) * 1000);
      } else {
        this._endSession();
        this._settle("reject", gone);
      }
      if (reason === "io client disconnect") this._setConnection("disconnected");
      else {
        if (reason === "io server disconnect") socket.connect(); // the server kicked us: try again
        this._setConnection("reconnecting");
      }
      if (lost && !resumable) this._emitLocal("session_lost", lost);
    });
    socket.on("connect_error", () => {
      if (!socket.connected) this._setConnection(socket.active ? "reconnecting" : "disconnected");
    });
    socket.io.on("reconnect_failed", () => this._setConnection("disconnected"));

    for (const event of FORWARDED) {
      socket.on(event, (payload) => this._onServerEvent(event, payload));
    }
    socket.on("error", (payload) => this._onServerError(payload));
  }

  _onServerEvent(event, payload) {
    if (event === "server_info") this.serverInfo = payload;
    if (event === "ready") {
      this._endSession();
      this.session = payload;
      this._settle("resolve", payload, "start");
    }
    const ours = this.session && payload && payload.session_id === this.session.session_id;
    if (event === "resumed" && ours) {
      clearTimeout(this._giveUp);
      this._away = false;
      this.session = { ...this.session, ...payload };
      this._closing = payload.state !== "running"; // it takes no more audio
      this._sendKeptFrom(payload.received, payload.state === "running");
      // A stop sent into the dead connection never arrived.
      if (payload.state === "running" && this._pending && this._pending.kind === "stop") this.socket.emit("stop");
    }
    if (ours && Number.isFinite(payload.seq)) this._lastSeq = Math.max(this._lastSeq, payload.seq);
    if (event === "stopped" && ours) {
      this._endSession();
      this._settle("resolve", payload, "stop");
    }
    this._emitLocal(event, payload);
  }

  /** The session could not be resumed: what it said after the drop went to nobody. */
  _lose(err) {
    const lost = this.session;
    if (!lost) return;
    this._endSession();
    this._settle("reject", err, "stop");
    this._emitLocal("session_lost", lost);
  }

  _endSession() {
    clearTimeout(this._giveUp);
    this.session = null;
    this._away = false;
    this._sent = 0;
    this._kept = [];
    this._lastSeq = -1;
    this._closing = false;
  }

  /** After a resume: send again the audio from frame `received` on (what never arrived),
   * if the session still takes audio; say how much of it cannot be transcribed. */
  _sendKeptFrom(received, running) {
    const bytesPerFrame = BYTES_PER_FRAME[this.session.encoding] || 2;
    const first = this._kept.length ? this._kept[0].at : this._sent;
    const from = Number.isFinite(received) ? received : this._sent;
    let lost = Math.max(0, first - from); // older than the page keeps
    for (const { at, frames, pcm } of this._kept) {
      if (at + frames <= from) continue;
      const skip = Math.max(0, from - at);
      if (running) this.socket.emit("audio", skip ? pcm.slice(skip * bytesPerFrame) : pcm);
      else lost += frames - skip;
    }
    if (lost > 0) {
      const seconds = (lost / (this.session.sample_rate || 16000)).toFixed(1);
      const why = running ? "more than this page keeps" : "the session had ended before the connection came back";
      this._emitLocal(
        "error",
        new ServerError({ code: "audio_lost", message: `${seconds} s of audio recorded while disconnected was not transcribed: ${why}.`, fatal: false }),
      );
    }
  }

  _onServerError(payload) {
    const err = new ServerError(payload);
    if (this.session && payload && payload.session_id === this.session.session_id && Number.isFinite(payload.seq)) {
      this._lastSeq = Math.max(this._lastSeq, payload.seq);
    }
    if (this._away && err.code === "not_resumable") {
      this._lose(err); // gone for longer than the server waited
      return;
    }
    // Before `ready`, an error answers the `start` (bad backend, language, busy server...).
    if (this._pending && this._pending.kind === "start") this._settle("reject", err, "start");
    else if (err.fatal && this.session) {
      this._endSession();
      this._settle("reject", err, "stop");
    }
    this._emitLocal("error", err);
  }

  _settle(how, value, kind) {
    const pending = this._pending;
    if (!pending || (kind && pending.kind !== kind)) return;
    this._pending = null;
    pending[how](value);
  }

  _expect(kind) {
    if (this._pending) this._settle("reject", new Error(`superseded by ${kind}`));
    return new Promise((resolve, reject) => {
      this._pending = { kind, resolve, reject };
    });
  }

  get connected() {
    return this.socket.connected;
  }

  /**
   * Start a session; resolves with the `ready` payload, rejects with a ServerError.
   * @param {{backend?: string, language?: string, task?: string, sample_rate?: number,
   *          encoding?: string, model?: string, room?: string}} options
   */
  start(options = {}) {
    const answer = this._expect("start");
    this.socket.emit("start", { sample_rate: 16000, encoding: "pcm_s16le", ...options });
    return answer;
  }

  /** Send one chunk of PCM (ArrayBuffer / typed array) in the announced encoding and rate.
   * While the connection is down it is kept, and sent once the session is resumed. */
  sendAudio(pcm) {
    if (this._closing) return; // its `stopped` is on the way
    const session = this.session;
    if (session) {
      const buffer = pcm instanceof ArrayBuffer ? pcm : pcm.buffer.slice(pcm.byteOffset, pcm.byteOffset + pcm.byteLength);
      const frames = buffer.byteLength / (BYTES_PER_FRAME[session.encoding] || 2);
      this._kept.push({ at: this._sent, frames, pcm: buffer });
      this._sent += frames;
      const keep = KEEP_SECONDS * (session.sample_rate || 16000);
      while (this._kept.length > 1 && this._sent - this._kept[1].at >= keep) this._kept.shift();
    }
    if (this._away) return;
    this.socket.emit("audio", pcm);
  }

  /** Whether the connection dropped and the session waits to be resumed. */
  get resuming() {
    return this._away;
  }

  /** Stop the session; resolves with the `stopped` payload once the last finals are out. */
  stop() {
    if (!this.session) return Promise.resolve(null);
    const answer = this._expect("stop");
    if (!this._away) this.socket.emit("stop"); // else sent once the session is resumed
    return answer;
  }

  /** Watch a room (read-only): its partial/final/... events arrive like our own. */
  join(room) {
    return new Promise((resolve) => {
      const off = this.on("joined", (payload) => {
        if (payload && String(payload.room) === String(room)) {
          off();
          resolve(payload);
        }
      });
      this.socket.emit("join", { room });
    });
  }

  leave(room) {
    this.socket.emit("leave", { room });
  }

  /** Round trip to the server in ms (uses the `ping` ack). */
  ping(timeoutMs = 5000) {
    return new Promise((resolve, reject) => {
      const sent = performance.now();
      this.socket.timeout(timeoutMs).emit("ping", { client_time: Date.now() }, (err, reply) => {
        if (err) reject(err);
        else resolve({ rtt: performance.now() - sent, serverTime: reply && reply.server_time });
      });
    });
  }

  close() {
    this.socket.disconnect();
  }
}
