// embedhost console. No framework, no build step; every call is an ordinary API call with
// the key typed into the page (sessionStorage: this tab only, never a URL or a cookie).
"use strict";

const KEY = "embedhost.apiKey";
const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
const state = { models: [], prompts: {}, prev: null, timer: null };

function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  const key = apiKey();
  if (key) headers.Authorization = "Bearer " + key;
  // Relative paths: the page works behind a proxy prefix (server.root_path).
  const r = await fetch(path, Object.assign({}, options, { headers, cache: "no-store", credentials: "omit" }));
  let body = null;
  try {
    body = await r.json();
  } catch (e) {
    body = null;
  }
  if (!r.ok) {
    const message = body && body.error ? body.error.message : r.statusText;
    const err = new Error(r.status + ": " + message);
    err.status = r.status;
    throw err;
  }
  return body;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function setStatus(text, bad) {
  const s = $("status");
  s.textContent = text || "";
  s.className = bad ? "bad" : "";
}

function authProblem(err) {
  if (err.status === 401) return "This server needs an API key with the embed scope: type it above.";
  if (err.status === 403) return "This key lacks the embed scope (or this model): " + err.message;
  return null;
}

// --- models --------------------------------------------------------------------------------

async function loadModels() {
  const [info, list] = await Promise.all([api("info"), api("v1/models")]);
  $("version").textContent = "v" + info.version + " · " + info.environment + " · " + info.instance_id;
  const cards = {};
  for (const c of list.data) cards[c.id] = c;
  state.prompts = {};
  for (const c of list.data) {
    const m = info.models.find((x) => x.name === c.id.split("@")[0]);
    // /v1/models lists each model's prompts ({name: text}); older servers do not.
    const prompts = c.prompts || (m && m.prompts) || null;
    state.prompts[c.id] = prompts;
  }
  state.models = list.data.map((c) => c.id);
  const body = $("models").querySelector("tbody");
  body.replaceChildren();
  for (const m of info.models) {
    const tr = el("tr");
    tr.append(el("td", m.name), el("td", m.status, "state-" + m.status), el("td", m.version),
      el("td", m.engine), el("td", m.dimensions === null ? "-" : m.dimensions, "num"));
    const td = el("td");
    const prompts = (cards[m.name] && cards[m.name].prompts) || m.prompts || {};
    const names = Object.keys(prompts);
    if (!names.length) td.append(el("span", "none", "muted"));
    for (const name of names) {
      const chip = el("span", name, "prompt");
      chip.title = prompts[name];
      td.append(chip);
    }
    tr.append(td);
    body.append(tr);
  }
  const select = $("model");
  const previous = select.value;
  select.replaceChildren();
  for (const id of state.models) {
    const o = el("option", id);
    o.value = id;
    select.append(o);
  }
  if (state.models.includes(previous)) select.value = previous;
  fillInputTypes();
}

function fillInputTypes() {
  const select = $("input-type");
  const previous = select.value;
  const prompts = state.prompts[$("model").value] || {};
  const names = Object.keys(prompts);
  select.replaceChildren();
  const none = el("option", names.length ? "(none)" : "(model has no prompts)");
  none.value = "";
  select.append(none);
  for (const name of names) {
    const o = el("option", name);
    o.value = name;
    o.title = prompts[name];
    select.append(o);
  }
  select.disabled = !names.length;
  if (names.includes(previous)) select.value = previous;
  updateSnippets();
}

// --- live numbers --------------------------------------------------------------------------

