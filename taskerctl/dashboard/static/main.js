// The main page: header, chart, task table with filters and pages, submit. Live by SSE.
import uPlot from "./uPlot.esm.js";
import {
  $, el, act, confirmAction, taskAction, toast, fmtTime, duration, exitText, stateBadge, rate, LIVE,
} from "./common.js";

const params = new URLSearchParams(location.search);
let pageToken = params.get("page") || "";
let older = [];  // the tokens of the newer pages, to go back
let source = null;
let lastPage = null;

// -- filters -------------------------------------------------------------------------------------

function fillFilters() {
  $("f-state").value = params.getAll("state").join(",");
  if ($("f-state").value !== params.getAll("state").join(",")) $("f-state").value = "";
  $("f-label").value = params.getAll("label").join(",");
  $("f-text").value = params.get("q") || "";
  $("f-group").dataset.want = params.get("group") || "";
}

function filterQuery() {
  const q = new URLSearchParams();
  if ($("f-state").value) q.set("state", $("f-state").value);
  if ($("f-group").value) q.set("group", $("f-group").value);
  if ($("f-label").value.trim()) q.set("label", $("f-label").value.trim());
  if ($("f-text").value.trim()) q.set("q", $("f-text").value.trim());
  return q;
}

function connect() {
  const q = filterQuery();
  if (pageToken) q.set("page", pageToken);
  history.replaceState(null, "", q.toString() ? `/?${q}` : "/");
  if (source) source.close();
  source = new EventSource(`/api/stream?${q}`);
  source.addEventListener("header", (e) => onHeader(JSON.parse(e.data)));
  source.addEventListener("page", (e) => onPage(JSON.parse(e.data)));
  source.onopen = () => setConn("live", true);
  source.onerror = () => setConn("reconnecting to the dashboard…", false);
}

function setConn(text, ok) {
  const c = $("conn");
  c.textContent = text;
  c.classList.toggle("bad", !ok);
}

$("filters").addEventListener("submit", (e) => {
  e.preventDefault();
  pageToken = ""; older = [];
  $("rows").replaceChildren();
  connect();
});
$("filters").addEventListener("reset", () => {
  setTimeout(() => { pageToken = ""; older = []; $("rows").replaceChildren(); connect(); });
});

// -- header --------------------------------------------------------------------------------------

function text(id, value) { $(id).textContent = value ?? "–"; }

function onHeader(h) {
  if (!h.connected) {
    setConn(`taskerd unreachable: ${h.error}`, false);
    return;
  }
  setConn(`live · taskerd ${h.version}${h.shutting_down ? " · shutting down" : ""}`, true);
  text("w-busy", h.workers.busy);
  text("w-idle", h.workers.idle);
  text("w-burst", h.workers.burst);
  for (const p of ["critical", "high", "normal", "low"]) text(`q-${p}`, h.queued[p].toLocaleString());
  text("t-done", rate(h.throughput.done));
  text("t-arrivals", rate(h.throughput.arrivals));
  text("t-failed", (h.counts.failed + h.counts.timed_out + h.counts.lost).toLocaleString());
  renderGroups(h.groups);
  renderSchedules(h.schedules || []);
  addSamples(h.samples || []);
}

function renderSchedules(schedules) {
  const body = $("schedules");
  const key = JSON.stringify(schedules.map((s) => [s.id, s.next_at, s.submitted, s.skipped]));
  if (body.dataset.key === key) return;
  body.dataset.key = key;
  if (!schedules.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: "7", text: "none" })));
    return;
  }
  body.replaceChildren(...schedules.map((s) => {
    const button = el("button", { type: "button", text: "Remove…",
      "aria-label": `Remove schedule ${s.id}` });
    button.addEventListener("click", async () => {
      const sure = await confirmAction(
        `Remove schedule ${s.id} (${s.when}: ${s.command})? The tasks it submitted stay.`,
        null, "Remove");
      if (sure) await act("unschedule", { id: s.id });
    });
    return el("tr", { "data-schedule": String(s.id) },
      el("th", { scope: "row", text: String(s.id) }),
      el("td", { text: s.when + (s.overlap ? "" : ", no overlap") }),
      el("td", {}, el("code", { text: s.command })),
      el("td", { text: s.group || "default" }),
      el("td", { text: fmtTime(s.next_at) }),
      el("td", { text: `${s.submitted} / ${s.skipped}` }),
      el("td", {}, button));
  }));
}

