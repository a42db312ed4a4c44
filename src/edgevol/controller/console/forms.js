// Forms whose errors appear next to the field they concern.
//
// A client-side check (a size that does not parse) and the API's refusal (409/422) end up in the
// same place: FastAPI's 422 names the body field (loc), the store's refusals are sentences, which
// are matched to a field by the words in them (quoted names left out, so a volume called "url"
// does not point at the URL field). What matches no field is shown at the top of the form.

import { ApiError, Unreachable, detailText } from "./api.js";
import { h, setText } from "./dom.js";

let counter = 0;

export class FieldError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

// spec: {title, fields: [{name, label, type, options, hint, placeholder, autocomplete, value}],
//        submitLabel, rules: [[field, RegExp]], locs: {apiField: field}, onSubmit(values), onCancel()}
export function buildForm(spec) {
  const uid = `f${++counter}`;
  const titleId = `${uid}-title`;
  const controls = {};
  const errors = {};
  const topError = h("p", { class: "form-error", role: "alert", hidden: true });
  const form = h("form", { class: "panel form", "aria-labelledby": titleId, novalidate: true, method: "post",
    action: "#" });
  form.append(h("h3", { id: titleId, text: spec.title }), topError);
  const grid = h("div", { class: "form-grid" });
  for (const f of spec.fields) {
    const id = `${uid}-${f.name}`;
    const errId = `${id}-error`;
    const hintId = `${id}-hint`;
    const describedBy = [f.hint ? hintId : null, errId].filter(Boolean).join(" ");
    let control;
    if (f.type === "select") {
      control = h("select", { id, "aria-describedby": describedBy });
      for (const o of f.options || []) control.append(h("option", { value: o.value, text: o.label }));
    } else if (f.type === "checkbox") {
      control = h("input", { id, type: "checkbox", "aria-describedby": describedBy });
    } else {
      control = h("input", { id, type: f.type || "text", "aria-describedby": describedBy, spellcheck: "false",
        autocomplete: f.autocomplete || "off", placeholder: f.placeholder, inputmode: f.inputmode });
    }
    if (f.value != null) control.value = f.value;
    const label = h("label", { for: id, text: f.label });
    const error = h("p", { class: "field-error", id: errId, hidden: true });
    const hint = f.hint ? h("p", { class: "hint", id: hintId, text: f.hint }) : null;
    const field = f.type === "checkbox"
      ? h("div", { class: "field check", data: { field: f.name } }, control, label, hint, error)
      : h("div", { class: "field", data: { field: f.name } }, label, control, hint, error);
    grid.append(field);
    controls[f.name] = control;
    errors[f.name] = error;
  }
  const submit = h("button", { type: "submit", text: spec.submitLabel || "Create" });
  const cancel = h("button", { type: "button", class: "secondary", text: "Cancel" });
  form.append(grid, h("div", { class: "form-actions" }, submit, cancel));

  function clearErrors() {
    topError.hidden = true;
    setText(topError, "");
    for (const [name, el] of Object.entries(errors)) {
      el.hidden = true;
      setText(el, "");
      controls[name].removeAttribute("aria-invalid");
    }
  }

  function showError(field, message) {
    if (field && errors[field]) {
      const el = errors[field];
      setText(el, el.textContent ? `${el.textContent} ${message}` : message);
      el.hidden = false;
      controls[field].setAttribute("aria-invalid", "true");
      return controls[field];
    }
    setText(topError, topError.textContent ? `${topError.textContent} ${message}` : message);
    topError.hidden = false;
    return null;
  }

  function fieldForText(text) {
    const words = text.replace(/'[^']*'|"[^"]*"/g, " ");
    for (const [field, re] of spec.rules || []) if (re.test(words)) return field;
    return null;
  }

  // Returns the control to focus (the first field in error), or null.
  function showException(exc) {
    if (exc instanceof FieldError) return showError(exc.field, exc.message);
    if (exc instanceof ApiError && Array.isArray(exc.detail)) {
      let first = null;
      for (const d of exc.detail) {
        const loc = Array.isArray(d.loc) ? d.loc[d.loc.length - 1] : null;
        const field = (spec.locs || {})[loc] ?? (controls[loc] ? loc : null);
        const focus = showError(field, field ? String(d.msg) : detailText([d]));
        first = first || focus;
      }
      return first;
    }
    if (exc instanceof ApiError) {
      const text = detailText(exc.detail);
      return showError(fieldForText(text), text);
    }
    if (exc instanceof Unreachable) {
      return showError(null, "The controller could not be reached; check that it runs and try again.");
    }
    return showError(null, String(exc && exc.message ? exc.message : exc));
  }

  function values() {
    const out = {};
    for (const [name, el] of Object.entries(controls)) out[name] = el.type === "checkbox" ? el.checked : el.value;
    return out;
  }

  let busy = false;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (busy) return;
    clearErrors();
    busy = true;
    submit.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      await spec.onSubmit(values(), { showError });
    } catch (exc) {
      if (spec.onUnauthorized && exc instanceof ApiError && exc.status === 401) {
        spec.onUnauthorized(exc);
        return;
      }
      const focus = showException(exc);
      if (focus) focus.focus();
      else {
        topError.tabIndex = -1;
        topError.focus();
      }
    } finally {
      busy = false;
      submit.disabled = false;
      form.removeAttribute("aria-busy");
    }
  });
  cancel.addEventListener("click", () => spec.onCancel && spec.onCancel());

  return { form, controls, clearErrors, showError, showException, values };
}

// Check a size field; "" gives `empty`. Throws FieldError naming the field.
export function sizeValue(field, text, parse, { empty = 0, required = "" } = {}) {
  if (!String(text).trim()) {
    if (required) throw new FieldError(field, required);
    return empty;
  }
  try {
    return parse(text);
  } catch (exc) {
    throw new FieldError(field, exc.message);
  }
}
