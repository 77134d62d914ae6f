// Shared by the dashboard's pages: actions, the confirmation dialog, messages, formatting.

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// Show a message (an error in the alert role, so that it is read at once).
export function toast(message, error = false) {
  const box = $("toast");
  box.textContent = message;
  box.className = "toast show" + (error ? " error" : "");
  box.setAttribute("role", error ? "alert" : "status");
  clearTimeout(box._timer);
  box._timer = setTimeout(() => { box.className = "toast"; }, error ? 12000 : 5000);
}

// Ask for confirmation in the page's dialog; `extra` (a node) may hold inputs. Resolves true
// when confirmed.
export function confirmAction(text, extra = null, okLabel = "Confirm") {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  const holder = $("confirm-extra");
  holder.replaceChildren(...(extra ? [extra] : []));
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    (extra?.querySelector("select, input") || $("confirm-ok")).focus();
  });
}

// Run an action on the dashboard's server; returns its answer, or shows its error and
// returns null.
export async function act(verb, body) {
  let resp;
  try {
    resp = await fetch(`/api/actions/${verb}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Tasker": "1" },
      body: JSON.stringify(body),
    });
  } catch (err) {
    toast(`${verb} failed: ${err}`, true);
    return null;
  }
  let doc = {};
  try { doc = await resp.json(); } catch { doc = { error: resp.statusText }; }
  if (!resp.ok) {
    toast(`${verb} failed: ${doc.error || resp.status}`, true);
    return null;
  }
  toast(doc.message || "done");
  return doc;
}

export function priorityPicker(current = "normal") {
  const label = el("label", { text: "New priority " });
  const select = el("select", { name: "priority", id: "confirm-priority" });
  for (const p of ["low", "normal", "high", "critical"]) {
    const o = el("option", { text: p });
    if (p === current) o.selected = true;
    select.append(o);
  }
  label.append(select);
  return label;
}

// Confirm then run one of the task actions on `ids`; `group` for a group's pause/resume.
export async function taskAction(verb, ids, extra = {}) {
  const what = ids.length === 1 ? `task ${ids[0]}` : `${ids.length} tasks`;
  if (verb === "priority") {
    const picker = priorityPicker(extra.priority);
    if (!(await confirmAction(`Change the priority of ${what}?`, picker, "Change"))) return null;
    return act("priority", { ids, priority: picker.querySelector("select").value });
  }
  const texts = {
    cancel: `Cancel ${what}? A running task gets SIGTERM, then SIGKILL.`,
    restart: `Submit ${what} again as a new task?`,
    pause: `Pause ${what} (SIGSTOP)?`,
    resume: `Resume ${what}?`,
  };
  const labels = { cancel: "Cancel the task", restart: "Re-run", pause: "Pause", resume: "Resume" };
  if (!(await confirmAction(texts[verb], null, labels[verb]))) return null;
  return act(verb, { ids });
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${Math.round(s * 1000)}ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)}s`;
  const m = Math.floor(s / 60), sec = Math.round(s % 60);
  if (m < 60) return `${m}m${sec ? sec + "s" : ""}`;
  return `${Math.floor(m / 60)}h${m % 60 ? (m % 60) + "m" : ""}`;
}

export function duration(t) {
  if (t.run !== null && t.run !== undefined) return fmtSeconds(t.run);
  if (t.started_at && !t.ended_at) return fmtSeconds((Date.now() - new Date(t.started_at)) / 1000);
  return "–";
}

export function exitText(t) {
  if (t.exit_code !== null && t.exit_code !== undefined) return String(t.exit_code);
  if (t.signal) return `sig${t.signal}`;
  return "–";
}

export const LIVE = new Set(["queued", "running", "paused", "stashed", "waiting", "scheduled"]);

export function stateBadge(state) {
  return el("span", { class: `state s-${state}`, text: state.replace("_", " ") });
}

export function rate(x) {
  return x === null || x === undefined ? "–" : `${x.toFixed(x < 10 ? 1 : 0)}/s`;
}
