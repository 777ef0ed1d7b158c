// voicebridge console: start calls, list them, and follow one live (transcript, tool calls, raw events).
// Plain ES module, no build step. Everything from the server is rendered with textContent, never as HTML.

import { wsUrl } from "./auth.js";
import { $, api, h, announceCall } from "./ui.js";

const POLL_MS = 2000;
const MAX_EVENT_ROWS = 1500; // the DOM slows down beyond this; the full log is in the call's events.jsonl

const view = { callId: null, ws: null, lastSeq: 0, ended: false, events: [], turns: [], tools: [], state: null };

function notify(message) {
  const n = $("notice");
  n.textContent = message;
  n.hidden = !message;
  if (message) setTimeout(() => { if (n.textContent === message) n.hidden = true; }, 8000);
}

const fmtTime = (s) => (typeof s === "number" ? `${s.toFixed(1)}s` : "");
const shortId = (id) => id.replace(/^call_/, "");

// ---- calls list ------------------------------------------------------------------------------------------
let listing = false; // one listing at a time: the poll must not pile up requests waiting for the admin token

async function refreshCalls() {
  if (listing) return;
  listing = true;
  let data;
  try { data = await api("/api/calls"); } catch (e) { notify(`Cannot list calls: ${e.message}`); return; }
  finally { listing = false; }
  const list = $("call-list");
  list.replaceChildren(...data.calls.map((c) => h("li", {
      class: `call-row${c.id === view.callId ? " selected" : ""}`, "data-call": c.id, "data-state": c.state,
      onclick: () => selectCall(c.id), tabindex: "0",
    },
    h("div", { class: "row-top" }, h("span", { class: "mono" }, shortId(c.id)),
      h("span", { class: `state ${c.state}` }, c.state)),
    h("div", { class: "row-bottom muted" }, c.scenario,
      c.end_reason ? h("span", { class: "end-reason" }, ` · ${c.end_reason}`) : null,
      c.duration_s != null ? ` · ${fmtTime(c.duration_s)}` : ""),
  )));
  $("no-calls").hidden = data.calls.length > 0;
  $("live-count").textContent = data.live ? `(${data.live} live)` : "";
  const current = data.calls.find((c) => c.id === view.callId);
  if (current) renderHead(current);
}

// ---- one call --------------------------------------------------------------------------------------------
function renderHead(c) {
  $("call-title").textContent = c.title || c.scenario;
  $("call-id").textContent = c.id;
  renderState(c.state);
  $("call-end").textContent = c.end_reason ? `ended: ${c.end_reason}${c.ended_by ? ` (by ${c.ended_by})` : ""}` : "";
  $("call-duration").textContent = c.duration_s != null ? fmtTime(c.duration_s) : "";
  if (c.error) $("call-end").textContent += ` — ${c.error}`;
}

// The state of the call on screen: its badge, the hang-up button, and the other modules (join.js, debug.js).
function renderState(state) {
  const st = $("call-state");
  st.textContent = state;
  st.className = `state ${state}`;
  $("hangup").disabled = !(state === "connecting" || state === "live");
  announceCall(view.callId, state);
}

function selectCall(id) {
  if (view.ws) { view.ws.onclose = null; view.ws.close(); }
  Object.assign(view, { callId: id, ws: null, lastSeq: 0, ended: false, events: [], turns: [], tools: [] });
  history.replaceState(null, "", `#call=${encodeURIComponent(id)}`);
  $("call").hidden = false;
  $("placeholder").hidden = true;
  for (const el of ["transcript", "tool-calls", "events"]) $(el).replaceChildren();
  $("no-tools").hidden = false;
  $("event-count").textContent = "";
  document.querySelectorAll(".call-row").forEach((r) => r.classList.toggle("selected", r.dataset.call === id));
  announceCall(id); // its state is not known yet: until it is, nobody may join it
  api(`/api/calls/${encodeURIComponent(id)}`).then((c) => { if (c.id === view.callId) renderHead(c); })
    .catch((e) => notify(e.message));
  connect();
}

function connect() {
  const id = view.callId;
  const ws = new WebSocket(wsUrl(`/api/calls/${encodeURIComponent(id)}/events?since=${view.lastSeq}`));
  view.ws = ws;
  ws.onmessage = (m) => {
    if (view.callId !== id) return;
    const msg = JSON.parse(m.data);
    if (msg.seq) view.lastSeq = msg.seq;
    onMessage(msg);
  };
  ws.onclose = () => {
    // Reconnect where we left off unless the call is over (the server closes after `ended`).
    if (view.callId === id && !view.ended) setTimeout(() => view.callId === id && connect(), 1000);
  };
}

function onMessage({ kind, data }) {
  if (kind === "hello") {
    if (data.truncated) notify("The oldest events of this call were dropped from the server's memory.");
  } else if (kind === "state") {
    view.state = data;
    renderState(data);
  } else if (kind === "event") {
    addEvent(data);
  } else if (kind === "turn") {
    addTurn(data);
  } else if (kind === "tool_call") {
    addTool(data);
  } else if (kind === "ended") {
    view.ended = true;
    renderHead({ ...data, id: data.call_id || view.callId, title: data.title || $("call-title").textContent });
    refreshCalls();
  }
}

