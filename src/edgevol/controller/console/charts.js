// Time series charts with uPlot (npm "uplot", served by the controller from /console/vendor/).
// uPlot styles its elements through the CSSOM (element.style), which the page's CSP allows;
// it injects no markup. Without uPlot the charts say so and everything else works.

import { h, setText } from "./dom.js";

export function chartsAvailable() {
  return typeof window.uPlot === "function";
}

const COLOURS = ["#1f6feb", "#8250df", "#d1242f", "#1a7f37"];
// Axis steps for bytes: 1, 2, 4 ... 512 of each binary unit, so the ticks read 64 MiB, not 61 MiB.
const BINARY_STEPS = [];
for (let unit = 1; unit <= 2 ** 50; unit *= 1024) for (let m = 1; m < 1024; m *= 2) BINARY_STEPS.push(m * unit);

export class LineChart {
  // series: [{label}] ; format: value -> text (axis and legend)
  constructor(title, series, format) {
    this.series = series;
    this.format = format;
    this.plot = null;
    this.box = h("div", { class: "chart-box" });
    this.note = h("p", { class: "muted", text: "Waiting for samples…" });
    this.el = h("figure", { class: "chart" }, h("figcaption", { text: title }), this.note, this.box);
    this.observer = new ResizeObserver(() => this.fit());
    this.observer.observe(this.el);
  }

  width() {
    return Math.max(240, Math.floor(this.el.clientWidth || 600));
  }

  fit() {
    if (this.plot) {
      const w = this.width();
      if (w !== this.plot.width) this.plot.setSize({ width: w, height: 220 });
    }
  }

  // xs: seconds since the epoch, ascending; ys: one array per series (null = gap).
  setData(xs, ys, emptyText) {
    if (xs.length < 2) {
      setText(this.note, emptyText || "Waiting for samples…");
      this.note.hidden = false;
      return;
    }
    this.note.hidden = true;
    const data = [xs, ...ys];
    if (!this.plot) {
      const fmt = this.format;
      this.plot = new window.uPlot({
        width: this.width(),
        height: 220,
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
        series: [{}, ...this.series.map((s, i) => ({
          label: s.label, stroke: COLOURS[i % COLOURS.length], width: 2,
          value: (u, v) => (v == null ? "—" : fmt(v)),
        }))],
        axes: [{}, { size: 80, incrs: BINARY_STEPS, values: (u, splits) => splits.map((v) => fmt(v)) }],
      }, data, this.box);
    } else {
      this.plot.setData(data);
    }
  }

  destroy() {
    this.observer.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

// Bytes per second between successive samples of a counter; a counter that went down (device
// restart) gives a gap, not a negative rate.
export function rates(xs, counter) {
  const out = [];
  for (let i = 1; i < xs.length; i += 1) {
    const dt = xs[i] - xs[i - 1];
    const d = counter[i] - counter[i - 1];
    out.push(dt > 0 && d >= 0 ? d / dt : null);
  }
  return out;
}
