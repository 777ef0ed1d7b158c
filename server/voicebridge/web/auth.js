// voicebridge console: the management (admin) token. A server listening beyond loopback requires
// `Authorization: Bearer <VOICEBRIDGE_ADMIN_TOKEN>` on every /api/ request (the events WebSocket takes it as
// `?access_token=`, browsers cannot set WebSocket headers). The page gets it from its URL fragment
// (`#admin_token=...`: a fragment is never sent to the server nor logged), drops it from the address bar at once
// (so it is not bookmarked, shared or left in history) and keeps it in sessionStorage (this tab only, gone when
// the tab closes). Without one, the first 401 shows a small form asking for it; requests wait for it.
// Join tokens (join.js) are a different thing: requests that carry their own Authorization are left alone.

const KEY = "voicebridge.admin_token";
let waiting = null; // {promise, resolve} while the form is shown: every request that got 401 waits on it

function storage() {
  try { return window.sessionStorage; } catch { return null; } // storage can be disabled
}

function takeFromFragment() {
  const parts = location.hash.replace(/^#/, "").split("&").filter(Boolean);
  const mine = parts.find((p) => p.startsWith("admin_token="));
  if (!mine) return;
  let token = mine.slice("admin_token=".length);
  try { token = decodeURIComponent(token); } catch { /* keep it as typed */ }
  if (token) setAdminToken(token);
  const rest = parts.filter((p) => p !== mine).join("&");
  history.replaceState(null, "", `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`);
}

let memo = null; // when sessionStorage is unavailable: this page only

export function adminToken() { return storage()?.getItem(KEY) || memo; }

function setAdminToken(token) {
  memo = token;
  try { storage()?.setItem(KEY, token); } catch { /* full or disabled: memo still has it */ }
}

function forgetAdminToken() {
  memo = null;
  try { storage()?.removeItem(KEY); } catch { /* nothing stored */ }
}

// fetch() with the admin token; on 401 asks for a token (once for all waiting requests) and tries again.
export async function authFetch(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers || {});
    const own = headers.has("Authorization"); // a join token: not ours to replace or ask for
    const token = adminToken();
    if (!own && token) headers.set("Authorization", `Bearer ${token}`);
    const resp = await fetch(path, { ...options, headers });
    if (resp.status !== 401 || own) return resp;
    if (!(resp.headers.get("WWW-Authenticate") || "").includes('realm="voicebridge"')) {
      // Not the management guard's 401: this server has no admin token (a restart without one) and read ours
      // as a join token (an operator hang-up looks like a human's with one). Forget it and ask again without.
      if (!token) return resp;
      forgetAdminToken();
      continue;
    }
    await askForToken(token ? "The server refused this admin token." : "This server needs its admin token.", token);
  }
}

// The events WebSocket URL for `path` (on this server), with the token when there is one.
export function wsUrl(path) {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const token = adminToken();
  const sep = path.includes("?") ? "&" : "?";
  return `${proto}://${location.host}${path}${token ? `${sep}access_token=${encodeURIComponent(token)}` : ""}`;
}

function askForToken(why, refused) {
  // Another request already replaced the refused token: just try again with the new one.
  if (adminToken() && adminToken() !== refused) return Promise.resolve();
  if (!waiting) {
    let resolve;
    const promise = new Promise((r) => { resolve = r; });
    waiting = { promise, resolve };
  }
  showForm(why);
  return waiting.promise;
}

function showForm(why) {
  let form = document.getElementById("auth-form");
  if (!form) {
    form = document.createElement("form");
    form.id = "auth-form";
    form.className = "auth-form";
    form.innerHTML = `<span id="auth-why"></span>
      <label for="admin-token">Admin token</label>
      <input id="admin-token" type="password" autocomplete="current-password" required
        placeholder="VOICEBRIDGE_ADMIN_TOKEN" aria-label="admin token">
      <button id="auth-submit" type="submit" class="primary">Use token</button>`;
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = document.getElementById("admin-token");
      const token = input.value.trim();
      if (!token) return;
      setAdminToken(token);
      input.value = "";
      form.hidden = true;
      const w = waiting;
      waiting = null;
      if (w) w.resolve();
    });
    const topbar = document.querySelector(".topbar");
    if (topbar) topbar.after(form); else document.body.prepend(form);
  }
  document.getElementById("auth-why").textContent = why;
  form.hidden = false;
  document.getElementById("admin-token").focus();
}

takeFromFragment(); // at import, before app.js reads the fragment for `#call=`
