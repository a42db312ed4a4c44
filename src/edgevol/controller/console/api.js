// The admin API, called with the token from localStorage as "Authorization: Bearer".
//
// The token only ever travels in that header: never in a URL (so no history, log or Referer
// holds it) and never in a cookie (so a cross-site page cannot make the browser send it).

const TOKEN_KEY = "edgevol.console.token";
const PREFIX = "/api/v1";

export class ApiError extends Error {
  constructor(status, detail, path) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail; // a string (the store's words) or FastAPI's list of {loc, msg}
    this.path = path;
  }
}

export class Unreachable extends Error {}

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  localStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  localStorage.removeItem(TOKEN_KEY);
}

// Milliseconds to add to the browser's clock to get the controller's (from each answer's Date
// header), so "last seen 3 minutes ago" does not depend on the operator's clock.
let skew = 0;
export function serverNow() {
  return Date.now() + skew;
}

export const enc = encodeURIComponent;

export async function request(method, path, { body, token, signal } = {}) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${token ?? getToken()}` };
  const init = { method, headers, signal, cache: "no-store", credentials: "omit", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(PREFIX + path, init);
  } catch (exc) {
    if (exc && exc.name === "AbortError") throw exc;
    throw new Unreachable("the controller cannot be reached");
  }
  const date = Date.parse(resp.headers.get("Date") || "");
  if (!Number.isNaN(date)) {
    const measured = date - Date.now();
    if (Math.abs(measured - skew) > 2000) skew = measured; // Date has whole seconds: ignore jitter
  }
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!resp.ok) {
    const detail = data && typeof data === "object" && "detail" in data ? data.detail : (data || resp.statusText);
    throw new ApiError(resp.status, detail, path);
  }
  return data;
}

export const get = (path, opts) => request("GET", path, opts);
export const post = (path, body, opts) => request("POST", path, { ...opts, body });
export const del = (path, opts) => request("DELETE", path, opts);

// FastAPI's 422 detail is a list of {loc: ["body", "field"], msg}; the store's is one sentence.
export function detailText(detail) {
  if (Array.isArray(detail)) {
    return detail.map((d) => {
      const where = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
      return where ? `${where}: ${d.msg}` : String(d.msg);
    }).join("; ");
  }
  return String(detail ?? "");
}
