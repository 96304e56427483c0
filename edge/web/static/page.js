"use strict";
const REFRESH_MS = 5000;
// A token given as ?token=... in the page's address is passed on to the API the same way.
const QUERY = location.search;
const UNITS = {Cel: "\u00b0C", "%RH": "%RH", "/": "%", dBW: "dBW", lx: "lx", V: "V", ppm: "ppm", Pa: "Pa",
  hPa: "hPa", count: "", m: "m", "m/s": "m/s", W: "W", Wh: "Wh", dB: "dB", "%EL": "%"};
let serverNow = 0;

function $(id) { return document.getElementById(id); }
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
function ago(t) {
  if (t === null || t === undefined) return "never";
  const s = Math.max(0, serverNow - t);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}
function age(s) {
  if (s === null || s === undefined) return "\u2013";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function num(n) { return n === null || n === undefined ? "\u2013" : Number(n).toLocaleString("en-US"); }
function mb(b) { return (b / 1048576).toFixed(1); }
function value(r) {
  if ("v" in r) {
    const v = Math.abs(r.v) >= 100 ? Math.round(r.v * 10) / 10 : Math.round(r.v * 1000) / 1000;
    const u = r.u in UNITS ? UNITS[r.u] : (r.u || "");
    return v + (u ? (u === "\u00b0C" || u === "%" ? "" : " ") + u : "");
  }
  if ("vb" in r) return r.vb ? "yes" : "no";
  return r.vs;
}
function stat(label, val, cls) {
  const c = el("div", "card");
  c.append(el("div", "k", label), el("div", "v" + (cls ? " " + cls : ""), val));
  return c;
}

function render(s) {
  serverNow = s.now;
  document.title = "lorawan-edge " + s.edge_id;
  $("title").textContent = "lorawan-edge \u00b7 " + s.edge_id;
  const badge = $("badge");
  badge.textContent = s.healthy ? "healthy" : "problem";
  badge.className = "badge " + (s.healthy ? "ok" : "bad");
  const problems = clear($("problems"));
  for (const p of s.problems) problems.append(el("li", "", p));

  const c = s.counters, b = s.buffer;
  // Fields no field map covers yet: sent without a unit (docs/field-maps.md).
  const unmapped = Object.values(s.unmapped || {}).reduce((a, n) => a + n, 0);
  clear($("overview")).append(
    stat("ChirpStack", s.source.connected ? "connected" : "disconnected", s.source.connected ? "" : "bad"),
    stat("Buffer", b.error ? "unreadable" : mb(b.used_bytes) + " / " + Math.round(b.max_bytes / 1048576) + " MB",
      b.error ? "bad" : ""),
    stat("Uplinks buffered", num(b.uplinks)),
    stat("Received", num(c.received)),
    stat("Decoded", num((c.decoded || 0) + (c.chirpstack || 0))),
    stat("Decode errors", num(c.decode_failed), c.decode_failed ? "warn" : ""),
    stat("Unmapped fields", num(unmapped), unmapped ? "warn" : ""),
    stat("Duplicates", num(c.duplicates)),
    stat("Dropped", num(c.dropped), c.dropped ? "bad" : ""));

  const ups = clear($("upstreams"));
  for (const u of s.upstreams) {
    const card = el("div", "card");
    const head = el("div", "row");
    const name = el("strong");
    name.append(el("span", "dot" + (u.connected ? " up" : "")), document.createTextNode(u.name));
    head.append(name, el("span", u.stuck ? "bad" : "muted", u.connected ? "connected" : "not connected"));
    const t = el("table");
    const rows = [["Backlog", num(u.backlog) + " uplinks"], ["Oldest undelivered", age(u.oldest_undelivered_age_s)],
      ["Delivered", num(u.delivered)], ["Dropped", num(u.dropped)], ["Last delivery", ago(u.last_delivery)]];
    for (const [k, v] of rows) { const tr = el("tr"); tr.append(el("td", "k", k), el("td", "", v)); t.append(tr); }
    card.append(head, t);
    // Once the upstream is back, its last error is history, not an alarm.
    if (u.last_error) card.append(el("div", u.connected ? "muted" : "muted bad",
      (u.connected ? "Recovered from: " : "Last error: ") + u.last_error));
    ups.append(card);
  }
  if (!s.upstreams.length) ups.append(el("div", "card muted", "No upstreams configured."));

  const devs = clear($("devices"));
  for (const d of s.devices) {
    const card = el("div", "card");
    const head = el("div", "row");
    head.append(el("span", "mono", d.dev_eui), el("span", "muted", ago(d.last_time)));
    const meta = el("div", "muted");
    const radio = "RSSI " + (d.rssi === null ? "\u2013" : d.rssi + " dBm") + " \u00b7 SNR " +
      (d.snr === null ? "\u2013" : d.snr + " dB") + (d.fcnt === null ? "" : " \u00b7 fCnt " + d.fcnt);
    meta.textContent = [d.name, radio].filter(Boolean).join(" \u00b7 ");
    const dec = el("div", "muted " + (d.status === "failed" ? "bad" : ""),
      (d.decoder || "no decoder") + " \u00b7 " + d.status);
    const chips = el("div", "chips");
    for (const r of d.readings) {
      chips.append(el("span", "chip", r.n + " " + (r.text === undefined ? value(r) : r.text)));
    }
    card.append(head, meta, dec);
    if (d.readings.length) card.append(chips);
    devs.append(card);
  }
  if (!s.devices.length) devs.append(el("div", "card muted", "No uplinks received yet."));

  renderHealth(s.health);

  const errs = clear($("errors"));
  const by = Object.entries(s.decode_errors.by_decoder);
  if (by.length) {
    const t = el("table");
    for (const [k, v] of by) {
      const tr = el("tr");
      tr.append(el("td", "mono", k), el("td", "", num(v)));
      t.append(tr);
    }
    const card = el("div", "card");
    card.append(el("div", "k", "Buffered uplinks that failed to decode, by decoder"), t);
    errs.append(card);
  }
  for (const f of s.decode_errors.recent) {
    const card = el("div", "card");
    const head = el("div", "row");
    head.append(el("span", "mono", f.dev_eui), el("span", "muted", ago(f.time)));
    card.append(head, el("div", "muted", f.decoder), el("div", "bad", f.error));
    errs.append(card);
  }
  for (const m of s.malformed) {
    const card = el("div", "card");
    card.append(el("div", "mono", m.topic), el("div", "muted", "malformed \u00b7 " + ago(m.received)),
      el("div", "bad", m.error));
    errs.append(card);
  }
  if (!errs.firstChild) errs.append(el("div", "card muted", "No decode errors in the buffer."));
  $("updated").textContent = new Date(s.now * 1000).toLocaleTimeString();
}

// Sensor health: a table the technician sorts by clicking a column (the unwell first by default).
let healthRows = [], healthSort = null, healthDesc = false;
const HEALTH_COLS = [["dev_eui", "Device"], ["state", "State"], ["problems", "Problems"],
  ["silent_for_s", "Last seen"], ["expected_interval_s", "Interval"], ["loss_ratio", "Loss"],
  ["battery", "Battery"], ["rssi_dbm", "RSSI"]];
function healthCell(d, key) {
  if (key === "problems") return d.problems.join(", ") || "–";
  if (key === "silent_for_s") return d.silent_for_s === null ? "never" : age(d.silent_for_s) + " ago";
  if (key === "expected_interval_s") return age(d.expected_interval_s);
  if (key === "loss_ratio") return d.loss_ratio === null ? "–" : Math.round(d.loss_ratio * 100) + " %";
  if (key === "battery") return d.battery !== null ? d.battery + " %" :
    d.battery_voltage !== null ? d.battery_voltage + " V" : "–";
  if (key === "rssi_dbm") return d.rssi_dbm === null ? "–" : d.rssi_dbm + " dBm";
  return d[key];
}
function renderHealth(h) {
  if (h) healthRows = h.devices;
  const box = clear($("health"));
  if (h) {
    const c = h.counts;
    box.append(el("div", "muted", (c["state:ok"] || 0) + " ok · " + (c["state:silent"] || 0) + " silent · " +
      (c["state:never-seen"] || 0) + " never seen · " + (c["problem:low-battery"] || 0) + " low battery · " +
      (c["problem:lossy"] || 0) + " lossy"));
  }
  if (!healthRows.length) { box.append(el("div", "card muted", "No sensors seen yet.")); return; }
  const rows = healthRows.slice();
  if (healthSort) rows.sort((a, b) => {
    const x = a[healthSort], y = b[healthSort];
    const r = x === y ? 0 : x === null ? 1 : y === null ? -1 : x < y ? -1 : 1;
    return healthDesc ? -r : r;
  });
  const t = el("table", "health");
  const head = el("tr");
  for (const [key, label] of HEALTH_COLS) {
    const th = el("th", "sort", label + (healthSort === key ? (healthDesc ? " ▼" : " ▲") : ""));
    th.addEventListener("click", () => {
      healthDesc = healthSort === key ? !healthDesc : false;
      healthSort = key;
      renderHealth(null);
    });
    head.append(th);
  }
  t.append(head);
  for (const d of rows) {
    const tr = el("tr", d.state !== "ok" ? "bad" : d.problems.length ? "warn" : "");
    for (const [key] of HEALTH_COLS) tr.append(el("td", key === "dev_eui" ? "mono" : "", healthCell(d, key)));
    t.append(tr);
  }
  const card = el("div", "card scroll");
  card.append(t);
  box.append(card);
}

async function refresh() {
  try {
    const r = await fetch("api/status" + QUERY, {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    $("stale").style.display = "none";
  } catch (e) {
    const s = $("stale");
    s.textContent = "Cannot reach the gateway (" + e.message + "); showing the last data received.";
    s.style.display = "block";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
