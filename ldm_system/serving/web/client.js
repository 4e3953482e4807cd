// Talking to `ldm serve` from the page (loaded before page.js, which uses these names).
//
// Every API call sends the bearer token (asked for once, kept in sessionStorage) and an X-Request-Id,
// whose GET /progress/{id} the page polls while the call runs; a 404 there means "no progress yet".
"use strict";

const TOKEN_KEY = "ldm-serve-token";
const POLL_MS = 250;
const session = { token: sessionStorage.getItem(TOKEN_KEY) };

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

// ---- token and API ------------------------------------------------------------------------
let pendingToken = null; // one dialog for every caller that met a 401

function askToken(message) {
  if (pendingToken) return pendingToken;
  const dialog = $("#token-dialog");
  const input = $("input[name=token]", dialog);
  $(".token-message", dialog).textContent = message;
  input.value = "";
  pendingToken = new Promise((resolve, reject) => {
    dialog.addEventListener("close", () => {
      pendingToken = null;
      const token = input.value.trim();
      if (dialog.returnValue === "ok" && token) {
        session.token = token;
        sessionStorage.setItem(TOKEN_KEY, token);
        $("#token-button").hidden = false;
        resolve(token);
      } else {
        reject(new Error("This server needs a token; none was given."));
      }
    }, { once: true });
  });
  dialog.returnValue = "";
  dialog.showModal();
  input.focus();
  return pendingToken;
}

// After a 401: the first time "needs a token", after that "refused".
const askForToken = () => askToken(session.token ? "The server refused that token; enter it again."
  : "This server needs its bearer token.");

function headers(requestId, json) {
  const h = {};
  if (session.token) h.Authorization = `Bearer ${session.token}`;
  if (requestId) h["X-Request-Id"] = requestId;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function api(path, body, { requestId = null, signal = null } = {}) {
  for (;;) {
    const r = await fetch(path, {
      method: body ? "POST" : "GET", headers: headers(requestId, Boolean(body)),
      body: body ? JSON.stringify(body) : undefined, signal,
    });
    if (r.status === 401) {
      await askForToken();
      continue;
    }
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) throw new Error(data && data.detail ? String(data.detail) : `the server answered HTTP ${r.status}`);
    return data;
  }
}

// Asks for the token at once when the server wants one: any guarded path answers 401 without it.
async function checkToken() {
  for (;;) {
    const r = await fetch(`/progress/${newRequestId()}`, { headers: headers() });
    if (r.status !== 401) return;
    await askForToken();
  }
}

function newRequestId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12)); // works outside secure contexts too
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Polls GET /progress/{id} until stopped; a 404 means "no progress reported yet", not an error.
function watchProgress(requestId, view) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    try {
      const r = await fetch(`/progress/${requestId}`, { headers: headers() });
      if (!stopped && r.ok) view.progress(await r.json());
    } catch (e) { /* the server is busy or gone: the call itself will say */ }
    if (!stopped) { view.tick(); timer = setTimeout(tick, POLL_MS); }
  };
  timer = setTimeout(tick, POLL_MS / 2);
  return () => { stopped = true; clearTimeout(timer); };
}
