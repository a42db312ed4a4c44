// #/devices/<name-or-uuid> — what the device should run against what it reports.
//
// Desired objects come from the device's volumes, content trees and apps; reported state from
// /reported. A desired object the device has not reported yet is "pending"; a reported one the
// config no longer names (being deleted) is listed too, so nothing the device holds is hidden.

import { ApiError, Unreachable, del, detailText, enc, get, post, serverNow } from "./api.js";
import { confirmAction } from "./dialog.js";
import { buildForm, sizeValue } from "./forms.js";
import { cellsOf, h, link, progressCell, row, setAttr, setChildren, setText, stateClass, syncOptions,
  syncRows, table, toggleClass } from "./dom.js";
import { STALE_MS } from "./fleet.js";
import { fleetHref, volumeHref } from "./routes.js";
import { errorText, formatAgo, formatBytes, formatTime, parseSize, parseTime, shortHash } from "./units.js";

const FORMATS = ["RAW", "QCOW", "QCOW2", "VHD", "VMDK", "OVA", "VHDX", "ISO", "CONTAINER", "BLOB_TREE"];
const DS_TYPES = ["DsHttp", "DsHttps", "DsS3", "DsAzureBlob", "DsGoogleStorage", "DsSFTP", "DsContainerRegistry"];

// What matters most comes first (state, progress), so a phone shows it before any sideways scrolling.
const VOLUME_COLUMNS = ["name", "state", "progress", "generation", "origin", "size", "used", "refs", "error",
  "actions"];
const TREE_COLUMNS = ["name", "state", "progress", "datastore", "url", "format", "sha256", "size", "used", "refs",
  "error", "actions"];
const BLOB_COLUMNS = ["sha256", "state", "progress", "size", "used", "refs", "error"];
const APP_COLUMNS = ["name", "volumes", "purge", "state", "error"];
const STORE_COLUMNS = ["name", "type", "fqdn", "dpath", "region", "actions"];

function byKey(reported, kind) {
  const map = new Map();
  for (const r of reported) if (r.kind === kind) map.set(`${r.object_key}#${r.generation}`, r);
  return map;
}

// The state cell: the reported state (or "pending"), coloured, with the error's severity in a class.
function stateCell(td, rep) {
  const state = rep ? rep.state_name : "pending";
  setText(td, state);
  td.className = `c-state state ${stateClass(state, rep && rep.error && rep.error.severity >= 3)}`;
  setAttr(td, "title", rep ? `reported ${formatTime(parseTime(rep.reported_at || rep.updated_at))}`
    : "the device has not reported it yet");
}

function errorCell(td, rep) {
  const err = rep && rep.error;
  setText(td, errorText(err));
  toggleClass(td, "error-text", Boolean(err && err.severity >= 3));
  toggleClass(td, "warn-text", Boolean(err && err.severity < 3));
  setAttr(td, "title", err && err.time ? `since ${formatTime(parseTime(err.time))}` : null);
}

function section(title, id) {
  const heading = h("h2", { id: `${id}-title`, text: title });
  const toolbar = h("div", { class: "toolbar" });
  const alert = h("p", { class: "form-error", role: "alert", hidden: true });
  const formSlot = h("div", { class: "form-slot" });
  const el = h("section", { class: "block", id, "aria-labelledby": `${id}-title` },
    h("div", { class: "block-head" }, heading, toolbar), alert, formSlot);
  return { el, toolbar, alert, formSlot };
}

function showAlert(alert, text) {
  setText(alert, text);
  alert.hidden = !text;
}

export class DeviceView {
  constructor(app, ref) {
    this.app = app;
    this.ref = ref;
    this.forms = {};
    this.data = { trees: [], stores: [], device: null };
  }

  api(path) {
    return `/devices/${enc(this.ref)}${path}`;
  }

