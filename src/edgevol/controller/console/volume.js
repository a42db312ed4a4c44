// #/devices/<d>/volumes/<name-or-uuid> — one volume: its generations as reported, the states each
// went through (history), charts of its metrics, and the apps and content tree it relates to.

import { ApiError, detailText, enc, get } from "./api.js";
import { LineChart, chartsAvailable, rates } from "./charts.js";
import { cellsOf, h, link, progressCell, row, setAttr, setChildren, setText, stateClass, syncRows, table,
  toggleClass } from "./dom.js";
import { deviceHref, fleetHref, refOf } from "./routes.js";
import { errorText, formatBytes, formatClock, formatRate, formatTime, parseTime } from "./units.js";

const METRICS_LIMIT = 120;
const GEN_COLUMNS = ["generation", "state", "progress", "size", "used", "refs", "error"];

export class VolumeView {
  constructor(app, deviceRef, volumeRef) {
    this.app = app;
    this.deviceRef = deviceRef;
    this.volumeRef = volumeRef;
    this.charts = [];
  }

  mount(root) {
    this.app.setCrumbs([{ text: "Fleet", href: fleetHref() },
      { text: this.deviceRef, href: deviceHref({ name: this.deviceRef }) }, { text: this.volumeRef }]);
    this.title = h("h1", { text: `Volume ${this.volumeRef}` });
    this.meta = h("dl", { class: "meta" });
    this.missing = h("p", { class: "form-error", role: "alert", hidden: true });
    this.genTable = table("Generations as the device reports them", ["Generation", "State", "Progress", "Size",
      "Used", "Ref count", "Error"], "objects");
    this.genEmpty = h("p", { class: "empty", text: "The device reports no generation of this volume.", hidden: true });
    this.timelines = h("div", { class: "timelines" });
    this.historyEmpty = h("p", { class: "empty", text: "No state changes recorded yet.", hidden: true });
    this.related = h("div", { class: "related" });

    const chartsBlock = h("section", { class: "block", "aria-labelledby": "charts-title" },
      h("h2", { id: "charts-title", text: "Metrics" }));
    if (chartsAvailable()) {
      this.usage = new LineChart("Used and total bytes", [{ label: "Used" }, { label: "Total" }], formatBytes);
      this.io = new LineChart("Read and write rates", [{ label: "Read" }, { label: "Write" }], formatRate);
      this.charts = [this.usage, this.io];
      chartsBlock.append(h("div", { class: "charts" }, this.usage.el, this.io.el));
    } else {
      chartsBlock.append(h("p", { class: "note warn-text", role: "note" },
        "Charts need uPlot, which the controller serves from npm's copy (",
        h("code", { text: "make setup" }), " installs it; or set ", h("code", { text: "EDGEVOL_CONSOLE_VENDOR" }),
        " to a directory holding uPlot.iife.min.js and uPlot.min.css)."));
    }
    this.metricsNote = h("p", { class: "muted" });
    chartsBlock.append(this.metricsNote);

    this.body = h("div", null,
      this.meta,
      h("section", { class: "block", "aria-labelledby": "gens-title" },
        h("h2", { id: "gens-title", text: "Reported" }), this.genEmpty, this.genTable.wrap),
      h("section", { class: "block", "aria-labelledby": "history-title" },
        h("h2", { id: "history-title", text: "History" }), this.historyEmpty, this.timelines),
      chartsBlock,
      h("section", { class: "block", "aria-labelledby": "related-title" },
        h("h2", { id: "related-title", text: "Used by" }), this.related));
    root.append(this.title, this.missing, this.body);
  }

  unmount() {
    for (const c of this.charts) c.destroy();
  }

  async refresh() {
    const d = `/devices/${enc(this.deviceRef)}`;
    let device;
    let vol;
    try {
      [device, vol] = await Promise.all([get(d), get(`${d}/volumes/${enc(this.volumeRef)}`)]);
    } catch (exc) {
      if (exc instanceof ApiError && exc.status === 404) {
        setText(this.missing, `${detailText(exc.detail)}. It may have been deleted.`);
        this.missing.hidden = false;
        this.body.hidden = true;
        return;
      }
      throw exc;
    }
    const dev = `/devices/${enc(device.uuid)}`;
    const [reported, history, metrics, apps, trees] = await Promise.all([
      get(`${dev}/reported?kind=volume`),
      get(`${dev}/history?kind=volume&key=${enc(vol.uuid)}`),
      get(`${dev}/volumes/${enc(vol.uuid)}/metrics?limit=${METRICS_LIMIT}`),
      get(`${dev}/apps`),
      get(`${dev}/content-trees`),
    ]);
    this.missing.hidden = true;
    this.body.hidden = false;
    const mine = reported.filter((r) => r.object_key === vol.uuid).sort((a, b) => a.generation - b.generation);
    this.renderHeader(device, vol, trees);
    this.renderGenerations(vol, mine);
    this.renderHistory(vol, history, mine);
    this.renderCharts(metrics);
    this.renderRelated(device, vol, apps, trees);
  }

