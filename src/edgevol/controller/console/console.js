// The operator console: sign-in, routing and the live refresh loop.
//
// Live updates are polling, once a second, of the admin API for the page in view: an
// EventSource (SSE) cannot send an Authorization header, and the token must not go in a URL.
// A refresh updates tables in place (see dom.js), so open forms, focus and typed text survive it.

import { ApiError, Unreachable, clearToken, get, getToken, setToken } from "./api.js";
import { clear, h, setText } from "./dom.js";
import { DeviceView } from "./device.js";
import { FleetView } from "./fleet.js";
import { fleetHref, parseRoute } from "./routes.js";
import { formatClock } from "./units.js";
import { VolumeView } from "./volume.js";

const POLL_MS = 1000;

const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
const live = document.getElementById("live");
const banner = document.getElementById("banner");
const signoutButton = document.getElementById("signout");

let view = null;
let timer = 0;
let inflight = null;
let again = false;

const app = {
  refreshNow() {
    kick();
  },
  setCrumbs(items) {
    // items: [{text, href}] — the last one is the current page. Rebuilt only when they change, so a
    // focused link keeps its focus across refreshes.
    const sig = JSON.stringify(items);
    if (crumbs.dataset.sig === sig) return;
    crumbs.dataset.sig = sig;
    clear(crumbs);
    const list = h("ol");
    items.forEach((item, i) => {
      const last = i === items.length - 1;
      list.append(h("li", null, last
        ? h("span", { "aria-current": "page", text: item.text })
        : h("a", { href: item.href, text: item.text })));
    });
    crumbs.append(list);
    document.title = `${items[items.length - 1].text} — edgevol console`;
  },
  unauthorized() {
    signOut("The controller refused the token (was it changed?). Sign in again.");
  },
  showBanner(text) {
    setText(banner, text);
    banner.hidden = !text;
  },
};

function setLive(text, bad = false) {
  setText(live, text);
  live.classList.toggle("bad", bad);
}

async function tick() {
  const current = view;
  if (!current || !getToken()) return;
  try {
    await current.refresh();
    if (current !== view) return;
    setLive(`Live · updated ${formatClock(Date.now())}`);
    app.showBanner("");
  } catch (exc) {
    if (current !== view) return;
    if (exc instanceof ApiError && exc.status === 401) {
      app.unauthorized();
    } else if (exc instanceof Unreachable) {
      setLive("Controller unreachable · retrying", true);
    } else {
      setLive("Refresh failed · retrying", true);
      app.showBanner(exc instanceof ApiError ? `${exc.path}: ${exc.message}` : String(exc && exc.message));
    }
  }
}

// Refresh now, then every POLL_MS after each refresh ends; never two at once.
function kick() {
  clearTimeout(timer);
  if (inflight) {
    again = true;
    return;
  }
  inflight = tick().finally(() => {
    inflight = null;
    if (again) {
      again = false;
      kick();
    } else if (view) {
      timer = setTimeout(kick, document.hidden ? POLL_MS * 5 : POLL_MS);
    }
  });
}

function stop() {
  clearTimeout(timer);
  if (view) view.unmount();
  view = null;
}

function showRoute({ focus = false } = {}) {
  stop();
  clear(main);
  app.showBanner("");
  if (!getToken()) {
    showSignIn();
    return;
  }
  signoutButton.hidden = false;
  const route = parseRoute(location.hash);
  if (route.name === "fleet") view = new FleetView(app);
  else if (route.name === "device") view = new DeviceView(app, route.device);
  else if (route.name === "volume") view = new VolumeView(app, route.device, route.volume);
  else {
    app.setCrumbs([{ text: "Fleet", href: fleetHref() }, { text: "Not found" }]);
    main.append(h("h1", { text: "No such page" }), h("p", null, h("a", { href: fleetHref(), text: "Back to the fleet" })));
    return;
  }
  view.mount(main);
  if (focus) {
    const heading = main.querySelector("h1");
    if (heading) {
      heading.tabIndex = -1;
      heading.focus();
    }
  }
  kick();
}

function signOut(message = "") {
  stop();
  clearToken();
  clear(main);
  showSignIn(message);
}

function showSignIn(message = "") {
  signoutButton.hidden = true;
  setLive("");
  clear(crumbs);
  delete crumbs.dataset.sig;
  document.title = "Sign in — edgevol console";
  const input = h("input", { id: "token", type: "password", autocomplete: "off", spellcheck: "false",
    "aria-describedby": "token-hint token-error" });
  const error = h("p", { class: "field-error", id: "token-error", role: "alert", hidden: !message, text: message });
  const button = h("button", { type: "submit", text: "Sign in" });
  const form = h("form", { class: "panel signin", "aria-labelledby": "signin-title", novalidate: true,
    method: "post", action: "#" },
  h("h1", { id: "signin-title", text: "Sign in" }),
  h("div", { class: "field" },
    h("label", { for: "token", text: "Admin token" }),
    input,
    h("p", { class: "hint", id: "token-hint",
      text: "The controller's admin token: the file admin.token in its data directory " +
        "(make demo: demo-data/controller/admin.token). It stays in this browser until you sign out." }),
    error),
  h("div", { class: "form-actions" }, button));
  const fail = (text) => {
    setText(error, text);
    error.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    input.removeAttribute("aria-invalid");
    const token = input.value.trim();
    if (!token) {
      fail("Paste the admin token.");
      return;
    }
    button.disabled = true;
    try {
      await get("/fleet", { token });
    } catch (exc) {
      button.disabled = false;
      if (exc instanceof ApiError && exc.status === 401) fail("The controller refused this token.");
      else if (exc instanceof Unreachable) fail("The controller cannot be reached; try again.");
      else fail(`Could not check the token: ${exc.message}`);
      return;
    }
    setToken(token);
    input.value = "";
    showRoute({ focus: true });
  });
  main.append(form);
  input.focus();
}

signoutButton.addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => showRoute({ focus: true }));
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && view) kick();
});
// Another tab signed in or out: follow it.
window.addEventListener("storage", (event) => {
  if (event.key === null || event.key.startsWith("edgevol.")) showRoute();
});

showRoute();