  mount(root) {
    this.app.setCrumbs([{ text: "Fleet", href: fleetHref() }, { text: this.ref }]);
    this.title = h("h1", { text: this.ref });
    this.meta = h("dl", { class: "meta" });
    this.missing = h("p", { class: "form-error", role: "alert", hidden: true });

    this.vol = section("Volumes", "volumes");
    this.vol.toolbar.append(this.opener("volume", "New volume", () => this.volumeForm()));
    this.volTable = table("Volumes: desired and reported", ["Name", "State", "Progress", "Generation", "Origin",
      "Size", "Used", "Ref count", "Error", "Actions"], "objects");
    this.volEmpty = h("p", { class: "empty", text: "No volumes yet.", hidden: true });
    this.vol.el.append(this.volEmpty, this.volTable.wrap);

    this.ct = section("Content trees", "content-trees");
    this.ct.toolbar.append(this.opener("tree", "New content tree", () => this.treeForm()));
    this.ctTable = table("Content trees: desired and reported", ["Name", "State", "Progress", "Datastore", "URL",
      "Format", "SHA-256", "Max size", "Size", "Ref count", "Error", "Actions"], "objects");
    this.ctEmpty = h("p", { class: "empty", text: "No content trees yet.", hidden: true });
    this.ct.el.append(this.ctEmpty, this.ctTable.wrap);

    this.blob = section("Blobs", "blobs");
    this.blobTable = table("Blobs the device reports", ["SHA-256", "State", "Progress", "Size", "Stored",
      "Ref count", "Error"], "objects");
    this.blobEmpty = h("p", { class: "empty", text: "The device reports no blobs.", hidden: true });
    this.blob.el.append(this.blobEmpty, this.blobTable.wrap);

    this.apps = section("Apps", "apps");
    this.appTable = table("Apps: desired and reported", ["Name", "Volumes", "Purge counter", "State", "Error"],
      "objects");
    this.appEmpty = h("p", { class: "empty", text: "No apps.", hidden: true });
    this.apps.el.append(this.appEmpty, this.appTable.wrap);

    this.ds = section("Datastores (shared by all devices)", "datastores");
    this.ds.toolbar.append(this.opener("store", "New datastore", () => this.storeForm()));
    this.dsTable = table("Datastores", ["Name", "Type", "FQDN", "Dpath", "Region", "Actions"], "objects");
    this.dsEmpty = h("p", { class: "empty", text: "No datastores yet.", hidden: true });
    this.ds.el.append(this.dsEmpty, this.dsTable.wrap);

    this.body = h("div", { class: "device-body" }, this.vol.el, this.ct.el, this.blob.el, this.apps.el, this.ds.el);
    root.append(this.title, this.meta, this.missing, this.body);
  }

  unmount() {}

  // A "New ..." button that opens its form once (a second click focuses it).
  opener(kind, text, build) {
    const button = h("button", { type: "button", text, "aria-expanded": "false" });
    button.addEventListener("click", () => {
      const open = this.forms[kind];
      if (open) {
        open.controls.name.focus();
        return;
      }
      const f = build();
      f.opener = button;
      this.forms[kind] = f;
      button.setAttribute("aria-expanded", "true");
      f.controls.name.focus();
    });
    return button;
  }

  closeForm(kind) {
    const f = this.forms[kind];
    if (!f) return;
    delete this.forms[kind];
    f.form.remove();
    f.opener.setAttribute("aria-expanded", "false");
    f.opener.focus();
  }

  formBase(kind, slot, spec) {
    const f = buildForm({
      ...spec,
      onCancel: () => this.closeForm(kind),
      onUnauthorized: () => this.app.unauthorized(),
    });
    slot.append(f.form);
    this.syncForms();
    return f;
  }

  volumeForm() {
    const f = this.formBase("volume", this.vol.formSlot, {
      title: "New volume",
      fields: [
        { name: "name", label: "Name" },
        { name: "origin", label: "Origin", type: "select", options: [{ value: "", label: "Blank" }] },
        { name: "size", label: "Size", placeholder: "1 GiB", inputmode: "text",
          hint: "Binary units: 1 GiB, 500 MiB, 1.5GiB or bytes. From a content tree it may stay empty " +
            "(the image's size)." },
        { name: "readonly", label: "Read-only", type: "checkbox" },
      ],
      rules: [["size", /size|maxsizebytes|PiB|negative|disk space/i], ["origin", /content tree|origin/i],
        ["readonly", /read.?only/i], ["name", /\bnamed?\b/i]],
      locs: { max_size_bytes: "size", content_tree: "origin", origin: "origin", readonly: "readonly" },
      onSubmit: async (v) => {
        const blank = v.origin === "";
        const size = sizeValue("size", v.size, parseSize,
          { required: blank ? "A blank volume needs a size, e.g. 1 GiB." : "" });
        const body = { name: v.name, origin: blank ? "blank" : "download", max_size_bytes: size,
          readonly: v.readonly };
        if (!blank) body.content_tree = v.origin;
        const vol = await post(this.api("/volumes"), body);
        this.done("volume", `Volume "${vol.name}" created; the device picks it up with its next config.`);
      },
    });
    return f;
  }

