// voicebridge console: what its modules share, so none of them reads another's DOM.
//   h()            builds an element; text is always set as text, never parsed as HTML
//   api()          calls the REST API with the admin token (auth.js) and turns an error answer into an Error
//                  carrying the server's message; request() is the same but returns the Response itself
//   announceCall() app.js says which call is selected and what state it is in; onCallChange() is how
//                  join.js and debug.js follow it (a late subscriber hears the current call at once)

import { authFetch } from "./auth.js";

export const $ = (id) => document.getElementById(id);

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

// fetch() of an API path. Options as fetch's, plus `json` (a body sent as JSON) and `token` (a join token: then
// that token alone is sent, never the admin token). Throws Error(the server's error message) when not ok.
export async function request(path, { json, token, headers, ...init } = {}) {
  const hdrs = new Headers(headers || {});
  if (json !== undefined) {
    hdrs.set("Content-Type", "application/json");
    init.body = JSON.stringify(json);
  }
  if (token) hdrs.set("Authorization", `Bearer ${token}`);
  const resp = await (token ? fetch : authFetch)(path, { cache: "no-store", ...init, headers: hdrs });
  if (!resp.ok) {
    const body = await resp.json().catch(() => ({}));
    throw new Error(body?.error?.message || `${resp.status} ${resp.statusText}`);
  }
  return resp;
}

// request(), then the answer's JSON ({} when it has none).
export async function api(path, options = {}) {
  const resp = await request(path, options);
  return resp.json().catch(() => ({}));
}

// ---- the selected call -----------------------------------------------------------------------------------
const calls = new EventTarget();
let selected = { id: null, state: null };

// `state` is null until known (a call was just picked and its details are on their way).
export function announceCall(id, state = null) {
  if (id === selected.id && state === selected.state) return;
  selected = { id, state };
  calls.dispatchEvent(new CustomEvent("call", { detail: selected }));
}

export function selectedCall() { return selected; }

export const isLive = (state) => state === "live" || state === "connecting";

// listener({id, state}) on every change of the selected call or of its state, and now if one is selected.
export function onCallChange(listener) {
  calls.addEventListener("call", (ev) => listener(ev.detail));
  if (selected.id) listener(selected);
}
