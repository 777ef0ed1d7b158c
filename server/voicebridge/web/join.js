// voicebridge console: join the selected live call from this browser.
//   Listen     receive-only: two audio tracks (caller party, CS party), mixed by the page.
//   Take over  your microphone replaces the caller agent (on hold); you hear the CS agent.
//   Hand back  the caller agent gets the call back (and is told what the CS agent said meanwhile).
//   Hang up    (as the human caller) ends the whole call.
// Each join fetches a short-lived token bound to this call and role; the API key never reaches the page.
// Test hook: window.vbJoin.stats() -> {role, connectionState, parties: {caller|cs|mic: {bytes, packets, level, peak}}}.

import { authFetch } from "./auth.js";

const $ = (id) => document.getElementById(id);
const METER_MS = 100;
const PARTIES = { listen: ["caller", "cs"], takeover: ["cs"] };
const LABELS = { caller: "Caller", cs: "CS agent", mic: "Your mic" };

const s = {
  role: null, callId: null, token: null, pc: null, mic: null, participantId: null,
  ctx: null, parties: {}, timer: null, error: null, connectionState: "new", busy: false,
};

function partyState(name) {
  if (!s.parties[name]) s.parties[name] = { bytes: 0, packets: 0, level: 0, peak: 0, trackId: null, analyser: null };
  return s.parties[name];
}

function selectedCall() {
  const id = ($("call-id")?.textContent || "").trim();
  const state = ($("call-state")?.textContent || "").trim();
  return { id: id || null, live: state === "live" || state === "connecting" };
}

function setStatus(text) { $("join-status").textContent = text; }

function render() {
  const { id, live } = selectedCall();
  const joined = !!s.pc && s.callId === id;
  $("join-listen").disabled = !live || s.busy || (joined && s.role === "listen");
  $("join-takeover").disabled = !live || s.busy || (joined && s.role === "takeover");
  $("join-handback").hidden = !(joined && s.role === "takeover");
  $("join-hangup").hidden = !(joined && s.role === "takeover");
  $("join-leave").hidden = !joined;
  $("join-meters").hidden = Object.keys(s.parties).length === 0;
}

async function apiPost(path, { token, json, sdp } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  let body;
  if (sdp !== undefined) { headers["Content-Type"] = "application/sdp"; body = sdp; }
  else { headers["Content-Type"] = "application/json"; body = JSON.stringify(json || {}); }
  // With a join token, that token alone; without one (minting it), the admin token when the server has one.
  const resp = await (token ? fetch : authFetch)(path, { method: "POST", headers, body });
  if (!resp.ok) {
    const err = await resp.json().catch(() => ({}));
    throw new Error(err?.error?.message || `${resp.status} ${resp.statusText}`);
  }
  return resp;
}

function iceGatheringDone(pc) {
  // The server answers once, without trickle ICE: the offer must carry every candidate.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", check); resolve(); } };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000); // whatever we have by then
  });
}

function analyse(name, stream) {
  const p = partyState(name);
  const source = s.ctx.createMediaStreamSource(stream);
  p.analyser = s.ctx.createAnalyser();
  p.analyser.fftSize = 1024;
  source.connect(p.analyser);
}

function onTrack(ev) {
  const index = s.pc.getTransceivers().indexOf(ev.transceiver);
  const name = PARTIES[s.role][index] || `track${index}`;
  const stream = new MediaStream([ev.track]);
  // Chromium only feeds a remote WebRTC track into WebAudio while a media element plays it as well.
  const audio = document.createElement("audio");
  audio.autoplay = true;
  audio.srcObject = stream;
  audio.dataset.party = name;
  $("join-audio").append(audio);
  audio.play().catch(() => {});
  partyState(name).trackId = ev.track.id;
  analyse(name, stream);
}

async function sample() {
  const buf = new Float32Array(1024);
  for (const p of Object.values(s.parties)) {
    if (!p.analyser) continue;
    p.analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    p.level = Math.sqrt(sum / buf.length);
    p.peak = Math.max(p.peak, p.level);
  }
  if (s.pc && s.pc.connectionState !== "closed") {
    try {
      const report = await s.pc.getStats();
      report.forEach((r) => {
        if (r.type !== "inbound-rtp" || r.kind !== "audio") return;
        const p = Object.values(s.parties).find((x) => x.trackId && x.trackId === r.trackIdentifier);
        if (p) { p.bytes = r.bytesReceived || 0; p.packets = r.packetsReceived || 0; }
      });
    } catch { /* closing */ }
  }
  drawMeters();
}

function drawMeters() {
  const rows = Object.entries(s.parties).map(([name, p]) => {
    const width = Math.min(100, Math.round(p.level * 400));
    const bar = document.createElement("div");
    bar.className = "join-bar-fill";
    bar.style.width = `${width}%`;
    const meter = document.createElement("div");
    meter.className = "join-meter";
    meter.append(bar);
    const row = document.createElement("div");
    row.className = `join-row ${name}`;
    row.dataset.party = name;
    const label = document.createElement("span");
    label.textContent = LABELS[name] || name;
    const bytes = document.createElement("span");
    bytes.className = "muted num";
    bytes.textContent = name === "mic" ? "" : `${(p.bytes / 1024).toFixed(1)} KB`;
    row.append(label, meter, bytes);
    return row;
  });
  $("join-meters").replaceChildren(...rows);
}

