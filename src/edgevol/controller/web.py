"""A small read-only web page: devices and what they report, refreshed live.

It is a static page that calls the admin API from the browser with the
token the operator pastes once (kept in the browser's localStorage), so it
needs no session handling of its own and shows exactly what the API shows.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgevol controller</title>
<style>
 body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
 table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{padding:.25rem .75rem;border-bottom:1px solid #ddd;text-align:left}
 th{background:#f4f4f4}.ERROR{color:#b00020;font-weight:600}.CREATED_VOLUME,.LOADED,.DELIVERED{color:#1b7f3b}
 progress{width:8rem}#err{color:#b00020}
</style></head><body>
<h1>edgevol controller</h1>
<form id="tok"><label>Admin token <input id="token" type="password" size="48"></label> <button>Use</button></form>
<p id="err"></p><div id="out"></div>
<script>
const $ = s => document.querySelector(s);
const esc = v => String(v ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
const size = n => n == null ? "" : n >= 1<<30 ? (n/(1<<30)).toFixed(1)+" GiB" : (n/(1<<20)).toFixed(1)+" MiB";
$("#token").value = localStorage.getItem("edgevolToken") || "";
$("#tok").onsubmit = e => { e.preventDefault(); localStorage.setItem("edgevolToken", $("#token").value); refresh(); };
async function api(path) {
  const r = await fetch("/api/v1" + path, {headers: {Authorization: "Bearer " + localStorage.getItem("edgevolToken")}});
  if (!r.ok) throw new Error(path + ": " + r.status + " " + (await r.text()));
  return r.json();
}
async function refresh() {
  try {
    let html = "";
    for (const d of await api("/devices")) {
      const rep = await api("/devices/" + d.uuid + "/reported");
      html += `<h2>${esc(d.name)} <small>${esc(d.uuid)}</small></h2><table><tr><th>kind</th><th>name</th>` +
        `<th>state</th><th>progress</th><th>max</th><th>used</th><th>refs</th><th>error</th></tr>`;
      for (const o of rep) html += `<tr><td>${esc(o.kind)}</td><td>${esc(o.display_name || o.object_key)}</td>` +
        `<td class="${esc(o.state_name)}">${esc(o.state_name)}</td><td><progress max="100" value="${o.progress}"></progress></td>` +
        `<td>${size(o.max_size_bytes)}</td><td>${size(o.cur_size_bytes)}</td><td>${o.ref_count}</td>` +
        `<td class="${o.error ? "ERROR" : ""}">${esc(o.error && o.error.description)}</td></tr>`;
      html += "</table>";
    }
    $("#out").innerHTML = html; $("#err").textContent = "";
  } catch (e) { $("#err").textContent = e.message; }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/", response_class=HTMLResponse)
    def index() -> str:
        return PAGE

    return r
