/**
 * The livescribe page: wires the protocol client, the microphone and the transcript to the DOM.
 *
 * Two modes: the default one captures this browser's microphone and runs a session; with
 * `?room=ID` the page only watches that room's captions (no microphone, no controls).
 */

import { LivescribeClient, ServerError } from "./lib/client.js";
import { MicCapture, MicError } from "./lib/capture.js";
import { Transcript, formatClock, formatTimestamp } from "./lib/transcript.js";
import { LatencyTracker } from "./lib/latency.js";

const TARGET_RATE = 16000;
const START_TIMEOUT_MS = 30000;

const $ = (id) => document.getElementById(id);
const el = {
  conn: $("conn"),
  connState: $("conn-state"),
  connRtt: $("conn-rtt"),
  modeLabel: $("mode-label"),
  sessionCard: $("session-card"),
  watchCard: $("watch-card"),
  watchRoom: $("watch-room"),
  watchState: $("watch-state"),
  backendLocal: $("backend-local"),
  backendCloud: $("backend-cloud"),
  backendHint: $("backend-hint"),
  language: $("language"),
  languageHint: $("language-hint"),
  task: $("task"),
  startBtn: $("start-btn"),
  stopBtn: $("stop-btn"),
  muteBtn: $("mute-btn"),
  timer: $("session-timer"),
  level: $("level"),
  levelFill: $("level-fill"),
  sessionState: $("session-state"),
  share: $("share"),
  watchLink: $("watch-link"),
  copyLinkBtn: $("copy-link-btn"),
  statusBackend: $("status-backend"),
  statusDevice: $("status-device"),
  statusModel: $("status-model"),
  statusLanguage: $("status-language"),
  statusLatency: $("status-latency"),
  statusAudio: $("status-audio"),
  copyBtn: $("copy-btn"),
  downloadTxt: $("download-txt"),
  downloadSrt: $("download-srt"),
  downloadVtt: $("download-vtt"),
  clearBtn: $("clear-btn"),
  alerts: $("alerts"),
  transcript: $("transcript"),
  empty: $("empty"),
  finals: $("finals"),
  partial: $("partial"),
  jumpBtn: $("jump-btn"),
  announce: $("announce"),
};

/** Plain words for the protocol's error codes (the server's own message follows). */
const ERROR_TEXT = {
  invalid_request: "The server did not understand a request from this page.",
  not_started: "No session is running.",
  already_started: "A session is already running on this connection.",
  unknown_backend: "The server does not offer that engine.",
  backend_unavailable: "That engine is not available right now.",
  unsupported_language: "The model cannot transcribe that language.",
  unsupported_task: "The model cannot translate. Choose Transcribe.",
  unsupported_model: "The server runs a different model.",
  invalid_sample_rate: "The server refused the audio format.",
  invalid_encoding: "The server refused the audio format.",
  invalid_audio: "The server rejected a piece of audio; it was left out of the transcript.",
  payload_too_large: "A piece of audio was too large for the server; it was left out of the transcript.",
  server_busy: "The server is busy with other sessions. Try again in a minute.",
  backend_error: "Part of the audio could not be transcribed.",
  internal_error: "The server hit an internal error.",
  disconnected: "The connection to the server was lost.",
  not_resumable: "The server no longer has the session.",
  audio_lost: "Some audio recorded while the connection was down could not be transcribed.",
};

function plainError(err) {
  const code = err.code || "";
  const lead = ERROR_TEXT[code] || (code.startsWith("cloud_") ? "The cloud transcription service reported a problem." : "Something went wrong.");
  return { lead, detail: err.message && err.message !== lead ? err.message : "", code };
}

const params = new URLSearchParams(location.search);
const watchRoom = params.get("room");
const mode = watchRoom ? "watch" : "own";

const transcript = new Transcript();
const latency = new LatencyTracker();
let client = null;
let mic = null;
let runState = "idle"; // idle | starting | running | stopping
let session = null; // `ready` payload of our running session
let sentSeconds = 0; // audio sent in our running session (its duration if it is lost)
let closingByServer = false; // resumed after our session had ended: its `stopped` is due
let endedByServer = null; // session_id of ours ended by a fatal error: its `stopped` is still due
const ignoredSessions = new Set(); // sessions the page gave up on (a `ready` after the timeout)
// Muted: the microphone stays open but nothing is sent; the server finalises the words said
// before the gap once it has heard nothing for its --idle-final (1 s), and the session goes on.
let muted = false;
let pendingChunks = []; // chunks captured between the microphone opening and `ready`
let captureClock = null; // the audio clock where the capture's first chunk began (test hook)
let timerStartedAt = null;
let timerHandle = null;
let stickToBottom = true;
let languageNames = null;

