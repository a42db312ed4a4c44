// A confirm dialog: a modal <dialog> with a question, the action's button and "Cancel".
// Cancel has the focus when it opens, so Enter or Escape never destroys anything by accident;
// Tab reaches the action. Resolves true only when the action's button was chosen.

import { h } from "./dom.js";

export function confirmAction({ title, message, action }) {
  return new Promise((resolve) => {
    const titleId = `dlg-${Date.now()}`;
    const ok = h("button", { type: "button", class: "danger", text: action });
    const cancel = h("button", { type: "button", class: "secondary", text: "Cancel" });
    const dialog = h("dialog", { class: "confirm", "aria-labelledby": titleId },
      h("h2", { id: titleId, text: title }),
      h("p", { text: message }),
      h("div", { class: "form-actions" }, ok, cancel));
    const opener = document.activeElement;
    let answer = false;
    ok.addEventListener("click", () => {
      answer = true;
      dialog.close();
    });
    cancel.addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => {
      dialog.remove();
      if (opener && opener.isConnected && typeof opener.focus === "function") opener.focus();
      resolve(answer);
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}
