/**
 * The transcript as data: committed segments and the current partial, with exports to plain
 * text, SubRip (.srt) and WebVTT (.vtt). No DOM here.
 *
 * Times in protocol events are seconds of *session* audio (0 = the session's first sample).
 * A page can show several sessions one after another (stop, start again; or a watched room
 * whose speaker restarts), so each session gets an offset: where the previous one ended on the
 * transcript's own timeline. Exports use that timeline, so cues never run backwards.
 *
 * Finals often commit a few words at a time, which reads choppy one per line; they are grouped
 * into caption lines (a sentence, or up to a pause / LINE_MAX_CHARS / LINE_MAX_SECONDS), which
 * the page shows one per row and the subtitle exports use as cues.
 */

/** Subtitle-friendly limits for one caption line (two 42-character rows, 7 seconds). */
export const LINE_MAX_CHARS = 84;
export const LINE_MAX_SECONDS = 7;
/** A pause longer than this starts a new line. */
export const LINE_BREAK_PAUSE = 1.0;
/** Seconds a subtitle cue stays up at least (as server/subtitles.py). */
export const MIN_CUE_SECONDS = 0.8;
const SENTENCE_END = /[.!?\u2026\u3002\uff1f\uff01]["')\]\u201d]*$/;

/** Format seconds as HH:MM:SS<sep>mmm (SRT uses ",", VTT uses "."). */
export function formatTimestamp(seconds, sep = ",") {
  const totalMs = Math.max(0, Math.round(seconds * 1000));
  const ms = totalMs % 1000;
  const totalS = Math.floor(totalMs / 1000);
  const s = totalS % 60;
  const m = Math.floor(totalS / 60) % 60;
  const h = Math.floor(totalS / 3600);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(h)}:${pad(m)}:${pad(s)}${sep}${pad(ms, 3)}`;
}

/** Short clock for the page: M:SS, or H:MM:SS past an hour. */
export function formatClock(seconds) {
  const total = Math.max(0, Math.floor(seconds));
  const s = total % 60;
  const m = Math.floor(total / 60) % 60;
  const h = Math.floor(total / 3600);
  const pad = (n) => String(n).padStart(2, "0");
  return h > 0 ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
}

/** Cue text must stay on one line and must not contain the "-->" arrow. */
function cueText(text) {
  return text.replace(/\s*\n+\s*/g, " ").replace(/-->/g, "->").trim();
}

export class Transcript {
  constructor() {
    this.clear();
  }

  /** Forget everything (segments, partial and session offsets). */
  clear() {
    /** @type {{sessionId: string, segmentId: number, text: string, joinsPrevious: boolean, start: number, end: number}[]} */
    this.segments = [];
    /** @type {{start: number, end: number, sessionId: string, segments: object[], text: string}[]} */
    this.lines = [];
    this.partial = null;
    this.offsets = new Map(); // session_id -> offset on the transcript timeline
    this.timelineEnd = 0; // where the next new session starts
  }

  /** Offset of a session on the transcript timeline (assigned the first time it is seen). */
  offsetFor(sessionId) {
    if (!this.offsets.has(sessionId)) this.offsets.set(sessionId, this.timelineEnd);
    return this.offsets.get(sessionId);
  }

  /**
   * Append a `final` payload. Returns {segment, line, newLine}: the stored segment (times on
   * the transcript timeline) and the caption line it joined (newLine: it started that line).
   * Empty finals are stored but join no line (line: null).
   */
  addFinal(payload) {
    const offset = this.offsetFor(payload.session_id);
    const segment = {
      sessionId: payload.session_id,
      segmentId: payload.segment_id,
      text: (payload.text || "").replace(/\s+/g, " ").trim(),
      // The text goes on with the previous final's last word ("touch" + "tone"): no space.
      joinsPrevious: Boolean(payload.joins_previous),
      start: offset + Number(payload.start || 0),
      end: offset + Number(payload.end || 0),
    };
    this.segments.push(segment);
    this.timelineEnd = Math.max(this.timelineEnd, segment.end);
    if (!segment.text) return { segment, line: null, newLine: false };
    const last = this.lines[this.lines.length - 1];
    if (last && continuesLine(last, segment)) {
      last.segments.push(segment);
      last.text = segment.joinsPrevious ? last.text + segment.text : `${last.text} ${segment.text}`;
      last.end = Math.max(last.end, segment.end);
      return { segment, line: last, newLine: false };
    }
    const line = { sessionId: segment.sessionId, start: segment.start, end: segment.end, segments: [segment], text: segment.text };
    this.lines.push(line);
    return { segment, line, newLine: true };
  }

  /** Replace the partial with a `partial` payload; empty text clears it. Returns it or null. */
  setPartial(payload) {
    const text = (payload.text || "").trim();
    if (!text) {
      this.partial = null;
      return null;
    }
    const offset = this.offsetFor(payload.session_id);
    this.partial = {
      sessionId: payload.session_id,
      text,
      start: offset + Number(payload.start || 0),
      end: offset + Number(payload.end || 0),
    };
    return this.partial;
  }

  /** A session ended after `duration` seconds: later sessions start after it. */
  endSession(sessionId, duration) {
    const offset = this.offsetFor(sessionId);
    if (this.partial && this.partial.sessionId === sessionId) this.partial = null;
    if (Number.isFinite(duration)) this.timelineEnd = Math.max(this.timelineEnd, offset + duration);
  }

  get isEmpty() {
    return this.lines.length === 0;
  }

  /** Plain text: one caption line per row, without times (for the clipboard). */
  toPlainText() {
    return this.lines.map((l) => l.text).join("\n");
  }

  /** A .txt file: one caption line per row, each with its start time. */
  toText() {
    const rows = this.lines.map((l) => `[${formatTimestamp(l.start, ".")}] ${l.text}`);
    return rows.length ? rows.join("\n") + "\n" : "";
  }

  /** Cues for subtitle files: one per caption line, end strictly after start, and on screen
   * MIN_CUE_SECONDS unless the next line starts sooner (a one-word line's words can end
   * where they start, and a 1 ms cue is never seen). */
  _cues() {
    return this.lines.map((l, k) => {
      const next = k + 1 < this.lines.length ? this.lines[k + 1].start : Infinity;
      const end = Math.max(l.end, l.start + 0.001, Math.min(l.start + MIN_CUE_SECONDS, next));
      return { start: l.start, end, text: cueText(l.text) };
    });
  }

  /** SubRip: numbered from 1, "HH:MM:SS,mmm --> HH:MM:SS,mmm", a blank line between cues. */
  toSRT() {
    return this._cues()
      .map((c, k) => `${k + 1}\n${formatTimestamp(c.start, ",")} --> ${formatTimestamp(c.end, ",")}\n${c.text}\n`)
      .join("\n");
  }

  /** WebVTT: the WEBVTT header, then cues with "." before the milliseconds. */
  toVTT() {
    // Cue text is HTML-like: "R&D <team>" must be escaped or a player reads markup in it.
    const escape = (text) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
    const cues = this._cues().map(
      (c) => `${formatTimestamp(c.start, ".")} --> ${formatTimestamp(c.end, ".")}\n${escape(c.text)}\n`,
    );
    return ["WEBVTT\n", ...cues].join("\n");
  }
}

/** Whether a final continues the current caption line rather than starting a new one. */
function continuesLine(line, segment) {
  // The rest of a word stays with it, whatever the line's length.
  if (segment.joinsPrevious && segment.sessionId === line.sessionId) return true;
  return (
    segment.sessionId === line.sessionId &&
    !SENTENCE_END.test(line.text) &&
    segment.start - line.end <= LINE_BREAK_PAUSE &&
    line.text.length + 1 + segment.text.length <= LINE_MAX_CHARS &&
    segment.end - line.start <= LINE_MAX_SECONDS
  );
}