  treeForm() {
    return this.formBase("tree", this.ct.formSlot, {
      title: "New content tree",
      fields: [
        { name: "name", label: "Name" },
        { name: "datastore", label: "Datastore", type: "select" },
        { name: "url", label: "URL", hint: "Relative to the datastore: a file path, or REPO:TAG in a registry." },
        { name: "format", label: "Format", type: "select", value: "QCOW2",
          options: FORMATS.map((f) => ({ value: f, label: f })) },
        { name: "sha256", label: "SHA-256", hint: "64 hex digits; required except for CONTAINER images." },
        { name: "max_size", label: "Max size", placeholder: "e.g. 4 GiB", hint: "Optional: refuse bigger downloads." },
      ],
      rules: [["sha256", /sha256|sha-256|digest/i], ["url", /\burl\b/i],
        ["format", /\bformat\b|CONTAINER content|BLOB_TREE content/i],
        ["max_size", /size|PiB|negative/i], ["datastore", /datastore|registry/i], ["name", /\bnamed?\b/i]],
      locs: { max_size_bytes: "max_size" },
      onSubmit: async (v) => {
        const size = sizeValue("max_size", v.max_size, parseSize);
        const tree = await post(this.api("/content-trees"), {
          name: v.name, datastore: v.datastore, url: v.url, format: v.format,
          sha256: v.sha256.trim() || null, max_size_bytes: size,
        });
        this.done("tree", `Content tree "${tree.name}" created.`);
      },
    });
  }

  storeForm() {
    return this.formBase("store", this.ds.formSlot, {
      title: "New datastore",
      fields: [
        { name: "name", label: "Name" },
        { name: "type", label: "Type", type: "select", value: "DsHttps",
          options: DS_TYPES.map((t) => ({ value: t, label: t })) },
        { name: "fqdn", label: "FQDN", placeholder: "https://images.example.com",
          hint: "Endpoint URL; host[:port] for SFTP; docker://HOST for a registry." },
        { name: "dpath", label: "Dpath", hint: "Path, bucket[/prefix], container or directory." },
        { name: "api_key", label: "API key", hint: "User, access key or account name (optional)." },
        { name: "password", label: "Password", type: "password", autocomplete: "new-password",
          hint: "Never shown again (optional)." },
        { name: "region", label: "Region", hint: "S3 only (optional)." },
      ],
      rules: [["fqdn", /fqdn|endpoint|http\(s\) host|SFTP address/i], ["dpath", /dpath|bucket/i],
        ["api_key", /api.?key|access key|account name/i], ["password", /password|secret|account key|SAS/i],
        ["region", /region/i], ["type", /\btype\b/i], ["name", /\bnamed?\b/i]],
      onSubmit: async (v) => {
        const ds = await post("/datastores", v);
        this.done("store", `Datastore "${ds.name}" created.`);
      },
    });
  }

  done(kind, message) {
    const slot = { volume: this.vol, tree: this.ct, store: this.ds }[kind];
    this.closeForm(kind);
    const note = h("p", { class: "note", role: "status", text: message });
    slot.formSlot.append(note);
    setTimeout(() => note.remove(), 6000);
    this.app.refreshNow();
  }

  // Selects in open forms follow what exists (content trees, datastores), keeping the choice.
  syncForms() {
    const vf = this.forms.volume;
    if (vf) {
      syncOptions(vf.controls.origin, [{ value: "", label: "Blank" },
        ...this.data.trees.map((t) => ({ value: t.uuid, label: `From content tree ${t.name}` }))]);
    }
    const tf = this.forms.tree;
    if (tf) {
      syncOptions(tf.controls.datastore, this.data.stores.length
        ? this.data.stores.map((d) => ({ value: d.uuid, label: `${d.name} (${d.type_name})` }))
        : [{ value: "", label: "none yet: create a datastore below" }]);
    }
  }

