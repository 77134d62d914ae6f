// A task's page: its record and its output, live (as `taskerctl logs -f`).
import { $, el, taskAction, fmtTime, fmtSeconds, exitText, stateBadge, LIVE } from "./common.js";

const taskId = Number(location.pathname.split("/").pop());
//: The most characters of each stream the page keeps (the daemon keeps its own limit).
const MAX_SHOWN = 2_000_000;
const shown = { stdout: 0, stderr: 0 };
let current = null;
document.title = `Task ${taskId} – Tasker dashboard`;
$("title").textContent = `Task ${taskId}`;

const FIELDS = [
  ["command", "Command"], ["state", "State"], ["error", "Error"], ["exit_code", "Exit code"],
  ["signal", "Signal"], ["priority", "Priority"], ["group", "Group"], ["labels", "Labels"],
  ["queued_at", "Queued"], ["started_at", "Started"], ["ended_at", "Ended"], ["wait", "Wait"],
  ["run", "Run"], ["attempts", "Attempts"], ["pid", "PID"], ["worker", "Worker"], ["node", "Node"],
  ["timeout", "Timeout"], ["retries", "Retries"], ["once", "At most once"], ["cwd", "Directory"],
  ["after", "After"], ["waiting_on", "Waiting on"], ["start_at", "Not before"],
  ["enqueue_at", "Enqueue at"], ["on_finish", "On finish"], ["restarted_from", "Re-run of"],
  ["schedule_id", "Schedule"], ["submitted_by", "Submitted by"],
];

function value(key, t) {
  const v = t[key];
  if (key.endsWith("_at")) return fmtTime(v);
  if (["wait", "run", "timeout"].includes(key)) return fmtSeconds(v);
  if (key === "exit_code") return exitText(t);
  if (key === "labels") return Object.entries(v || {}).map(([k, x]) => `${k}=${x}`).join(", ") || "–";
  if (Array.isArray(v)) return v.length ? v.join(", ") : "–";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (key === "submitted_by") return v || "local (the Unix socket)";
  return v === null || v === undefined || v === "" ? "–" : String(v);
}

function showRecord(t) {
  current = t;
  $("state").replaceChildren(stateBadge(t.state));
  const items = [];
  for (const [key, label] of FIELDS) {
    if (!(key in t)) continue;
    const v = value(key, t);
    if (v === "–" && !["exit_code", "started_at", "ended_at", "error"].includes(key)) continue;
    const dd = el("dd", {});
    if (key === "restarted_from" && t[key]) dd.append(el("a", { href: `/task/${t[key]}`, text: v }));
    else if (key === "command") dd.append(el("code", { text: v }));
    else dd.textContent = v;
    items.push(el("div", {}, el("dt", { text: label }), dd));
  }
  $("record").replaceChildren(...items);
  const live = LIVE.has(t.state);
  for (const b of document.querySelectorAll(".actions button")) {
    const act = b.dataset.act;
    b.disabled = (act === "cancel" && !live) || (act === "restart" && live)
      || (act === "pause" && t.state !== "running") || (act === "resume" && t.state !== "paused")
      || (act === "priority" && !["queued", "stashed"].includes(t.state));
  }
}

function append(stream, text) {
  const pre = $(stream);
  if (shown[stream] >= MAX_SHOWN) return;
  const room = MAX_SHOWN - shown[stream];
  const part = text.length > room ? text.slice(0, room) : text;
  shown[stream] += part.length;
  const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
  pre.append(document.createTextNode(part));
  if (stick) pre.scrollTop = pre.scrollHeight;
  if (shown[stream] >= MAX_SHOWN) {
    $(`${stream}-note`).textContent = `The page shows the first ${MAX_SHOWN.toLocaleString()} characters; taskerctl logs ${taskId} prints all the daemon kept.`;
  }
}

function end(t) {
  showRecord(t);
  $("follow").textContent = "ended";
  for (const stream of ["stdout", "stderr"]) {
    const note = $(`${stream}-note`);
    if (t[`${stream}_truncated`]) {
      note.textContent = `Truncated: the daemon kept only the first part of its ${stream} (its output_limit); the rest was dropped.`;
      note.classList.add("warn");
    } else if (!shown[stream]) {
      note.textContent = `No ${stream}.`;
    }
  }
}

const source = new EventSource(`/api/tasks/${taskId}/stream`);
source.addEventListener("record", (e) => {
  const t = JSON.parse(e.data);
  showRecord(t);
  $("follow").textContent = LIVE.has(t.state) ? "following its output live…" : "";
  $("conn").textContent = "live";
});
source.addEventListener("output", (e) => {
  const d = JSON.parse(e.data);
  append(d.stream, d.text);
});
source.addEventListener("end", (e) => {
  end(JSON.parse(e.data));
  source.close();
});
source.addEventListener("failure", (e) => {
  $("follow").textContent = JSON.parse(e.data).message;
  $("follow").classList.add("warn");
  source.close();
});
source.onerror = () => { $("conn").textContent = "reconnecting…"; };

for (const b of document.querySelectorAll(".actions button")) {
  b.addEventListener("click", async () => {
    const answer = await taskAction(b.dataset.act, [taskId], { priority: current?.priority });
    if (answer && b.dataset.act === "restart") {
      const id = (answer.message.match(/(\d+)\s*$/) || [])[1];
      if (id) $("follow").replaceChildren(el("a", { href: `/task/${id}`, text: `the re-run is task ${id}` }));
    }
  });
}