try {
  languageNames = new Intl.DisplayNames([navigator.language || "en"], { type: "language" });
} catch {
  languageNames = null;
}

function languageLabel(code) {
  if (!code || code === "auto") return "Auto-detect";
  let name = code;
  try {
    name = (languageNames && languageNames.of(code)) || code;
  } catch {
    /* not a BCP 47 code the browser knows */
  }
  return name === code ? code : `${name} (${code})`;
}

function backendLabel(name) {
  if (name === "local") return "Local";
  if (name === "cloud") return "Cloud";
  return name || "—";
}

function formatMs(ms) {
  if (ms == null || !Number.isFinite(ms)) return "—";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function announce(text) {
  el.announce.textContent = "";
  // A fresh text node each time so repeated messages are read again.
  requestAnimationFrame(() => {
    el.announce.textContent = text;
  });
}

// --- alerts -------------------------------------------------------------------------------

function showAlert(lead, { detail = "", code = "", kind = "error", key = null } = {}) {
  if (key) for (const old of el.alerts.querySelectorAll(`[data-key="${key}"]`)) old.remove();
  const box = document.createElement("div");
  box.className = "alert";
  box.dataset.kind = kind;
  if (code) box.dataset.code = code;
  if (key) box.dataset.key = key;
  const text = document.createElement("div");
  text.className = "alert-text";
  text.textContent = detail ? `${lead} ${detail}` : lead;
  if (code) {
    const small = document.createElement("span");
    small.className = "alert-code";
    small.textContent = code;
    text.append(small);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "alert-close";
  close.setAttribute("aria-label", "Dismiss");
  close.textContent = "×";
  close.addEventListener("click", () => box.remove());
  box.append(text, close);
  el.alerts.append(box);
  // Keep the list short: the newest five.
  while (el.alerts.children.length > 5) el.alerts.firstElementChild.remove();
  return box;
}

function dismissAlerts(key) {
  for (const old of el.alerts.querySelectorAll(`[data-key="${key}"]`)) old.remove();
}

function showServerError(err) {
  const { lead, detail, code } = plainError(err);
  showAlert(lead, { detail, code });
}

// --- connection ---------------------------------------------------------------------------

const CONNECTION_TEXT = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  disconnected: "Disconnected",
};

function renderConnection(state) {
  el.conn.dataset.state = state;
  el.connState.textContent = CONNECTION_TEXT[state] || state;
  if (state !== "connected") el.connRtt.textContent = "";
  if (state === "connected") dismissAlerts("connection");
  else if (state === "reconnecting") {
    // The server keeps a session whose connection dropped, and the client keeps its audio.
    const kept = client && client.resuming ? " The session goes on: what you say meanwhile is sent once it is back." : "";
    showAlert(`The connection to the server was interrupted. Reconnecting…${kept}`, { kind: "info", key: "connection" });
  } else if (state === "disconnected") {
    showAlert("Disconnected from the server. Reload the page to try again.", { key: "connection" });
  }
  updateControls();
  if (mode === "own" && runState === "idle") {
    el.sessionState.textContent = state === "connected" ? "Ready. Press Start to transcribe your microphone." : CONNECTION_TEXT[state];
  }
}

async function measureRtt() {
  if (!client || !client.connected) return;
  try {
    const { rtt } = await client.ping();
    el.connRtt.textContent = `${Math.round(rtt)} ms`;
    el.connRtt.title = "Round trip to the server";
  } catch {
    el.connRtt.textContent = "";
  }
}

// --- backend / language / task options ----------------------------------------------------

function backendInfo(name) {
  const info = client && client.serverInfo;
  return (info && info.backends && info.backends[name]) || null;
}

function selectedBackend() {
  return el.backendCloud.checked ? "cloud" : "local";
}

function renderServerInfo(info) {
  if (info && info.protocol !== undefined && info.protocol !== 1) {
    showAlert(`This page speaks protocol 1 but the server speaks protocol ${info.protocol}. Some features may not work.`, {
      key: "protocol",
    });
  }
  const radios = { local: el.backendLocal, cloud: el.backendCloud };
  const reasons = [];
  for (const [name, radio] of Object.entries(radios)) {
    const b = backendInfo(name);
    const available = Boolean(b && b.available);
    radio.dataset.available = String(available);
    const label = document.querySelector(`label[for="${radio.id}"]`);
    if (!available) {
      const why = (b && b.reason) || "not offered by this server";
      label.title = `${backendLabel(name)} is unavailable: ${why}`;
      reasons.push(`${backendLabel(name)} unavailable: ${why}.`);
    } else {
      label.title = b.model ? `${backendLabel(name)}: ${b.model}` : backendLabel(name);
    }
  }
  el.backendHint.textContent = reasons.join(" ");
  el.backendHint.hidden = reasons.length === 0;
  // Keep the user's choice when it still works, else the server's default, else anything available.
  if (radios[selectedBackend()].dataset.available !== "true") {
    const preferred = [info.default_backend, "local", "cloud"].find((n) => radios[n] && radios[n].dataset.available === "true");
    if (preferred) radios[preferred].checked = true;
  }
  renderLanguageAndTask();
  updateControls();
}

function renderLanguageAndTask() {
  const b = backendInfo(selectedBackend());
  const info = client && client.serverInfo;
  const languages = (b && b.languages) || [];
  const englishOnly = b && b.multilingual === false;
  const previous = el.language.value;
  el.language.replaceChildren();
  const codes = englishOnly ? (languages.length ? languages : ["en"]) : ["auto", ...languages.filter((c) => c !== "auto")];
  const entries = codes.map((code) => [code, languageLabel(code)]);
  // Auto first, then alphabetical by name: a 99-language list is unusable in code order.
  const [head, rest] = codes[0] === "auto" ? [entries.slice(0, 1), entries.slice(1)] : [[], entries];
  rest.sort((a, b2) => a[1].localeCompare(b2[1]));
  for (const [code, label] of [...head, ...rest]) el.language.add(new Option(label, code));
  const fallback = info && info.default_language;
  el.language.value = codes.includes(previous) ? previous : codes.includes(fallback) ? fallback : codes[0];
  el.language.dataset.single = String(codes.length <= 1);
  if (englishOnly) {
    el.languageHint.textContent = `${b.model || "This model"} is an English-only model.`;
    el.languageHint.hidden = false;
  } else {
    el.languageHint.hidden = true;
  }

  const tasks = (b && b.tasks && b.tasks.length ? b.tasks : ["transcribe"]).filter((t) => t === "transcribe" || t === "translate");
  const previousTask = el.task.value;
  el.task.replaceChildren();
  for (const t of tasks) el.task.add(new Option(t === "translate" ? "Translate to English" : "Transcribe", t));
  el.task.value = tasks.includes(previousTask) ? previousTask : tasks[0];
  el.task.dataset.single = String(tasks.length <= 1);
}

function updateControls() {
  const connected = Boolean(client && client.connected);
  const idle = runState === "idle";
  for (const radio of [el.backendLocal, el.backendCloud]) {
    radio.disabled = !idle || radio.dataset.available !== "true";
  }
  el.language.disabled = !idle || el.language.dataset.single === "true";
  el.task.disabled = !idle || el.task.dataset.single === "true";
  const canStart = connected && idle && backendInfo(selectedBackend())?.available === true;
  el.startBtn.disabled = !canStart;
  el.startBtn.hidden = runState === "running" || runState === "stopping";
  el.stopBtn.hidden = !el.startBtn.hidden;
  el.stopBtn.disabled = runState === "stopping";
  el.startBtn.lastChild.textContent = runState === "starting" ? " Starting…" : " Start";
  el.stopBtn.lastChild.textContent = runState === "stopping" ? " Finishing…" : " Stop";
  el.muteBtn.hidden = runState !== "running";
  // The label says what a press does (no aria-pressed as well: "Unmute, pressed" reads badly).
  el.muteBtn.textContent = muted ? "Unmute" : "Mute";
  el.muteBtn.classList.toggle("is-muted", muted);
  document.body.classList.toggle("is-running", runState === "running");
  const empty = transcript.isEmpty;
  el.copyBtn.disabled = empty;
  el.downloadTxt.disabled = empty;
  el.downloadSrt.disabled = empty;
  el.downloadVtt.disabled = empty;
  el.clearBtn.disabled = empty && !transcript.partial;
}

// --- status -------------------------------------------------------------------------------

function renderSessionStatus(s) {
  el.statusBackend.replaceChildren();
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = backendLabel(s.backend);
  el.statusBackend.append(badge);
  const device = [s.device_name || s.device, s.compute_type].filter(Boolean).join(" · ");
  el.statusDevice.textContent = device || "—";
  el.statusModel.textContent = s.model || "—";
  el.statusLanguage.textContent = s.language === "auto" ? "Auto-detect (listening…)" : languageLabel(s.language);
}

function startTimer() {
  timerStartedAt = performance.now();
  clearInterval(timerHandle);
  const tick = () => {
    el.timer.textContent = formatClock((performance.now() - timerStartedAt) / 1000);
    el.statusAudio.textContent = `${latency.audioSeconds.toFixed(1)} s`;
  };
  tick();
  timerHandle = setInterval(tick, 250);
}

function stopTimer() {
  clearInterval(timerHandle);
  timerHandle = null;
  el.statusAudio.textContent = `${latency.audioSeconds.toFixed(1)} s`;
}

function renderLevel(rms, peak) {
  // dBFS mapped to 0..100 over a 60 dB range: speech sits in the upper half.
  const db = rms > 0 ? 20 * Math.log10(rms) : -100;
  const value = Math.max(0, Math.min(100, Math.round(((db + 60) / 60) * 100)));
  el.levelFill.style.width = `${value}%`;
  el.levelFill.style.backgroundSize = `${el.level.clientWidth || 200}px 100%`;
  el.level.setAttribute("aria-valuenow", String(value));
  el.level.dataset.clip = String(peak >= 0.99);
}

// --- transcript rendering -----------------------------------------------------------------

function isAtBottom() {
  const t = el.transcript;
  return t.scrollHeight - t.scrollTop - t.clientHeight < 32;
}

function afterTranscriptChange() {
  el.empty.hidden = !transcript.isEmpty || Boolean(transcript.partial);
  if (stickToBottom) el.transcript.scrollTop = el.transcript.scrollHeight;
  else el.jumpBtn.hidden = false;
  updateControls();
}

function timeElement(seconds) {
  const t = document.createElement("time");
  t.dateTime = `PT${seconds.toFixed(3)}S`;
  t.textContent = formatClock(seconds);
  t.title = formatTimestamp(seconds, ".");
  return t;
}

/** Show a final: a new caption row, or appended to the current one (see Transcript.addFinal). */
function renderFinal({ segment, line, newLine }) {
  if (!line) return;
  const span = document.createElement("span");
  span.className = "final-text is-new";
  span.dataset.segmentId = String(segment.segmentId);
  span.dataset.start = segment.start.toFixed(3);
  span.dataset.end = segment.end.toFixed(3);
  if (segment.joinsPrevious) span.dataset.joinsPrevious = "true";
  span.textContent = segment.text;
  let row = el.finals.lastElementChild;
  if (newLine || !row) {
    row = document.createElement("li");
    row.className = "line";
    const text = document.createElement("p");
    text.className = "line-text";
    row.append(timeElement(line.start), text);
    el.finals.append(row);
  }
  const text = row.querySelector(".line-text");
  if (text.childNodes.length && !segment.joinsPrevious) text.append(" ");
  text.append(span);
  setTimeout(() => span.classList.remove("is-new"), 700);
}

function renderPartial(partial) {
  if (!partial) {
    el.partial.hidden = true;
    el.partial.replaceChildren();
    return;
  }
  const text = document.createElement("span");
  text.className = "partial-text";
  text.textContent = partial.text;
  const time = timeElement(partial.start);
  time.className = "partial-time";
  el.partial.replaceChildren(time, text);
  el.partial.hidden = false;
}

function onPartial(payload) {
  if (!isOurs(payload)) return;
  renderPartial(transcript.setPartial(payload));
  if (mode === "own") observeLatency(payload.end);
  else markWatchLive();
  afterTranscriptChange();
}

function onFinal(payload) {
  if (!isOurs(payload)) return;
  renderFinal(transcript.addFinal(payload));
  if (mode === "own") observeLatency(payload.end);
  else markWatchLive();
  afterTranscriptChange();
}

/** In our own mode only our session's events count (a stale session's late events do not). */
function isOurs(payload) {
  if (mode === "watch") return true;
  if (payload && ignoredSessions.has(payload.session_id)) return false;
  return Boolean(payload && (!session || payload.session_id === session.session_id || runState === "idle"));
}

function observeLatency(end) {
  const ms = latency.observe(Number(end));
  if (ms == null) return;
  el.statusLatency.textContent = formatMs(ms);
  el.statusLatency.title = `Time from sending audio to receiving text that covers it. Median of the last ${latency.recent.length}: ${formatMs(latency.median)}`;
}

// --- own session ----------------------------------------------------------------------------

function onChunk(msg) {
  if (captureClock === null && mic && mic.context) captureClock = mic.context.currentTime - msg.samples / TARGET_RATE;
  if (muted) {
    renderLevel(0, 0);
    return; // not sent, not counted: session times are those of the audio sent
  }
  renderLevel(msg.rms, msg.peak);
  if (runState === "starting") pendingChunks.push(msg);
  else if ((runState === "running" || runState === "stopping") && session) sendChunk(msg);
}

function sendChunk(msg) {
  const seconds = msg.samples / TARGET_RATE;
  client.sendAudio(msg.pcm);
  sentSeconds += seconds;
  latency.sent(seconds);
}

function toggleMute() {
  if (runState !== "running") return;
  muted = !muted;
  if (muted) renderLevel(0, 0);
  const idle = Number(client && client.serverInfo && client.serverInfo.idle_final);
  const finalised = idle > 0 ? `finalised in about ${idle} s` : "finalised when you unmute or stop";
  el.sessionState.textContent = muted
    ? `Muted: nothing is sent. What you said before is ${finalised}.`
    : `Listening. Captions are live (${backendLabel(session.backend)} engine).`;
  updateControls();
  announce(muted ? "Microphone muted" : "Microphone on");
}

async function startSession() {
  if (runState !== "idle") return;
  runState = "starting";
  muted = false;
  pendingChunks = [];
  latency.reset();
  dismissAlerts("session");
  dismissAlerts("resumed");
  el.statusLatency.textContent = "—";
  el.sessionState.textContent = "Opening the microphone…";
  updateControls();

  captureClock = null;
  mic = new MicCapture({ onChunk, onEnded: onMicEnded, targetRate: TARGET_RATE });
  try {
    await mic.start();
  } catch (err) {
    mic = null;
    runState = "idle";
    const message = err instanceof MicError ? err.message : `The microphone could not be started (${err.message || err}).`;
    showAlert(message, { code: "microphone", key: "session" });
    el.sessionState.textContent = "The microphone is not available.";
    updateControls();
    return;
  }

  el.sessionState.textContent = "Starting the session…";
  const options = { backend: selectedBackend(), language: el.language.value, task: el.task.value, sample_rate: TARGET_RATE, encoding: "pcm_s16le" };
  let timeout = null;
  try {
    const ready = await Promise.race([
      client.start(options),
      new Promise((_, reject) => {
        timeout = setTimeout(() => reject(new ServerError({ code: "timeout", message: "The server did not answer the start request." })), START_TIMEOUT_MS);
      }),
    ]);
    clearTimeout(timeout);
    onReady(ready);
  } catch (err) {
    clearTimeout(timeout);
    await abandonCapture();
    if (err instanceof ServerError && err.code === "timeout") showAlert(err.message, { code: "timeout", key: "session" });
    // Server errors are shown by the `error` listener already.
    el.sessionState.textContent = "The session could not be started.";
  }
}

function onReady(ready) {
  session = ready;
  sentSeconds = 0;
  runState = "running";
  renderSessionStatus(ready);
  const url = new URL(location.href);
  url.search = `?room=${encodeURIComponent(ready.room)}`;
  url.hash = "";
  el.watchLink.value = url.toString();
  el.share.hidden = false;
  el.sessionState.textContent = `Listening. Captions are live (${backendLabel(ready.backend)} engine).`;
  document.body.dataset.room = ready.room;
  startTimer();
  const queued = pendingChunks;
  pendingChunks = [];
  for (const chunk of queued) sendChunk(chunk);
  updateControls();
  announce("Recording started");
}

async function stopSession() {
  if (runState !== "running") return;
  runState = "stopping";
  el.sessionState.textContent = "Finishing the last captions…";
  updateControls();
  if (mic) await mic.stop(); // the last short chunk goes out before `stop`
  mic = null;
  renderLevel(0, 0);
  stopTimer();
  try {
    const stopped = await client.stop();
    if (stopped) onOwnStopped(stopped);
  } catch (err) {
    if (err instanceof ServerError && err.code !== "disconnected") showServerError(err);
  }
  runState = "idle";
  session = null;
  updateControls();
}

function onOwnStopped(stopped) {
  dismissAlerts("resumed");
  endShownSession(stopped.session_id, Number(stopped.duration));
  el.sessionState.textContent = `Session ended after ${formatClock(Number(stopped.duration) || 0)} of audio.`;
  announce("Recording stopped");
}

/** A session shown here is over: its partial goes, and the next one starts after its audio. */
function endShownSession(sessionId, duration) {
  transcript.endSession(sessionId, duration);
  renderPartial(null);
  afterTranscriptChange();
}

/** Drop a capture that never became (or no longer is) a server session. */
async function abandonCapture() {
  dismissAlerts("resumed");
  closingByServer = false;
  const m = mic;
  mic = null;
  pendingChunks = [];
  runState = "idle";
  session = null;
  if (m) await m.stop().catch(() => {});
  renderLevel(0, 0);
  stopTimer();
  updateControls();
}

function onMicEnded() {
  if (runState !== "running") return;
  showAlert("The microphone stopped (it was unplugged or its permission was revoked). The session was ended.", {
    code: "microphone",
    key: "session",
  });
  stopSession();
}

// --- watch mode ---------------------------------------------------------------------------

let watchLive = false;

function markWatchLive() {
  if (watchLive) return;
  watchLive = true;
  el.watchState.textContent = "Live: captions arrive as the speaker talks.";
}

/** Status for a watched room: `joined.sessions` names backend and language; the device and
 * model are the server's for that backend (one model per backend, see server_info). */
function describeWatchSessions(sessions) {
  if (!Array.isArray(sessions) || sessions.length === 0) return;
  const s = sessions[sessions.length - 1];
  if (!s || typeof s !== "object") return;
  const info = backendInfo(s.backend) || {};
  renderSessionStatus({
    model: info.model,
    device: info.device,
    device_name: info.device_name,
    compute_type: info.compute_type,
    language: "auto",
    ...s,
  });
}

async function joinWatchedRoom() {
  el.watchState.textContent = "Joining…";
  const joined = await client.join(watchRoom);
  const sessions = Array.isArray(joined.sessions) ? joined.sessions : [];
  watchLive = false;
  // A session that ended while the connection was down sent its `stopped` to nobody here:
  // its words-in-progress must not stay on screen.
  const shown = transcript.partial;
  const live = sessions.map((s) => (typeof s === "string" ? s : s && s.session_id));
  if (shown && !live.includes(shown.sessionId)) endShownSession(shown.sessionId, NaN);
  if (sessions.length) markWatchLive();
  else el.watchState.textContent = "Waiting for a session in this room to start…";
  describeWatchSessions(sessions);
}

// --- transcript actions -------------------------------------------------------------------

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Plain http on a LAN address has no Clipboard API: fall back to a selection copy.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
    area.remove();
    return ok;
  }
}

