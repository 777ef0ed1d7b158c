// voicebridge console, Debug panel: every peer connection of the selected call (the agent legs and any
// browser that joined) with its SDP raw and explained, the ICE/DTLS/connection timeline, live RTP stats
// (refreshed every second while the call is on), the call's per-turn latency and its timeline figure.
// Data: GET /api/calls/{id}/debug (everything), /api/calls/{id}/stats (stats only, cheap) and
// /api/calls/{id}/timeline.svg (shown as an image: an <img> runs nothing in the SVG and parses none of it here).
// It follows the call the console selects (ui.js), and its state. Everything from the server is rendered with
// textContent, never as HTML.

import { adminToken } from "./auth.js";
import { $, api, h, onCallChange, request } from "./ui.js";

const STATS_MS = 1000;
const DEBUG_MS = 5000; // the full report (SDP, timeline) changes rarely: a browser joins, a state moves

const dbg = { callId: null, timer: null, ended: false, pcs: new Map(), lastDebug: 0, busy: false, gen: 0 };

const num = (v, digits = 0) => (typeof v === "number" ? v.toFixed(digits) : "–");
const fmtBytes = (b) => (typeof b !== "number" ? "–" : b >= 1e6 ? `${(b / 1e6).toFixed(2)} MB` : b >= 1e3 ? `${(b / 1e3).toFixed(1)} kB` : `${b} B`);
const STAT_LABEL = {
  "outbound-rtp": "RTP sent", "inbound-rtp": "RTP received", "remote-inbound-rtp": "peer got ours (RTCP)",
  "remote-outbound-rtp": "peer sent (RTCP)", "transport-sent": "transport sent", "transport-received": "transport received",
};

// ---- the selected call ----------------------------------------------------------------------------------
onCallChange(({ id, state }) => {
  if (!id) return;
  if (id !== dbg.callId) showDebug(id);
  if (state) debugState(state);
});

function showDebug(callId) {
  dbg.gen += 1;
  Object.assign(dbg, { callId, ended: false, pcs: new Map(), lastDebug: 0, busy: false });
  $("debug").replaceChildren();
  $("turn-latency").replaceChildren();
  $("call-timeline").replaceChildren();
  $("no-debug").hidden = false;
  $("debug-download").href = `/api/calls/${encodeURIComponent(callId)}/debug?download=1`;
  if (dbg.timer) clearInterval(dbg.timer);
  dbg.timer = setInterval(tick, STATS_MS);
  refreshDebug();
}

function debugState(state) {
  // A leg's SDP exists once it is connecting/live; at the end the last snapshot is final.
  if (state === "ended") debugEnded();
  else if (state === "live" || state === "ending") refreshDebug();
}

function debugEnded() {
  dbg.ended = true;
  if (dbg.timer) { clearInterval(dbg.timer); dbg.timer = null; }
  refreshDebug();
}