async function join(role) {
  const { id } = selectedCall();
  if (!id || s.busy) return;
  await leave(false);
  s.busy = true;
  s.error = null;
  s.parties = {};
  render();
  try {
    setStatus(role === "listen" ? "joining as a listener…" : "taking over…");
    const tokenResp = await apiPost(`/api/calls/${encodeURIComponent(id)}/tokens`, { json: { role } });
    const { token } = await tokenResp.json();
    Object.assign(s, { role, callId: id, token });
    s.ctx = new AudioContext();
    const pc = new RTCPeerConnection({ iceServers: [] });
    s.pc = pc;
    pc.ontrack = onTrack;
    pc.onconnectionstatechange = () => {
      s.connectionState = pc.connectionState;
      if (["failed", "closed"].includes(pc.connectionState) && s.pc === pc) cleanup(`connection ${pc.connectionState}`);
      else setStatus(`${role === "listen" ? "listening" : "you are the caller"} (${pc.connectionState})`);
    };
    if (role === "takeover") {
      s.mic = await navigator.mediaDevices.getUserMedia({ audio: true });
      pc.addTransceiver(s.mic.getAudioTracks()[0], { direction: "sendrecv", streams: [s.mic] });
      analyse("mic", s.mic);
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" }); // the caller party
      pc.addTransceiver("audio", { direction: "recvonly" }); // the CS party
    }
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc);
    const resp = await apiPost(`/api/calls/${encodeURIComponent(id)}/join?role=${role}`,
      { token, sdp: pc.localDescription.sdp });
    s.participantId = resp.headers.get("X-Participant-Id");
    await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
    s.timer = setInterval(sample, METER_MS);
  } catch (e) {
    s.error = e.message;
    setStatus(`cannot ${role === "listen" ? "listen" : "take over"}: ${e.message}`);
    await leave(false);
  } finally {
    s.busy = false;
    render();
  }
}

function cleanup(why) {
  // Keep the last numbers (tests and people read them after the connection is gone).
  if (s.timer) { clearInterval(s.timer); s.timer = null; }
  if (s.mic) { s.mic.getTracks().forEach((t) => t.stop()); s.mic = null; }
  if (s.pc) { s.pc.close(); s.pc = null; s.connectionState = "closed"; }
  if (s.ctx) { s.ctx.close().catch(() => {}); s.ctx = null; }
  for (const p of Object.values(s.parties)) { p.analyser = null; p.level = 0; }
  $("join-audio").replaceChildren();
  if (why) setStatus(why);
  render();
}

async function leave(tell = true) {
  if (!s.pc) return;
  if (tell && s.participantId) {
    await apiPost(`/api/calls/${encodeURIComponent(s.callId)}/leave`,
      { token: s.token, json: { participant_id: s.participantId } }).catch(() => {});
  }
  cleanup(tell ? "left the call" : "");
}

async function handback() {
  if (!s.pc || s.role !== "takeover") return;
  try {
    await apiPost(`/api/calls/${encodeURIComponent(s.callId)}/handback`, { token: s.token });
    cleanup("handed back to the caller agent");
  } catch (e) { setStatus(`cannot hand back: ${e.message}`); }
}

async function humanHangup() {
  if (!s.pc || s.role !== "takeover") return;
  try {
    await apiPost(`/api/calls/${encodeURIComponent(s.callId)}/hangup`, { token: s.token });
    setStatus("you hung up");
  } catch (e) { setStatus(`cannot hang up: ${e.message}`); }
}

function init() {
  const style = document.createElement("style");
  style.textContent = `
    .join-bar { display: flex; gap: .4rem; align-items: center; flex-wrap: wrap; }
    .join-meters { display: grid; gap: .25rem; margin: .4rem 0; max-width: 34rem; }
    .join-row { display: grid; grid-template-columns: 6rem 1fr 5rem; gap: .5rem; align-items: center; }
    .join-meter { height: .6rem; background: #0002; border-radius: .3rem; overflow: hidden; }
    .join-bar-fill { height: 100%; background: #2a9d8f; transition: width .1s linear; }
    .join-row.caller .join-bar-fill { background: #e76f51; }
    .join-row.mic .join-bar-fill { background: #457b9d; }`;
  document.head.append(style);
  $("join-listen").addEventListener("click", () => join("listen"));
  $("join-takeover").addEventListener("click", () => join("takeover"));
  $("join-handback").addEventListener("click", handback);
  $("join-hangup").addEventListener("click", humanHangup);
  $("join-leave").addEventListener("click", () => leave(true));
  // Follow the console's selected call and its state without reaching into app.js.
  const observer = new MutationObserver(() => {
    const { id, live } = selectedCall();
    if (s.pc && (id !== s.callId || !live)) cleanup(id !== s.callId ? "" : "the call ended");
    render();
  });
  for (const el of [$("call-id"), $("call-state")]) observer.observe(el, { childList: true, characterData: true, subtree: true });
  window.vbJoin = {
    join, leave, handback, hangup: humanHangup,
    stats: () => ({
      role: s.role, callId: s.callId, participantId: s.participantId, connectionState: s.pc ? s.pc.connectionState : s.connectionState,
      error: s.error,
      parties: Object.fromEntries(Object.entries(s.parties).map(([k, p]) => [k, { bytes: p.bytes, packets: p.packets, level: p.level, peak: p.peak }])),
    }),
  };
  render();
}

init();
