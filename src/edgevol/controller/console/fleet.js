// #/ — every device at a glance, from GET /api/v1/fleet.

import { get, serverNow } from "./api.js";
import { cellsOf, h, link, row, setAttr, setChildren, setText, stateClass, syncRows, table, toggleClass }
  from "./dom.js";
import { deviceHref } from "./routes.js";
import { formatAgo, formatTime, parseTime } from "./units.js";

export const STALE_MS = 3 * 60 * 1000;
const KINDS = [["volume", "Volumes"], ["content_tree", "Content trees"], ["blob", "Blobs"], ["app", "Apps"]];
const COLUMNS = ["name", "serial", "registered", "seen", "config", ...KINDS.map(([k]) => k), "errors"];

export function countsList(counts) {
  const entries = Object.entries(counts || {}).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return h("span", { class: "muted", text: "none" });
  return h("ul", { class: "counts" }, entries.map(([state, n]) =>
    h("li", null, h("span", { class: `state ${stateClass(state)}`, text: state }), ` ${n}`)));
}

export class FleetView {
  constructor(app) {
    this.app = app;
  }

  mount(root) {
    this.app.setCrumbs([{ text: "Fleet" }]);
    const t = table("Devices", ["Device", "Serial", "Registered", "Last seen", "Config (acked / current)",
      ...KINDS.map(([, title]) => title), "Errors"], "fleet");
    this.tbody = t.tbody;
    this.summary = h("p", { class: "muted", text: "Loading…" });
    this.empty = h("p", { class: "empty", hidden: true },
      "No devices yet. Register one with ",
      h("code", { text: "edgevol admin device create NAME --serial SERIAL --onboard-cert onboard.pem" }), ".");
    root.append(h("h1", { text: "Fleet" }), this.summary, this.empty, t.wrap);
  }

  unmount() {}

  async refresh() {
    const devices = await get("/fleet");
    const now = serverNow();
    const behind = devices.filter((d) => d.config_acked_version == null || d.config_acked_version < d.config_version);
    setText(this.summary, `${devices.length} device${devices.length === 1 ? "" : "s"}` +
      `, ${devices.filter((d) => d.registered).length} registered` +
      `, ${behind.length} behind on config` +
      `, ${devices.reduce((n, d) => n + d.errors, 0)} objects in error`);
    this.empty.hidden = devices.length > 0;
    syncRows(this.tbody, devices, (d) => d.uuid, (d) => row(COLUMNS, { data: { device: d.name } }), (tr, d) => {
      const c = cellsOf(tr);
      tr.dataset.device = d.name;
      setChildren(c.name, `${d.name}\n${deviceHref(d)}`, () => link(deviceHref(d), d.name));
      setText(c.serial, d.serial || "—");
      setText(c.registered, d.registered ? "yes" : "no");
      toggleClass(c.registered, "warn", !d.registered);
      const seen = parseTime(d.last_seen_at);
      setText(c.seen, formatAgo(seen, now));
      setAttr(c.seen, "title", seen == null ? "the device never reached the controller" : formatTime(seen));
      toggleClass(c.seen, "stale", seen == null || now - seen > STALE_MS);
      const acked = d.config_acked_version;
      setText(c.config, `${acked ?? "—"} / ${d.config_version}`);
      const late = acked == null || acked < d.config_version;
      toggleClass(c.config, "behind", late);
      setAttr(c.config, "title", late ? "the device does not run the current config yet" : "up to date");
      for (const [kind] of KINDS) {
        const counts = (d.counts || {})[kind] || {};
        setChildren(c[kind], JSON.stringify(counts), () => countsList(counts));
      }
      setText(c.errors, String(d.errors));
      toggleClass(c.errors, "has-errors", d.errors > 0);
    });
  }
}