function renderGroups(groups) {
  const body = $("groups");
  const rows = groups.map((g) => {
    const verb = g.paused ? "resume" : "pause";
    const button = el("button", { type: "button", text: g.paused ? "Resume…" : "Pause…",
      "aria-label": `${g.paused ? "Resume" : "Pause"} group ${g.name}` });
    button.addEventListener("click", async () => {
      const sure = await confirmAction(
        g.paused ? `Resume group ${g.name} and its paused tasks?`
          : `Pause group ${g.name}? It starts no task, and its running tasks are stopped (SIGSTOP).`,
        null, g.paused ? "Resume" : "Pause");
      if (sure) await act(verb, { groups: [g.name] });
    });
    return el("tr", { "data-group": g.name },
      el("th", { scope: "row", text: g.name }),
      el("td", { text: String(g.running) }),
      el("td", { text: g.queued.toLocaleString() }),
      el("td", { text: `${g.workers}/${g.parallel}${g.max_parallel > g.parallel ? "–" + g.max_parallel : ""}` }),
      el("td", { text: g.paused ? "paused" : "active" }),
      el("td", {}, button));
  });
  const key = JSON.stringify(groups.map((g) => [g.name, g.running, g.queued, g.workers, g.paused]));
  if (body.dataset.key !== key) {
    const focused = document.activeElement && body.contains(document.activeElement)
      ? document.activeElement.getAttribute("aria-label") : null;
    body.replaceChildren(...rows);
    body.dataset.key = key;
    if (focused) body.querySelector(`[aria-label="${CSS.escape(focused)}"]`)?.focus();
  }
  for (const select of document.querySelectorAll(".group-select")) {
    const names = groups.map((g) => g.name);
    const have = [...select.options].slice(1).map((o) => o.value);
    if (JSON.stringify(have) === JSON.stringify(names)) continue;
    const keep = select.value || select.dataset.want || "";
    select.replaceChildren(select.options[0], ...names.map((n) => el("option", { text: n, value: n })));
    select.value = keep;
  }
}

// -- chart ---------------------------------------------------------------------------------------

const series = { t: [], done: [], arrivals: [], wait_p50: [], wait_p95: [], run_p50: [], run_p95: [] };
let rateChart = null, timesChart = null;

function css(name) { return getComputedStyle(document.body).getPropertyValue(name).trim(); }

function makeCharts() {
  const width = Math.max(280, Math.min(($("chart-rate").parentElement.clientWidth || 600) - 8, 760));
  const axis = { stroke: css("--fg"), grid: { stroke: css("--grid") }, ticks: { stroke: css("--grid") } };
  const base = { width, height: 180, axes: [axis, axis], legend: { live: false } };
  rateChart = new uPlot({
    ...base,
    series: [{}, { label: "ended/s", stroke: css("--c1"), width: 2 },
      { label: "arriving/s", stroke: css("--c2"), width: 1.5, dash: [4, 3] }],
    scales: { y: { range: (u, min, max) => [0, Math.max(1, max)] } },
  }, [series.t, series.done, series.arrivals], $("chart-rate"));
  const sec = { ...axis, values: (u, vals) => vals.map((v) => (v < 1 ? `${Math.round(v * 1000)}ms` : `${v}s`)) };
  timesChart = new uPlot({
    ...base, axes: [axis, sec],
    series: [{}, { label: "wait p50", stroke: css("--c2"), width: 2 },
      { label: "wait p95", stroke: css("--c2"), dash: [4, 3] },
      { label: "run p50", stroke: css("--c1"), width: 2 },
      { label: "run p95", stroke: css("--c1"), dash: [4, 3] }],
    scales: { y: { range: (u, min, max) => [0, Math.max(0.01, max)] } },
  }, [series.t, series.wait_p50, series.wait_p95, series.run_p50, series.run_p95], $("chart-times"));
}

let lastSeq = 0;  // the newest sample drawn: a new connection (filters, pages) sends them all again

function addSamples(pushed) {
  const samples = pushed.filter((s) => s.seq > lastSeq);
  if (!samples.length) return;
  lastSeq = samples[samples.length - 1].seq;
  for (const s of samples) {
    for (const k of Object.keys(series)) series[k].push(k === "t" ? s.t : s[k]);
  }
  const over = series.t.length - 600;
  if (over > 0) for (const k of Object.keys(series)) series[k].splice(0, over);
  if (!rateChart) makeCharts();
  rateChart.setData([series.t, series.done, series.arrivals]);
  timesChart.setData([series.t, series.wait_p50, series.wait_p95, series.run_p50, series.run_p95]);
  const chart = $("chart-rate");  // what is drawn, for the tests
  chart.dataset.points = String(series.t.length);
  chart.dataset.ordered = String(series.t.every((t, i) => i === 0 || t > series.t[i - 1]));
  const last = samples[samples.length - 1];
  $("chart-text").textContent = `Now: ${rate(last.done)} ended, ${rate(last.arrivals)} arriving.`;
}