  async act(button, alert, { title, message, action, run }) {
    showAlert(alert, "");
    if (!(await confirmAction({ title, message, action }))) return;
    button.disabled = true;
    try {
      await run();
      this.app.refreshNow();
    } catch (exc) {
      if (exc instanceof ApiError && exc.status === 401) {
        this.app.unauthorized();
        return;
      }
      showAlert(alert, exc instanceof ApiError ? `${action} refused: ${detailText(exc.detail)}`
        : exc instanceof Unreachable ? `${action} failed: the controller could not be reached.` : String(exc));
    } finally {
      button.disabled = false;
    }
  }

  async refresh() {
    let results;
    try {
      results = await Promise.all([get(`/devices/${enc(this.ref)}`), get(this.api("/volumes")),
        get(this.api("/content-trees")), get(this.api("/apps")), get(this.api("/reported")), get("/datastores")]);
    } catch (exc) {
      if (exc instanceof ApiError && exc.status === 404) {
        showAlert(this.missing, `${detailText(exc.detail)}. It may have been deleted; see the fleet.`);
        this.body.hidden = true;
        return;
      }
      throw exc;
    }
    showAlert(this.missing, "");
    this.body.hidden = false;
    const [device, volumes, trees, apps, reported, stores] = results;
    this.data = { device, trees, stores };
    this.renderDevice(device);
    this.syncForms();
    this.renderVolumes(device, volumes, trees, reported);
    this.renderTrees(trees, stores, reported);
    this.renderBlobs(reported);
    this.renderApps(device, apps, volumes, reported);
    this.renderStores(stores);
  }

  renderDevice(d) {
    this.app.setCrumbs([{ text: "Fleet", href: fleetHref() }, { text: d.name }]);
    setText(this.title, `Device ${d.name}`);
    const seen = parseTime(d.last_seen_at);
    const now = serverNow();
    const registered = d.registered_at != null || d.device_cert_pem != null;
    const acked = d.config_acked_version;
    const items = [
      ["UUID", d.uuid, ""],
      ["Serial", d.serial || "—", ""],
      ["Registered", registered ? "yes" : "no", registered ? "" : "warn"],
      ["Last seen", seen == null ? "never" : `${formatAgo(seen, now)} (${formatTime(seen)})`,
        seen == null || now - seen > STALE_MS ? "stale" : ""],
      ["Config (acked / current)", `${acked ?? "—"} / ${d.config_version}`,
        acked == null || acked < d.config_version ? "behind" : ""],
    ];
    setChildren(this.meta, JSON.stringify(items), () => items.map(([k, v, cls]) =>
      h("div", null, h("dt", { text: k }), h("dd", { class: cls, text: v }))));
  }