function addTurn(t) {
  const said = (t.kind || "said") === "said";
  const speaker = t.speaker || t.leg || "?";
  const text = t.text || (said ? "" : "(nothing recognised)");
  const li = h("li", { class: `turn ${speaker} ${said ? "said" : "heard"}`, "data-speaker": speaker },
    h("div", { class: "who" }, said ? (speaker === "cs" ? "CS agent" : speaker === "caller" ? "Caller" : speaker)
      : `${t.leg === "cs" ? "CS" : "caller"} heard`,
      h("span", { class: "muted" }, ` ${fmtTime(t.start)}`)),
    h("div", { class: "text" }, text));
  $("transcript").append(li);
  li.scrollIntoView({ block: "nearest" });
}

function pretty(value) {
  if (typeof value === "string") { try { value = JSON.parse(value); } catch { return value; } }
  return JSON.stringify(value);
}

function addTool(tc) {
  $("no-tools").hidden = true;
  const ok = tc.ok !== false;
  $("tool-calls").append(h("tr", { class: ok ? "ok" : "failed", "data-tool": tc.name },
    h("td", { class: "muted" }, fmtTime(tc.t)), h("td", {}, tc.leg || ""),
    h("td", { class: "mono" }, tc.name, ok ? "" : h("span", { class: "bad" }, " ✕")),
    h("td", { class: "mono small" }, pretty(tc.arguments ?? "")),
    h("td", { class: "mono small" }, tc.error ? `${tc.error}` : pretty(tc.output ?? "")),
    h("td", { class: "num" }, tc.duration_ms != null ? Math.round(tc.duration_ms) : "")));
}

function eventMatches(rec) {
  const leg = $("event-leg").value, dir = $("event-dir").value;
  const q = $("event-filter").value.trim().toLowerCase();
  if (leg && rec.leg !== leg) return false;
  if (dir && rec.direction !== dir) return false;
  if (!q) return true;
  return (rec.event?.type || "").toLowerCase().includes(q) || JSON.stringify(rec.event).toLowerCase().includes(q);
}

function eventRow(rec) {
  const type = rec.event?.type || "?";
  const row = h("li", { class: `ev ${rec.leg} ${rec.direction}${type === "error" ? " error" : ""}` },
    h("span", { class: "muted num" }, rec.t != null ? rec.t.toFixed(3) : ""),
    h("span", { class: `leg ${rec.leg}` }, rec.leg),
    h("span", { class: "dir" }, rec.direction === "out" ? "→" : "←"),
    h("span", { class: "type mono" }, type));
  row.addEventListener("click", () => {
    const open = row.querySelector("pre");
    if (open) open.remove(); else row.append(h("pre", { class: "json" }, JSON.stringify(rec.event, null, 2)));
  });
  return row;
}

function addEvent(rec) {
  view.events.push(rec);
  $("event-count").textContent = `(${view.events.length})`;
  if (!eventMatches(rec)) return;
  const list = $("events");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 30;
  list.append(eventRow(rec));
  while (list.childElementCount > MAX_EVENT_ROWS) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function refilter() {
  const rows = view.events.filter(eventMatches).slice(-MAX_EVENT_ROWS).map(eventRow);
  $("events").replaceChildren(...rows);
}

// ---- actions ---------------------------------------------------------------------------------------------
async function startCall(ev) {
  ev.preventDefault();
  const btn = $("start");
  btn.disabled = true;
  try {
    const call = await api("/api/calls", { method: "POST", json: { scenario: $("scenario").value } });
    await refreshCalls();
    selectCall(call.id);
  } catch (e) {
    notify(`Cannot start a call: ${e.message}`);
  } finally {
    btn.disabled = false;
  }
}

async function hangup() {
  if (!view.callId) return;
  $("hangup").disabled = true;
  try { await api(`/api/calls/${encodeURIComponent(view.callId)}/hangup`, { method: "POST" }); }
  catch (e) { notify(`Cannot hang up: ${e.message}`); }
}

async function init() {
  $("start-form").addEventListener("submit", startCall);
  $("hangup").addEventListener("click", hangup);
  for (const id of ["event-filter", "event-leg", "event-dir"]) $(id).addEventListener("input", refilter);
  try {
    const [{ scenarios }, health] = await Promise.all([api("/api/scenarios"), api("/healthz")]);
    $("scenario").replaceChildren(...scenarios.filter((s) => !s.error)
      .map((s) => h("option", { value: s.name, title: s.title }, `${s.name} — ${s.title}`)));
    $("backend").textContent = health.backend === "openai" ? "OpenAI Realtime" : "emulator";
    $("backend").classList.add(health.backend);
  } catch (e) {
    notify(`Cannot reach the server: ${e.message}`);
  }
  await refreshCalls();
  const m = location.hash.match(/call=([^&]+)/);
  if (m) selectCall(decodeURIComponent(m[1]));
  setInterval(refreshCalls, POLL_MS);
}

init();