function quantile(buckets, q) {
  // Prometheus' histogram_quantile on cumulative [le, count] pairs.
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [leRaw, count] of buckets) {
    const le = leRaw === "+Inf" ? Infinity : leRaw;
    if (count >= rank) {
      if (le === Infinity) return prevLe;
      if (count === prevCount) return le;
      return prevLe + (le - prevLe) * (rank - prevCount) / (count - prevCount);
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

function bucketDelta(now, before) {
  if (!before || before.length !== now.length) return now;
  return now.map(([le, c], i) => [le, c - before[i][1]]);
}

const fmt = (v, digits = 1) => (v === null || v === undefined || Number.isNaN(v) ? "-" : v.toFixed(digits));
const ms = (s) => (s === null || s === undefined ? "-" : (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms");

function showStats(s) {
  if (!s.metrics) {
    $("live-note").textContent = s.reason || "metrics are off (metrics.enabled: false)";
    return;
  }
  const prev = state.prev;
  const t = performance.now();
  let win = null;
  if (prev) {
    const dt = (t - prev.t) / 1000;
    const dreq = s.requests.total - prev.s.requests.total;
    win = {
      dt,
      rps: dreq / dt,
      tps: (s.texts - prev.s.texts) / dt,
      eps: (s.requests.errors - prev.s.requests.errors) / dt,
      latency: bucketDelta(s.latency_seconds.buckets, prev.s.latency_seconds.buckets),
      batchCount: s.batch_size.count - prev.s.batch_size.count,
      batchSum: s.batch_size.sum - prev.s.batch_size.sum,
    };
  }
  state.prev = { t, s };
  const recent = win && win.latency.length && win.latency[win.latency.length - 1][1] > 0;
  const lat = recent ? win.latency : s.latency_seconds.buckets;
  $("live-note").textContent = recent ? "last " + win.dt.toFixed(0) + " s" : "latency since start";
  $("stat-rps").textContent = win ? fmt(win.rps) : "-";
  $("stat-tps").textContent = win ? fmt(win.tps) : "-";
  $("stat-eps").textContent = win ? fmt(win.eps) : "-";
  $("stat-p50").textContent = ms(quantile(lat, 0.5));
  $("stat-p99").textContent = ms(quantile(lat, 0.99));
  $("stat-queue").textContent = fmt(s.queue.depth, 0) + " / " + fmt(s.queue.capacity, 0);
  const batch = win && win.batchCount > 0
    ? win.batchSum / win.batchCount
    : (s.batch_size.count ? s.batch_size.sum / s.batch_size.count : null);
  $("stat-batch").textContent = fmt(batch);
  $("stat-cache").textContent = s.cache && s.cache.hit_rate !== null ? (s.cache.hit_rate * 100).toFixed(1) + "%" : "-";
  const body = $("workers").querySelector("tbody");
  body.replaceChildren();
  for (const w of s.workers) {
    const tr = el("tr");
    tr.append(
      el("td", w.model + "@" + w.version + " #" + w.replica),
      el("td", w.up ? "up" : "down", w.up ? "state-ready" : "down"),
      el("td", w.rss_bytes === null ? "-" : (w.rss_bytes / 1048576).toFixed(0) + " MiB", "num"),
      el("td", w.restarts, "num"),
    );
    body.append(tr);
  }
}

async function poll() {
  try {
    showStats(await api("console/stats"));
  } catch (err) {
    const auth = authProblem(err);
    if (auth) setStatus(auth, true);
  }
  await loadJobs();
}

// --- batch jobs (the Batch API's own list: this key's ten newest) ---------------------------

async function loadJobs() {
  let list;
  try {
    list = await api("v1/batches?limit=10");
  } catch (err) {
    $("jobs-section").hidden = true; // the Batch API is off, or this key may not list
    return;
  }
  $("jobs-section").hidden = list.data.length === 0;
  const body = $("jobs").querySelector("tbody");
  body.replaceChildren();
  for (const b of list.data) {
    const c = b.request_counts || {};
    const tr = el("tr");
    tr.append(
      el("td", b.id),
      el("td", b.status),
      el("td", c.completed),
      el("td", c.failed),
      el("td", c.total),
      el("td", new Date(b.created_at * 1000).toLocaleString())
    );
    body.append(tr);
  }
}

// --- playground ----------------------------------------------------------------------------

function texts() {
  return $("texts").value.split("\n").map((s) => s.trim()).filter((s) => s.length);
}

function requestBody() {
  const body = { model: $("model").value, input: texts() };
  const inputType = $("input-type").value;
  if (inputType) body.input_type = inputType;
  return body;
}

function heat(v) {
  // -1 (red) .. 0 (white) .. 1 (blue); CSSOM styles are allowed by the page's CSP.
  const x = Math.max(-1, Math.min(1, v));
  const hue = x >= 0 ? 217 : 4;
  const light = 100 - Math.abs(x) * 55;
  return "hsl(" + hue + ", 70%, " + light + "%)";
}

async function embed() {
  $("error").textContent = "";
  const body = requestBody();
  if (!body.input.length) {
    $("error").textContent = "Type at least one text.";
    return;
  }
  const button = $("embed");
  button.disabled = true;
  try {
    const res = await api("v1/embeddings", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const vectors = res.data.slice().sort((a, b) => a.index - b.index).map((d) => d.embedding);
    showResult(body.input, vectors);
  } catch (err) {
    $("error").textContent = authProblem(err) || err.message;
  } finally {
    button.disabled = false;
  }
}

function showResult(inputs, vectors) {
  const norms = vectors.map((v) => Math.sqrt(v.reduce((a, x) => a + x * x, 0)));
  const normBody = $("norms").querySelector("tbody");
  normBody.replaceChildren();
  inputs.forEach((text, i) => {
    const tr = el("tr");
    const th = el("th", (i + 1) + ". " + text, "text");
    th.title = text;
    const td = el("td", norms[i].toFixed(4), "num norm");
    td.dataset.i = String(i);
    tr.append(th, td, el("td", vectors[i].length + " dims", "muted"));
    normBody.append(tr);
  });
  const head = $("similarity").querySelector("thead");
  const body = $("similarity").querySelector("tbody");
  head.replaceChildren();
  body.replaceChildren();
  const htr = el("tr");
  htr.append(el("th"));
  inputs.forEach((_, j) => htr.append(el("th", String(j + 1))));
  head.append(htr);
  inputs.forEach((text, i) => {
    const tr = el("tr");
    const th = el("th", (i + 1) + ". " + text, "text");
    th.title = text;
    tr.append(th);
    inputs.forEach((_, j) => {
      let dot = 0;
      for (let k = 0; k < vectors[i].length; k++) dot += vectors[i][k] * vectors[j][k];
      const cos = dot / (norms[i] * norms[j] || 1);
      const td = el("td", cos.toFixed(4), "cell");
      td.dataset.i = String(i);
      td.dataset.j = String(j);
      td.style.backgroundColor = heat(cos);
      td.style.color = Math.abs(cos) > 0.6 ? "#fff" : "";
      tr.append(td);
    });
    body.append(tr);
  });
  $("result").hidden = false;
}

// --- snippets ------------------------------------------------------------------------------

function baseUrl() {
  return new URL(".", window.location.href).href.replace(/\/$/, "");
}

function updateSnippets() {
  const body = requestBody();
  if (!body.input.length) body.input = ["hello"];
  const json = JSON.stringify(body);
  $("snippet-curl").textContent =
    "curl -s " + baseUrl() + "/v1/embeddings \\\n" +
    "  -H \"Authorization: Bearer $EMBEDHOST_API_KEY\" \\\n" +
    "  -H \"Content-Type: application/json\" \\\n" +
    "  -d '" + json.replace(/'/g, "'\\''") + "'";
  const lines = [
    "import os",
    "",
    "from openai import OpenAI",
    "",
    "client = OpenAI(base_url=" + JSON.stringify(baseUrl() + "/v1") +
      ", api_key=os.environ.get(\"EMBEDHOST_API_KEY\", \"none\"))",
    "resp = client.embeddings.create(",
    "    model=" + JSON.stringify(body.model) + ",",
    "    input=" + JSON.stringify(body.input) + ",",
  ];
  if (body.input_type) lines.push("    extra_body={\"input_type\": " + JSON.stringify(body.input_type) + "},");
  lines.push(")", "vectors = [d.embedding for d in resp.data]");
  $("snippet-openai").textContent = lines.join("\n");
}

// --- wiring --------------------------------------------------------------------------------

async function refresh() {
  setStatus("");
  try {
    await loadModels();
  } catch (err) {
    setStatus(authProblem(err) || "Cannot read the models: " + err.message, true);
  }
  await poll();
}

function showKeyState() {
  $("key-state").textContent = apiKey() ? "key set (this tab only)" : "no key";
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("api-key").value.trim();
    if (value) sessionStorage.setItem(KEY, value);
    $("api-key").value = "";
    state.prev = null;
    showKeyState();
    refresh();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showKeyState();
    refresh();
  });
  $("model").addEventListener("change", fillInputTypes);
  $("input-type").addEventListener("change", updateSnippets);
  $("texts").addEventListener("input", updateSnippets);
  $("embed").addEventListener("click", embed);
  showKeyState();
  updateSnippets();
  refresh();
  state.timer = setInterval(poll, POLL_MS);
});
