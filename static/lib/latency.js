/**
 * Live latency: how long after a piece of audio left this page did text covering it arrive.
 *
 * Every chunk sent is recorded as (session-audio time at its end, wall time it was sent).
 * When a partial or final ending at session time t arrives, latency = now - the send time of
 * the first chunk that reaches t.
 */
export class LatencyTracker {
  constructor(keepSeconds = 120) {
    this.keepSeconds = keepSeconds;
    this.reset();
  }

  reset() {
    this.marks = []; // [{end: session seconds, sentAt: performance.now()}], end increasing
    this.audioSeconds = 0;
    this.last = null;
    this.recent = [];
  }

  /** A chunk of `seconds` of audio was just sent. */
  sent(seconds, now = performance.now()) {
    this.audioSeconds += seconds;
    this.marks.push({ end: this.audioSeconds, sentAt: now });
    // Forget marks older than the window: text about them is long committed.
    const horizon = this.audioSeconds - this.keepSeconds;
    let drop = 0;
    while (drop < this.marks.length && this.marks[drop].end < horizon) drop++;
    if (drop > 256) this.marks.splice(0, drop);
  }

  /** Text ending at session time `end` arrived; returns the latency in ms, or null if unknown. */
  observe(end, now = performance.now()) {
    const { marks } = this;
    if (!marks.length || !(end > 0) || end > this.audioSeconds + 0.05) return null;
    let lo = 0;
    let hi = marks.length - 1;
    const target = end - 1e-6;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (marks[mid].end >= target) hi = mid;
      else lo = mid + 1;
    }
    if (marks[lo].end < target) return null;
    const ms = now - marks[lo].sentAt;
    this.last = ms;
    this.recent.push(ms);
    if (this.recent.length > 20) this.recent.shift();
    return ms;
  }

  /** Median of the recent observations (steadier to read than the last one). */
  get median() {
    if (!this.recent.length) return null;
    const sorted = [...this.recent].sort((a, b) => a - b);
    return sorted[sorted.length >> 1];
  }
}
