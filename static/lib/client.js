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
 * "error", "joined", "left".
 */

export const PROTOCOL_VERSION = 1;

const FORWARDED = ["server_info", "ready", "partial", "final", "language", "backend_changed", "stopped", "joined", "left"];

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
    socket.on("connect", () => this._setConnection("connected"));
    socket.on("disconnect", (reason) => {
      // The server ends a connection's session when it drops; nothing of it survives here.
      const lost = this.session;
      this.session = null;
      this._settle("reject", new ServerError({ code: "disconnected", message: "The connection to the server was lost.", fatal: true }));
      if (reason === "io client disconnect") this._setConnection("disconnected");
      else {
        if (reason === "io server disconnect") socket.connect(); // the server kicked us: try again
        this._setConnection("reconnecting");
      }
      if (lost) this._emitLocal("session_lost", lost);
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
      this.session = payload;
      this._settle("resolve", payload, "start");
    }
    if (event === "stopped" && this.session && payload.session_id === this.session.session_id) {
      this.session = null;
      this._settle("resolve", payload, "stop");
    }
    this._emitLocal(event, payload);
  }

  _onServerError(payload) {
    const err = new ServerError(payload);
    // Before `ready`, an error answers the `start` (bad backend, language, busy server...).
    if (this._pending && this._pending.kind === "start") this._settle("reject", err, "start");
    else if (err.fatal && this.session) {
      this.session = null;
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

  /** Send one chunk of PCM (ArrayBuffer / typed array) in the announced encoding and rate. */
  sendAudio(pcm) {
    this.socket.emit("audio", pcm);
  }

  /** Stop the session; resolves with the `stopped` payload once the last finals are out. */
  stop() {
    if (!this.session) return Promise.resolve(null);
    const answer = this._expect("stop");
    this.socket.emit("stop");
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