// -- the table -----------------------------------------------------------------------------------

function cells(t) {
  const link = el("a", { href: `/task/${t.id}`, text: String(t.id) });
  const labels = Object.entries(t.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  return [
    link, stateBadge(t.state), t.priority, t.group,
    el("code", { text: t.command, title: t.command }), labels,
    fmtTime(t.queued_at), fmtTime(t.started_at), duration(t), exitText(t),
  ];
}

function actions(t) {
  const box = el("div", { class: "row-actions" });
  const add = (verb, label) => {
    const b = el("button", { type: "button", "data-act": verb, text: label,
      "aria-label": `${label.replace("…", "")} task ${t.id}` });
    b.addEventListener("click", () => taskAction(verb, [t.id], { priority: t.priority }));
    box.append(b);
  };
  if (LIVE.has(t.state)) add("cancel", "Cancel…");
  else add("restart", "Re-run…");
  if (t.state === "queued" || t.state === "stashed") add("priority", "Priority…");
  if (t.state === "running") add("pause", "Pause…");
  if (t.state === "paused") add("resume", "Resume…");
  return box;
}

function onPage(p) {
  lastPage = p;
  const body = $("rows");
  const existing = new Map([...body.children].map((tr) => [tr.dataset.id, tr]));
  const wanted = [];
  for (const t of p.rows) {
    const key = JSON.stringify([t.state, t.priority, t.started_at, t.ended_at, t.exit_code, t.labels]);
    let tr = existing.get(String(t.id));
    if (!tr || tr.dataset.key !== key) {
      const focusedAct = tr && tr.contains(document.activeElement) ? document.activeElement.dataset.act : null;
      const fresh = el("tr", { "data-id": String(t.id), "data-state": t.state });
      fresh.dataset.key = key;
      cells(t).forEach((c, i) => {
        const cell = el(i === 0 ? "th" : "td", i === 0 ? { scope: "row" } : {});
        cell.append(c);
        fresh.append(cell);
      });
      fresh.append(el("td", {}, actions(t)));
      if (tr) tr.replaceWith(fresh);
      tr = fresh;
      if (focusedAct) tr.querySelector(`[data-act="${focusedAct}"]`)?.focus();
    }
    wanted.push(tr);
  }
  // Keep rows in place where they are (focus stays), add and remove the others.
  const keep = new Set(wanted);
  for (const tr of [...body.children]) if (!keep.has(tr)) tr.remove();
  wanted.forEach((tr, i) => {
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
  });
  const first = p.rows.length ? p.rows[0].id : null, last = p.rows.length ? p.rows[p.rows.length - 1].id : null;
  $("page-info").textContent = p.error ? `error: ${p.error}`
    : p.rows.length ? `tasks ${first}–${last}${pageToken ? "" : " (newest)"}` : "no task matches";
  $("p-next").disabled = !p.next;
  $("p-prev").disabled = !pageToken;
  $("p-first").disabled = !pageToken;
  let note = "";
  if ($("f-text").value.trim()) {
    note = `Text search: looked at ${p.scanned.toLocaleString()} tasks`;
    if (p.bounded) note += ` (it stops at ${p.scan_limit.toLocaleString()}; "Older" searches on)`;
    note += ".";
  }
  $("scan-note").textContent = note;
  if (p.error) toast(p.error, true);
}

$("p-next").addEventListener("click", () => {
  if (!lastPage || !lastPage.next) return;
  older.push(pageToken);
  pageToken = lastPage.next;
  connect();
});
$("p-prev").addEventListener("click", () => {
  pageToken = older.length ? older.pop() : "";
  connect();
});
$("p-first").addEventListener("click", () => { pageToken = ""; older = []; connect(); });

// -- submit --------------------------------------------------------------------------------------

$("submit-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = e.target;
  const data = Object.fromEntries(new FormData(form));
  for (const k of ["shell", "once", "stashed", "after_any", "overlap"]) data[k] = form.elements[k].checked;
  const where = data.group || "default";
  const what = data.every || data.cron ? "Make a schedule of" : "Submit";
  const sure = await confirmAction(
    `${what} “${data.command}” in group ${where} at ${data.priority} priority?`, null, "Submit");
  if (!sure) return;
  const answer = await act("submit", data);
  if (answer) form.elements.command.value = "";
});

fillFilters();
connect();