// A plain link cannot send the admin token: with one, fetch the report and save it from a blob instead.
$("debug-download").addEventListener("click", async (ev) => {
  if (!adminToken() || !dbg.callId) return;
  ev.preventDefault();
  const callId = dbg.callId;
  try {
    const resp = await request(`/api/calls/${encodeURIComponent(callId)}/debug?download=1`);
    const url = URL.createObjectURL(await resp.blob());
    h("a", { href: url, download: `${callId}-debug.json` }).click();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (e) {
    console.warn("debug download:", e.message);
  }
});

// ---- polling --------------------------------------------------------------------------------------------
async function tick() {
  if (!dbg.callId || dbg.busy) return;
  if (Date.now() - dbg.lastDebug >= DEBUG_MS) return refreshDebug();
  const gen = dbg.gen;
  dbg.busy = true;
  try {
    const data = await api(`/api/calls/${encodeURIComponent(dbg.callId)}/stats`);
    if (gen !== dbg.gen) return;
    const names = Object.keys(data.stats || {});
    if (names.some((n) => !dbg.pcs.has(n))) { dbg.lastDebug = 0; return; } // someone joined: full report next tick
    for (const n of names) {
      const card = dbg.pcs.get(n);
      card.stats.replaceWith(card.stats = statsTable(data.stats[n]));
      card.chips.replaceWith(card.chips = stateChips(data.states?.[n]));
    }
    if (data.state === "ended") debugEnded();
  } catch (e) {
    console.warn("debug stats:", e.message);
  } finally {
    if (gen === dbg.gen) dbg.busy = false;
  }
}

async function refreshDebug() {
  if (!dbg.callId) return;
  const gen = dbg.gen;
  dbg.busy = true;
  try {
    const data = await api(`/api/calls/${encodeURIComponent(dbg.callId)}/debug`);
    if (gen !== dbg.gen) return;
    dbg.lastDebug = Date.now();
    render(data);
    await refreshTimeline(gen);
  } catch (e) {
    console.warn("debug report:", e.message);
  } finally {
    if (gen === dbg.gen) dbg.busy = false;
  }
}

// The timeline figure, redrawn with the full report (every 5 s while the call is on, and once at the end).
async function refreshTimeline(gen) {
  const resp = await request(`/api/calls/${encodeURIComponent(dbg.callId)}/timeline.svg`);
  const blob = await resp.blob();
  if (gen !== dbg.gen) return;
  const box = $("call-timeline");
  const old = box.querySelector("img");
  const img = h("img", { src: URL.createObjectURL(blob), alt: "timeline: speech of each party, overlaps, "
    + "interruptions, tool calls, blackouts", class: "timeline-figure" });
  img.addEventListener("load", () => { if (old) URL.revokeObjectURL(old.src); }, { once: true });
  box.replaceChildren(h("h4", {}, "Timeline"), img);
}

// ---- rendering ------------------------------------------------------------------------------------------
function render(data) {
  const pcs = data.peer_connections || [];
  $("no-debug").hidden = pcs.length > 0;
  const open = new Set([...document.querySelectorAll("#debug details[open]")].map((d) => d.dataset.key));
  const cards = pcs.map((pc) => pcCard(pc, open));
  $("debug").replaceChildren(...cards.map((c) => c.el));
  dbg.pcs = new Map(cards.map((c) => [c.name, c]));
  renderLatency(data.turn_latency);
}

function pcCard(pc, open) {
  const chips = stateChips(pc.states);
  const stats = statsTable(pc.stats);
  const details = (key, title, ...body) => {
    const d = h("details", { "data-key": `${pc.name}:${key}` }, h("summary", {}, title), ...body);
    if (open.has(`${pc.name}:${key}`)) d.open = true;
    return d;
  };
  const el = h("article", { class: `pc-card ${pc.closed ? "closed" : ""}`, "data-pc": pc.name },
    h("header", { class: "pc-head" },
      h("span", { class: `pc-name ${pc.name}` }, pc.name),
      h("span", { class: "muted small" }, pc.kind === "agent" ? "agent leg" : pc.kind),
      chips),
    h("div", { class: "pc-section" }, h("h4", {}, "RTP stats"), stats),
    h("div", { class: "pc-section sdp-explained" }, h("h4", {}, "SDP explained"), explainedView(pc)),
    details("timeline", `State timeline (${(pc.timeline || []).length})`, timelineView(pc.timeline || [])),
    details("codecs", "All codecs", codecsView(pc.explained)),
    details("local", `Local SDP (${pc.local?.type || "none yet"})`, h("pre", { class: "sdp" }, pc.local?.sdp || "")),
    details("remote", `Remote SDP (${pc.remote?.type || "none yet"})`, h("pre", { class: "sdp" }, pc.remote?.sdp || "")));
  return { name: pc.name, el, chips, stats };
}

function stateChips(states) {
  const s = states || {};
  const dtls = Object.values(s.dtls || {});
  const chip = (label, value) => h("span", { class: `chip st-${value || "none"}`, title: label }, `${label} ${value || "–"}`);
  return h("span", { class: "chips" }, chip("conn", s.connection), chip("ICE", s.ice_connection),
    chip("DTLS", dtls.length ? dtls.join("/") : null), chip("gathering", s.ice_gathering));
}

function statsTable(snap) {
  if (!snap || !snap.rows?.length) return h("p", { class: "empty" }, "No stats yet.");
  const head = h("tr", {}, ...["", "packets", "bytes", "lost", "jitter ms", "RTT ms", "kbit/s", "pkt/s"].map((t) => h("th", {}, t)));
  const rows = snap.rows.map((r) => h("tr", { "data-stat": r.type },
    h("td", { class: "stat-name" }, STAT_LABEL[r.type] || r.type),
    h("td", { class: "num" }, num(r.packets)), h("td", { class: "num" }, fmtBytes(r.bytes)),
    h("td", { class: `num${r.lost > 0 ? " warn" : ""}` }, r.lost == null ? "–" : r.fraction_lost != null ? `${r.lost} (${(r.fraction_lost * 100).toFixed(1)}%)` : num(r.lost)),
    h("td", { class: "num" }, num(r.jitter_ms, 1)), h("td", { class: "num" }, num(r.rtt_ms, 1)),
    h("td", { class: "num" }, num(r.kbps, 1)), h("td", { class: "num" }, num(r.pps, 0))));
  return h("table", { class: "stats" }, h("thead", {}, head), h("tbody", {}, ...rows));
}

function codecText(c) {
  const fmtp = Object.entries(c.fmtp || {}).map(([k, v]) => (v ? `${k}=${v}` : k)).join(";");
  return `${c.name}/${c.clock_rate}${c.channels > 1 ? `/${c.channels}` : ""}${fmtp ? ` (${fmtp})` : ""}`;
}

function sectionLine(m, other) {
  const parts = [];
  if (m.kind === "application") {
    parts.push(`data channel · sctp-port ${m.sctp_port ?? "–"}${m.max_message_size ? ` · max-message-size ${m.max_message_size}` : ""}`);
  } else {
    parts.push(m.direction || "");
    if (m.codecs?.length) parts.push(codecText(m.codecs[0]) + (m.codecs.length > 1 ? ` +${m.codecs.length - 1}` : ""));
  }
  parts.push(`setup ${m.setup}${other ? `→${other.setup}` : ""}`);
  parts.push(m.rtcp_mux || m.kind === "application" ? "" : "no rtcp-mux");
  return parts.filter(Boolean).join(" · ");
}

function candidatesText(m) {
  if (!m.candidates?.length) return "no candidates";
  return m.candidates.map((c) => `${c.type} ${c.transport} ${c.address}:${c.port}`).join(", ");
}

function sideView(label, ex, other) {
  const s = ex.session || {};
  const fp = (ex.media?.[0]?.fingerprints || [])[0];
  return h("div", { class: "sdp-side" },
    h("div", { class: "sdp-side-head" }, h("b", {}, `${label}: ${ex.role}`),
      h("span", { class: "muted" }, ` · ${s.bundle?.length ? `BUNDLE ${s.bundle.join(" ")}` : "no BUNDLE"}${s.ice_lite ? " · ice-lite" : ""}`),
      fp ? h("span", { class: "muted mono small" }, ` · ${fp.algorithm} ${fp.hash.slice(0, 17)}…`) : null),
    h("ul", { class: "sections" }, ...(ex.media || []).map((m, i) => h("li", { "data-kind": m.kind },
      h("span", { class: `kind ${m.kind}` }, `${m.kind} mid ${m.mid ?? "?"}`), " ",
      h("span", {}, sectionLine(m, other?.media?.[i])),
      h("div", { class: "muted small mono" }, candidatesText(m))))));
}

function warningsView(list, label) {
  if (!list?.length) return null;
  return h("ul", { class: "warnings" }, ...list.map((w) => h("li", { class: "warning", "data-code": w.code },
    h("b", {}, `${label}${w.code}`), w.mid != null ? ` (mid ${w.mid})` : "", `: ${w.message}`)));
}

function explainedView(pc) {
  if (pc.explain_error) return h("p", { class: "warning" }, `Cannot explain this SDP: ${pc.explain_error}`);
  const ex = pc.explained;
  if (!ex) return h("p", { class: "empty" }, "No SDP yet.");
  const cp = ex.counterpart;
  const warnings = [...(ex.warnings || []), ...(cp?.warnings || []).map((w) => ({ ...w, code: `remote: ${w.code}` }))];
  return h("div", {},
    sideView("local", ex, cp), cp ? sideView("remote", cp, ex) : h("p", { class: "empty" }, "No remote SDP yet."),
    warnings.length ? warningsView(warnings, "⚠ ") : h("p", { class: "ok-line" }, "✓ no warnings: Opus, data channel, BUNDLE, DTLS roles and candidates all fit"));
}

function codecsView(ex) {
  if (!ex) return h("p", { class: "empty" }, "No SDP yet.");
  const rows = [];
  for (const [side, e] of [["local", ex], ["remote", ex.counterpart]]) {
    if (!e) continue;
    for (const m of e.media || []) for (const c of m.codecs || []) {
      rows.push(h("tr", {}, h("td", {}, side), h("td", {}, m.mid ?? ""), h("td", { class: "num" }, c.payload_type),
        h("td", { class: "mono" }, codecText(c)), h("td", { class: "small" }, (c.rtcp_fb || []).join(", "))));
    }
  }
  return h("table", { class: "stats" }, h("thead", {}, h("tr", {}, ...["side", "mid", "PT", "codec (fmtp)", "rtcp-fb"].map((t) => h("th", {}, t)))),
    h("tbody", {}, ...rows));
}

function timelineView(timeline) {
  return h("ol", { class: "timeline" }, ...timeline.map((e) => h("li", { class: `tl st-${e.state}` },
    h("span", { class: "num muted" }, `${e.t.toFixed(3)}s`), h("span", { class: "tl-layer" }, e.layer.replace("_", " ")),
    h("span", { class: "tl-state" }, e.state), e.transport ? h("span", { class: "muted small" }, e.transport) : null)));
}

function renderLatency(tl) {
  const rows = tl?.rows || [];
  const box = $("turn-latency");
  if (!rows.length) { box.replaceChildren(); return; }
  const source = tl.source === "turn_gaps" ? "gap between one agent's turn and the other's reply" : tl.source;
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))].filter((k) => k !== "text");
  const cell = (r, k) => {
    const v = r[k];
    if (typeof v !== "number") return h("td", {}, String(v ?? ""));
    return h("td", { class: "num" }, k.endsWith("_s") ? v.toFixed(3) : String(v));
  };
  const head = h("tr", {}, ...keys.map((k) => h("th", {}, k.replace(/_/g, " "))));
  const body = rows.map((r) => h("tr", { title: r.text || "" }, ...keys.map((k) => cell(r, k))));
  box.replaceChildren(h("h4", {}, "Per-turn latency ", h("span", { class: "muted small" }, `(${source})`)),
    h("table", { class: "stats latency" }, h("thead", {}, head), h("tbody", {}, ...body)));
}