  renderHeader(device, vol, trees) {
    this.app.setCrumbs([{ text: "Fleet", href: fleetHref() }, { text: device.name, href: deviceHref(device) },
      { text: vol.name }]);
    setText(this.title, `Volume ${vol.name}`);
    const tree = trees.find((t) => t.uuid === vol.content_tree_uuid);
    const items = [
      ["UUID", vol.uuid],
      ["Device", device.name],
      ["Origin", vol.origin === "blank" ? "blank" : `from content tree ${tree ? tree.name : vol.content_tree_uuid}`],
      ["Size", formatBytes(vol.max_size_bytes)],
      ["Read-only", vol.readonly ? "yes" : "no"],
      ["Current generation", String(vol.generation_count)],
    ];
    setChildren(this.meta, JSON.stringify(items), () => items.map(([k, v]) =>
      h("div", null, h("dt", { text: k }), h("dd", { text: v }))));
  }

  renderGenerations(vol, mine) {
    this.genEmpty.hidden = mine.length > 0;
    syncRows(this.genTable.tbody, mine, (r) => r.generation, () => row(GEN_COLUMNS), (tr, r) => {
      const c = cellsOf(tr);
      tr.dataset.generation = String(r.generation);
      setText(c.generation, r.generation === vol.generation_count ? `${r.generation} (current)`
        : `${r.generation} (previous)`);
      const state = r.state_name;
      setText(c.state, state);
      c.state.className = `c-state state ${stateClass(state, r.error && r.error.severity >= 3)}`;
      progressCell(c.progress, r.progress);
      setText(c.size, formatBytes(r.max_size_bytes));
      setText(c.used, formatBytes(r.cur_size_bytes));
      setText(c.refs, String(r.ref_count));
      setText(c.error, errorText(r.error));
      toggleClass(c.error, "error-text", Boolean(r.error));
    });
  }

  // One timeline per generation, oldest generation first, each oldest state first.
  renderHistory(vol, history, mine) {
    const gens = new Map();
    for (const change of history) {
      if (!gens.has(change.generation)) gens.set(change.generation, []);
      gens.get(change.generation).push(change);
    }
    const live = new Set(mine.map((r) => r.generation));
    const items = [...gens.entries()].sort(([a], [b]) => a - b).map(([gen, changes]) => ({ gen, changes }));
    this.historyEmpty.hidden = items.length > 0;
    syncRows(this.timelines, items, (x) => x.gen, (x) => {
      const heading = h("h3");
      const list = h("ol", { class: "timeline" });
      const el = h("section", { class: "generation", data: { generation: x.gen } }, heading, list);
      el.parts = { heading, list };
      return el;
    }, (el, x) => {
      const status = x.gen === vol.generation_count ? "current" : live.has(x.gen) ? "previous, still on the device"
        : "gone from the device";
      setText(el.parts.heading, `Generation ${x.gen} (${status})`);
      setChildren(el.parts.list, JSON.stringify(x.changes.map((c) => [c.state_name, c.at])), () => x.changes.map((c) => {
        const at = parseTime(c.at);
        return h("li", null, h("span", { class: `state ${stateClass(c.state_name)}`, text: c.state_name }), " ",
          h("time", { datetime: c.at, title: formatTime(at), text: formatClock(at) }));
      }));
    });
  }

  renderCharts(metrics) {
    const xs = metrics.map((m) => parseTime(m.at) / 1000);
    const last = metrics[metrics.length - 1];
    setText(this.metricsNote, last
      ? `${metrics.length} samples; latest ${formatTime(parseTime(last.at))}: used ${formatBytes(last.used_bytes)} ` +
        `of ${formatBytes(last.total_bytes)}.`
      : "No metrics yet: the device sends them every --metrics-interval seconds.");
    if (!this.usage) return;
    this.usage.setData(xs, [metrics.map((m) => m.used_bytes), metrics.map((m) => m.total_bytes)]);
    this.io.setData(xs.slice(1), [rates(xs, metrics.map((m) => m.read_bytes)),
      rates(xs, metrics.map((m) => m.write_bytes))], "Rates need three samples or more.");
  }

  renderRelated(device, vol, apps, trees) {
    const users = apps.filter((a) => a.volume_refs.some((r) => r.volume_uuid === vol.uuid));
    const tree = trees.find((t) => t.uuid === vol.content_tree_uuid);
    const sig = JSON.stringify([users.map((a) => [a.name, a.volume_refs]), tree && tree.name, refOf(device)]);
    setChildren(this.related, sig, () => [
      h("h3", { text: "Apps" }),
      users.length ? h("ul", null, users.map((a) => {
        const ref = a.volume_refs.find((r) => r.volume_uuid === vol.uuid);
        return h("li", null, link(`${deviceHref(device)}`, a.name), ` uses generation ${ref.generation_count}`,
          ` (purge counter ${a.purge_counter})`);
      })) : h("p", { class: "muted", text: "No app uses this volume." }),
      h("h3", { text: "Content tree" }),
      tree ? h("p", null, link(deviceHref(device), tree.name), ` (${tree.format_name}, ${tree.url})`)
        : h("p", { class: "muted", text: vol.origin === "blank" ? "None: a blank volume." : "Not found." }),
    ]);
    setAttr(this.related, "aria-live", "off");
  }
}