async function flashButton(button, ok, okText) {
  const original = button.textContent;
  button.textContent = ok ? okText : "Copy failed";
  announce(button.textContent);
  setTimeout(() => {
    button.textContent = original;
  }, 1500);
}

function download(extension, text, type) {
  const stamp = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  const name = `livescribe-${stamp.getFullYear()}${pad(stamp.getMonth() + 1)}${pad(stamp.getDate())}-${pad(stamp.getHours())}${pad(stamp.getMinutes())}.${extension}`;
  const url = URL.createObjectURL(new Blob([text], { type: `${type};charset=utf-8` }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function clearTranscript() {
  transcript.clear();
  el.finals.replaceChildren();
  renderPartial(null);
  stickToBottom = true;
  el.jumpBtn.hidden = true;
  afterTranscriptChange();
  announce("Transcript cleared");
}

// --- wiring -------------------------------------------------------------------------------

function wireDom() {
  el.startBtn.addEventListener("click", startSession);
  el.stopBtn.addEventListener("click", stopSession);
  el.muteBtn.addEventListener("click", toggleMute);
  for (const radio of [el.backendLocal, el.backendCloud]) {
    radio.addEventListener("change", () => {
      renderLanguageAndTask();
      updateControls();
    });
  }
  el.copyBtn.addEventListener("click", async () => flashButton(el.copyBtn, await copyText(transcript.toPlainText()), "Copied"));
  el.copyLinkBtn.addEventListener("click", async () => flashButton(el.copyLinkBtn, await copyText(el.watchLink.value), "Copied"));
  el.downloadTxt.addEventListener("click", () => download("txt", transcript.toText(), "text/plain"));
  el.downloadSrt.addEventListener("click", () => download("srt", transcript.toSRT(), "application/x-subrip"));
  el.downloadVtt.addEventListener("click", () => download("vtt", transcript.toVTT(), "text/vtt"));
  el.clearBtn.addEventListener("click", clearTranscript);
  el.transcript.addEventListener("scroll", () => {
    stickToBottom = isAtBottom();
    if (stickToBottom) el.jumpBtn.hidden = true;
  }, { passive: true });
  el.jumpBtn.addEventListener("click", () => {
    stickToBottom = true;
    el.jumpBtn.hidden = true;
    el.transcript.scrollTop = el.transcript.scrollHeight;
    el.transcript.focus();
  });
  el.watchLink.addEventListener("focus", () => el.watchLink.select());
}

function wireClient() {
  client.on("connection", (state) => {
    renderConnection(state);
    if (state === "connected") {
      measureRtt();
      if (mode === "watch") joinWatchedRoom();
    }
  });
  client.on("server_info", renderServerInfo);
  client.on("partial", onPartial);
  client.on("final", onFinal);
  client.on("language", (p) => {
    if (!isOurs(p)) return;
    const pct = Number.isFinite(p.probability) ? ` · ${Math.round(p.probability * 100)}%` : "";
    el.statusLanguage.textContent = `${languageLabel(p.language)}${pct}`;
  });
  client.on("backend_changed", (p) => {
    if (!isOurs(p)) return;
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = backendLabel(p.to);
    el.statusBackend.replaceChildren(badge);
    const at = Number.isFinite(p.at) ? ` at ${formatClock(p.at)}` : "";
    showAlert(`Switched from the ${backendLabel(p.from)} engine to the ${backendLabel(p.to)} engine${at}.`, {
      detail: p.reason ? `Reason: ${p.reason}` : "",
      kind: "info",
    });
    const info = backendInfo(p.to);
    if (info) {
      const device = [info.device_name || info.device, info.compute_type].filter(Boolean).join(" · ");
      el.statusDevice.textContent = device || "—";
      el.statusModel.textContent = info.model || "—";
    }
  });
  client.on("ready", (p) => {
    // A `ready` for a start the page gave up on (it timed out): that session would run on,
    // hold a server slot and refuse every later start on this connection. End it unseen.
    if (mode === "own" && runState === "idle" && p && p.session_id) {
      ignoredSessions.add(p.session_id);
      client.stop().catch(() => {});
    }
  });
  client.on("stopped", (p) => {
    const ownRunning = runState === "running" || closingByServer;
    if (mode === "own" && ownRunning && session && p && p.session_id === session.session_id) {
      // Ended by the server, not by us: not resumed in time after a dropped connection.
      closingByServer = false;
      onOwnStopped(p);
      abandonCapture();
      return;
    }
    if (mode === "own" && p && p.session_id === endedByServer) {
      // Ours, ended by a fatal error: later sessions start after its audio.
      endedByServer = null;
      endShownSession(p.session_id, Number(p.duration));
    }
    if (mode === "watch") {
      endShownSession(p.session_id, Number(p.duration));
      watchLive = false;
      el.watchState.textContent = "The session ended. Waiting for another one in this room…";
    }
  });
  client.on("error", (err) => {
    showServerError(err);
    if (err.fatal && mode === "own" && (runState === "running" || runState === "stopping")) {
      el.sessionState.textContent = "The session was ended by an error.";
      if (session) {
        endedByServer = session.session_id;
        endShownSession(session.session_id, sentSeconds); // its `stopped` corrects the duration
      }
      abandonCapture();
    }
  });
  client.on("resumed", (p) => {
    if (mode !== "own" || !session || !p || p.session_id !== session.session_id) return;
    if (p.state === "running") {
      showAlert("Reconnected: the session goes on, and what you said meanwhile is being transcribed.", {
        kind: "info",
        key: "resumed",
      });
    } else if (runState === "running") {
      // It ended while we were away (not resumed in time): its last captions and `stopped`
      // follow; the microphone has nothing to send to.
      closingByServer = true;
      runState = "stopping";
      el.sessionState.textContent = "Reconnected after the session ended; showing its last captions…";
      const m = mic;
      mic = null;
      if (m) m.stop().catch(() => {});
      stopTimer();
      updateControls();
    }
  });
  client.on("session_lost", () => {
    if (mode !== "own") return;
    showAlert("The connection dropped, so the server ended the session. Press Start to begin a new one once reconnected.", {
      code: "disconnected",
      key: "session",
    });
    el.sessionState.textContent = "Session lost with the connection.";
    if (session) endShownSession(session.session_id, sentSeconds);
    abandonCapture();
    // The reconnecting notice no longer promises that the session goes on.
    if (client.connection === "reconnecting") renderConnection("reconnecting");
  });
}

// --- test hook (off by default) -------------------------------------------------------------
// `?autostart=1` presses Start once the server's settings arrive; `&autostop=S` then presses
// Stop S seconds after `ready`. For browsers tested without a WebDriver (tests/test_firefox.py
// runs Firefox this way); the capture rate and any uncaught error go to the console, which
// such a test reads from the browser's stdout.
function wireTestHook() {
  if (params.get("autostart") !== "1") return;
  window.addEventListener("error", (e) => console.error(`livescribe autostart: uncaught ${e.message}`));
  window.addEventListener("unhandledrejection", (e) => console.error(`livescribe autostart: unhandled ${e.reason}`));
  const stopAfter = Number(params.get("autostop"));
  let pressed = false;
  client.on("server_info", () => {
    if (pressed || el.startBtn.disabled) return;
    pressed = true;
    startSession();
  });
  client.on("ready", () => {
    console.info(`livescribe autostart: capturing at ${mic ? mic.contextRate : "unknown"} Hz`);
    if (stopAfter > 0) setTimeout(autostop, stopAfter * 1000);
  });
  // What the page sent and how far the audio clock ran while capturing: a test compares them
  // with what the server received (a starved CPU slows the audio clock, and the capture).
  async function autostop() {
    const clock = mic && mic.context && captureClock !== null ? mic.context.currentTime - captureClock : NaN;
    await stopSession();
    console.info(`livescribe autostart: sent ${latency.audioSeconds.toFixed(4)} s of audio; audio clock ${clock.toFixed(4)} s`);
  }
}

function init() {
  if (mode === "watch") {
    el.sessionCard.hidden = true;
    el.watchCard.hidden = false;
    el.watchRoom.textContent = watchRoom;
    el.modeLabel.textContent = "Watching live captions";
    el.empty.textContent = "Captions from the watched session appear here.";
    document.title = `Watching ${watchRoom} · livescribe`;
    for (const id of ["status-latency", "status-audio"]) $(id).parentElement.hidden = true;
  }
  wireDom();
  if (typeof window.io !== "function") {
    renderConnection("disconnected");
    showAlert("The Socket.IO client script did not load, so the page cannot reach the server.", { code: "client_load_failed" });
    return;
  }
  client = new LivescribeClient({ io: window.io });
  wireClient();
  // Closing or leaving the page is a goodbye, not a dropped network: say so, and the server
  // ends the session at once instead of keeping it for a resume that cannot come.
  window.addEventListener("pagehide", (e) => {
    if (!e.persisted && client.session) client.close();
  });
  if (mode === "own") wireTestHook();
  renderConnection(client.connection);
  setInterval(measureRtt, 5000);
  updateControls();
}

// For debugging and for tests: a read-only view of the page's state.
window.livescribe = {
  get mode() {
    return mode;
  },
  get state() {
    return runState;
  },
  get connection() {
    return client ? client.connection : "disconnected";
  },
  get session() {
    return session;
  },
  get muted() {
    return muted;
  },
  get audioSecondsSent() {
    return latency.audioSeconds;
  },
  get contextSampleRate() {
    return mic ? mic.contextRate : null;
  },
  get latencyMs() {
    return latency.last;
  },
  transcript,
};

init();
