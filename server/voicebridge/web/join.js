// voicebridge console: join the selected live call from this browser.
//   Listen     receive-only: two audio tracks (caller party, CS party), mixed by the page.
//   Take over  your microphone replaces the caller agent (on hold); you hear the CS agent.
//   Hand back  the caller agent gets the call back (and is told what the CS agent said meanwhile).
//   Hang up    (as the human caller) ends the whole call.
// Each join fetches a short-lived token bound to this call and role; the API key never reaches the page.
// It follows the call the console selects, and its state, through ui.js.
// Test hook: window.vbJoin.stats() -> {role, connectionState, parties: {caller|cs|mic: {bytes, packets, lost, level, peak}},
//   remote: the address:port the media flows to (the selected ICE candidate pair's remote candidate), or null}
// (packets, lost: the stream's inbound-rtp packetsReceived, packetsLost, from one getStats); vbJoin.join(role,
// {impair, impairSeed}) joins with this browser's own path impaired (the join's ?impair=, docs/impairment.md).

import { $, api, h, isLive, onCallChange, request, selectedCall } from "./ui.js";

const METER_MS = 100;
const PARTIES = { listen: ["caller", "cs"], takeover: ["cs"] };
const LABELS = { caller: "Caller", cs: "CS agent", mic: "Your mic" };

const s = {
  role: null, callId: null, token: null, pc: null, mic: null, participantId: null,
  ctx: null, parties: {}, timer: null, error: null, connectionState: "new", busy: false, remote: null,
};

function partyState(name) {
  if (!s.parties[name]) s.parties[name] = { bytes: 0, packets: 0, lost: 0, level: 0, peak: 0, trackId: null, analyser: null };
  return s.parties[name];
}

function setStatus(text) { $("join-status").textContent = text; }

function render() {
  const { id, state } = selectedCall();
  const live = isLive(state);
  const joined = !!s.pc && s.callId === id;
  $("join-listen").disabled = !live || s.busy || (joined && s.role === "listen");
  $("join-takeover").disabled = !live || s.busy || (joined && s.role === "takeover");
  $("join-handback").hidden = !(joined && s.role === "takeover");
  $("join-hangup").hidden = !(joined && s.role === "takeover");
  $("join-leave").hidden = !joined;
  $("join-meters").hidden = Object.keys(s.parties).length === 0;
}

// With the join token: that token alone (ui.js never adds the admin token to a request that has one).
function apiPost(path, { token, json, sdp } = {}) {
  if (sdp !== undefined) return request(path, { method: "POST", token, headers: { "Content-Type": "application/sdp" }, body: sdp });
  return request(path, { method: "POST", token, json: json || {} });
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
  const audio = h("audio", { autoplay: "", "data-party": name });
  audio.srcObject = stream;
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
        if (p) { p.bytes = r.bytesReceived || 0; p.packets = r.packetsReceived || 0; p.lost = r.packetsLost || 0; }
      });
      // Where the media goes: with a cluster, the worker owning the call, never the front door.
      const transport = [...report.values()].find((r) => r.type === "transport" && r.selectedCandidatePairId);
      const pair = transport && report.get(transport.selectedCandidatePairId);
      const remote = pair && report.get(pair.remoteCandidateId);
      s.remote = remote ? `${remote.address}:${remote.port}` : null;
    } catch { /* closing */ }
  }
  drawMeters();
}

function drawMeters() {
  const rows = Object.entries(s.parties).map(([name, p]) => {
    const bar = h("div", { class: "join-bar-fill" });
    bar.style.width = `${Math.min(100, Math.round(p.level * 400))}%`; // the one style set here: it is the level
    return h("div", { class: `join-row ${name}`, "data-party": name },
      h("span", {}, LABELS[name] || name),
      h("div", { class: "join-meter" }, bar),
      h("span", { class: "muted num" }, name === "mic" ? "" : `${(p.bytes / 1024).toFixed(1)} KB`));
  });
  $("join-meters").replaceChildren(...rows);
}

async function join(role, { impair, impairSeed } = {}) {
  const { id } = selectedCall();
  if (!id || s.busy) return;
  await leave(false);
  s.busy = true;
  s.error = null;
  s.parties = {};
  render();
  try {
    setStatus(role === "listen" ? "joining as a listener…" : "taking over…");
    const { token } = await api(`/api/calls/${encodeURIComponent(id)}/tokens`, { method: "POST", json: { role } });
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
    const query = new URLSearchParams({ role });
    if (impair) query.set("impair", impair);
    if (impairSeed !== undefined) query.set("impair_seed", String(impairSeed));
    const resp = await apiPost(`/api/calls/${encodeURIComponent(id)}/join?${query}`,
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
  $("join-listen").addEventListener("click", () => join("listen"));
  $("join-takeover").addEventListener("click", () => join("takeover"));
  $("join-handback").addEventListener("click", handback);
  $("join-hangup").addEventListener("click", humanHangup);
  $("join-leave").addEventListener("click", () => leave(true));
  // Another call selected, or this one over, and a joined browser leaves it (a null state is not known yet).
  onCallChange(({ id, state }) => {
    if (s.pc && (id !== s.callId || (state && !isLive(state)))) cleanup(id !== s.callId ? "" : "the call ended");
    render();
  });
  window.vbJoin = {
    join, leave, handback, hangup: humanHangup,
    stats: () => ({
      role: s.role, callId: s.callId, participantId: s.participantId, connectionState: s.pc ? s.pc.connectionState : s.connectionState,
      error: s.error, remote: s.remote,
      parties: Object.fromEntries(Object.entries(s.parties).map(([k, p]) => [k, { bytes: p.bytes, packets: p.packets, lost: p.lost, level: p.level, peak: p.peak }])),
    }),
  };
  render();
}

init();