  renderVolumes(device, volumes, trees, reported) {
    const rep = byKey(reported, "volume");
    const treeName = new Map(trees.map((t) => [t.uuid, t.name]));
    const rows = [];
    for (const v of volumes) {
      const key = `${v.uuid}#${v.generation_count}`;
      rows.push({ key, vol: v, rep: rep.get(key), current: true, gen: v.generation_count });
      rep.delete(key);
      const others = [...rep.values()].filter((r) => r.object_key === v.uuid).sort((a, b) => a.generation - b.generation);
      for (const r of others) {
        const k = `${r.object_key}#${r.generation}`;
        rows.push({ key: k, vol: v, rep: r, current: false, gen: r.generation });
        rep.delete(k);
      }
    }
    for (const [k, r] of rep) rows.push({ key: k, vol: null, rep: r, current: false, gen: r.generation });
    this.volEmpty.hidden = rows.length > 0;
    syncRows(this.volTable.tbody, rows, (x) => x.key, () => row(VOLUME_COLUMNS), (tr, x) => {
      const c = cellsOf(tr);
      const name = x.vol ? x.vol.name : (x.rep.display_name || x.rep.object_key);
      tr.dataset.volume = name;
      tr.dataset.generation = String(x.gen);
      tr.dataset.current = String(x.current);
      toggleClass(tr, "previous", !x.current);
      setChildren(c.name, `${name}\n${x.current}`, () => (x.current ? link(volumeHref(device, x.vol), name)
        : h("span", { text: name })));
      setText(c.generation, x.current ? String(x.gen)
        : x.vol ? `${x.gen} (previous)` : `${x.gen} (not in config)`);
      const origin = x.vol ? (x.vol.origin === "blank" ? "blank"
        : `from ${treeName.get(x.vol.content_tree_uuid) || x.vol.content_tree_uuid}`) : "—";
      setText(c.origin, x.vol && x.vol.readonly ? `${origin}, read-only` : origin);
      stateCell(c.state, x.rep);
      progressCell(c.progress, x.rep ? x.rep.progress : 0);
      setText(c.size, formatBytes(x.rep && x.rep.max_size_bytes != null ? x.rep.max_size_bytes
        : x.vol && x.vol.max_size_bytes));
      setText(c.used, x.rep ? formatBytes(x.rep.cur_size_bytes) : "—");
      setText(c.refs, x.rep ? String(x.rep.ref_count) : "—");
      errorCell(c.error, x.rep);
      setChildren(c.actions, x.current ? `actions ${x.vol.uuid}` : "none", () => (x.current
        ? this.volumeActions(x.vol) : ""));
    });
  }

  volumeActions(vol) {
    const purge = h("button", { type: "button", class: "small secondary", text: "Purge", "aria-label": `Purge ${vol.name}` });
    const remove = h("button", { type: "button", class: "small danger", text: "Delete",
      "aria-label": `Delete ${vol.name}` });
    const path = this.api(`/volumes/${enc(vol.uuid)}`);
    purge.addEventListener("click", () => this.act(purge, this.vol.alert, {
      title: `Purge volume ${vol.name}?`,
      message: `The device recreates "${vol.name}" from scratch as a new generation (blank, or from its content ` +
        "tree); the data in it now is not carried over. Apps using it move to the new generation once it is " +
        "created, and the old one is deleted.",
      action: "Purge",
      run: () => post(`${path}/purge`, {}),
    }));
    remove.addEventListener("click", () => this.act(remove, this.vol.alert, {
      title: `Delete volume ${vol.name}?`,
      message: `The device deletes "${vol.name}" and all its data. This cannot be undone.`,
      action: "Delete",
      run: () => del(path),
    }));
    return h("div", { class: "actions" }, purge, remove);
  }

  renderTrees(trees, stores, reported) {
    const rep = byKey(reported, "content_tree");
    const storeName = new Map(stores.map((d) => [d.uuid, d.name]));
    const rows = trees.map((t) => {
      const r = rep.get(`${t.uuid}#0`);
      rep.delete(`${t.uuid}#0`);
      return { key: t.uuid, tree: t, rep: r };
    });
    for (const [k, r] of rep) rows.push({ key: k, tree: null, rep: r });
    this.ctEmpty.hidden = rows.length > 0;
    syncRows(this.ctTable.tbody, rows, (x) => x.key, () => row(TREE_COLUMNS), (tr, x) => {
      const c = cellsOf(tr);
      const t = x.tree;
      const name = t ? t.name : `${x.rep.display_name || x.rep.object_key}`;
      tr.dataset.tree = name;
      setText(c.name, t ? name : `${name} (not in config)`);
      setText(c.datastore, t ? (storeName.get(t.datastore_uuid) || t.datastore_uuid) : "—");
      setText(c.url, t ? t.url : "—");
      setText(c.format, t ? t.format_name : "—");
      setText(c.sha256, t ? shortHash(t.sha256) : "—");
      setAttr(c.sha256, "title", t && t.sha256 ? t.sha256 : null);
      stateCell(c.state, x.rep);
      progressCell(c.progress, x.rep ? x.rep.progress : 0);
      setText(c.size, formatBytes(t && t.max_size_bytes ? t.max_size_bytes : x.rep && x.rep.max_size_bytes));
      setText(c.used, x.rep ? formatBytes(x.rep.cur_size_bytes) : "—");
      setText(c.refs, x.rep ? String(x.rep.ref_count) : "—");
      errorCell(c.error, x.rep);
      setChildren(c.actions, t ? `del ${t.uuid}` : "none", () => {
        if (!t) return "";
        const b = h("button", { type: "button", class: "small danger", text: "Delete", "aria-label": `Delete ${t.name}` });
        b.addEventListener("click", () => this.act(b, this.ct.alert, {
          title: `Delete content tree ${t.name}?`,
          message: `The device forgets "${t.name}"; its blobs go when nothing else uses them. ` +
            "Volumes made from it must be deleted first.",
          action: "Delete",
          run: () => del(this.api(`/content-trees/${enc(t.uuid)}`)),
        }));
        return b;
      });
    });
  }

  renderBlobs(reported) {
    const blobs = reported.filter((r) => r.kind === "blob");
    this.blobEmpty.hidden = blobs.length > 0;
    syncRows(this.blobTable.tbody, blobs, (b) => b.object_key, () => row(BLOB_COLUMNS), (tr, b) => {
      const c = cellsOf(tr);
      tr.dataset.blob = b.object_key;
      setText(c.sha256, shortHash(b.object_key));
      setAttr(c.sha256, "title", b.object_key);
      stateCell(c.state, b);
      progressCell(c.progress, b.progress);
      setText(c.size, formatBytes(b.max_size_bytes));
      setText(c.used, formatBytes(b.cur_size_bytes));
      setText(c.refs, String(b.ref_count));
      errorCell(c.error, b);
    });
  }

  renderApps(device, apps, volumes, reported) {
    const rep = byKey(reported, "app");
    const vols = new Map(volumes.map((v) => [v.uuid, v]));
    const rows = apps.map((a) => {
      const r = rep.get(`${a.uuid}#0`);
      rep.delete(`${a.uuid}#0`);
      return { key: a.uuid, app: a, rep: r };
    });
    for (const [k, r] of rep) rows.push({ key: k, app: null, rep: r });
    this.appEmpty.hidden = rows.length > 0;
    syncRows(this.appTable.tbody, rows, (x) => x.key, () => row(APP_COLUMNS), (tr, x) => {
      const c = cellsOf(tr);
      const a = x.app;
      const name = a ? a.name : `${x.rep.display_name || x.rep.object_key} (not in config)`;
      tr.dataset.app = name;
      setText(c.name, name);
      const refs = a ? a.volume_refs : [];
      setChildren(c.volumes, JSON.stringify(refs.map((r) => [r.volume_uuid, r.generation_count,
        (vols.get(r.volume_uuid) || {}).name])), () => (refs.length ? h("ul", { class: "refs" }, refs.map((r) => {
        const v = vols.get(r.volume_uuid);
        return h("li", null, v ? link(volumeHref(device, v), v.name) : r.volume_uuid, ` (generation ${r.generation_count})`);
      })) : h("span", { class: "muted", text: "none" })));
      setText(c.purge, a ? String(a.purge_counter) : "—");
      stateCell(c.state, x.rep);
      errorCell(c.error, x.rep);
    });
  }

  renderStores(stores) {
    this.dsEmpty.hidden = stores.length > 0;
    syncRows(this.dsTable.tbody, stores, (d) => d.uuid, () => row(STORE_COLUMNS), (tr, d) => {
      const c = cellsOf(tr);
      tr.dataset.datastore = d.name;
      setText(c.name, d.name);
      setText(c.type, d.type_name);
      setText(c.fqdn, d.fqdn || "—");
      setText(c.dpath, d.dpath || "—");
      setText(c.region, d.region || "—");
      setChildren(c.actions, `del ${d.uuid}`, () => {
        const b = h("button", { type: "button", class: "small danger", text: "Delete", "aria-label": `Delete ${d.name}` });
        b.addEventListener("click", () => this.act(b, this.ds.alert, {
          title: `Delete datastore ${d.name}?`,
          message: `"${d.name}" is shared by all devices; it can only be deleted when no content tree uses it.`,
          action: "Delete",
          run: () => del(`/datastores/${enc(d.uuid)}`),
        }));
        return b;
      });
    });
  }
}

