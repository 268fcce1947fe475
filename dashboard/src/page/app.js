// tickpipe dashboard: polls /api/latest and /api/candles every second and redraws the
// watchlist and the selected symbol's candlestick chart in place, without reloading.
//
// Everything shown comes from the table, which anything upstream can write to, so text
// goes in with textContent and never through innerHTML.
"use strict";

const POLL_MS = 1000;
const REQUEST_TIMEOUT_MS = 5000;
// No successful poll for this long and the status line turns amber.
const STALE_MS = 5000;
const CANDLE_LIMIT = 120;
// The chart is never narrower than this many 1-minute slots, so a symbol with three
// candles does not get three bars each a third of the chart wide.
const MIN_SLOTS = 40;
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  selected: null,
  rows: new Map(), // symbol -> { tr, cells, price }
  latest: new Map(), // symbol -> latest item from the API
  clockOffset: 0, // server clock minus browser clock, ms
  candles: null, // last /api/candles answer for the selected symbol
  hoveredT: null, // bucket start of the candle under the pointer, shown in the stats
  lastOk: null,
  loaded: false, // whether /api/latest has answered once
  failures: 0,
  lastError: null,
  selectGeneration: 0,
};

const $ = (id) => document.getElementById(id);

// ---------- formatting ----------

const pad = (n, w = 2) => String(n).padStart(w, "0");

function clock(ms, withMillis) {
  const d = new Date(ms);
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return withMillis ? `${hms}.${pad(d.getMilliseconds(), 3)}` : hms;
}

const hhmm = (ms) => {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
};

// Stocks trade in cents, many crypto pairs in fractions of one: show what the price needs.
function priceDigits(p) {
  const a = Math.abs(p);
  if (a >= 1) return [2, 4];
  if (a >= 0.01) return [4, 6];
  return [6, 8];
}

// `like` picks the precision: a change of 0.0065 on a 1.09 quote reads as 0.0065, not
// 0.006500.
function fmtPrice(p, like = p) {
  if (!Number.isFinite(p)) return "—";
  const [min, max] = priceDigits(like);
  return p.toLocaleString("en-US", { minimumFractionDigits: min, maximumFractionDigits: max });
}

function fmtCompact(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "—";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(2) + "B";
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "K";
  if (a >= 1 || a === 0) return v.toLocaleString("en-US", { maximumFractionDigits: 2 });
  return v.toPrecision(3);
}

function fmtAge(ms) {
  if (!Number.isFinite(ms)) return "";
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function fmtLag(ms) {
  if (!Number.isFinite(ms)) return "—";
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.round(ms / 60000)} min`;
}

// updated_at is ms since the epoch; a writer using microseconds is recognised by size.
const toMillis = (t) => (t > 1e14 ? t / 1000 : t);

// "BINANCE:BTCUSDT" reads best as the pair with its venue beside it.
function splitSymbol(symbol) {
  const i = symbol.indexOf(":");
  return i > 0 ? [symbol.slice(i + 1), symbol.slice(0, i)] : [symbol, ""];
}

const serverNow = () => Date.now() + state.clockOffset;

// ---------- HTTP ----------

class ApiError extends Error {}

async function getJSON(url) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), REQUEST_TIMEOUT_MS);
  try {
    const res = await fetch(url, { signal: ctrl.signal, cache: "no-store" });
    let body = null;
    try {
      body = await res.json();
    } catch (_) {
      // A proxy's HTML error page: the status code below says enough.
    }
    if (!res.ok) {
      const why = body && typeof body.error === "string" ? body.error : res.statusText;
      throw new ApiError(`HTTP ${res.status}: ${why}`);
    }
    return body;
  } catch (e) {
    if (e.name === "AbortError") throw new ApiError(`no answer within ${REQUEST_TIMEOUT_MS / 1000}s`);
    if (e instanceof ApiError) throw e;
    throw new ApiError("server unreachable");
  } finally {
    clearTimeout(timer);
  }
}

const candlesUrl = (symbol) =>
  `/api/candles?symbol=${encodeURIComponent(symbol)}&limit=${CANDLE_LIMIT}`;

// ---------- watchlist ----------

function cell(tr, cls) {
  const td = document.createElement("td");
  td.className = cls;
  tr.appendChild(td);
  return td;
}

function makeRow(symbol) {
  const tr = document.createElement("tr");
  tr.dataset.symbol = symbol;
  tr.tabIndex = 0;
  const sym = cell(tr, "sym");
  const [name, venue] = splitSymbol(symbol);
  const strong = document.createElement("span");
  strong.className = "sym-name";
  strong.textContent = name;
  sym.appendChild(strong);
  if (venue) {
    const v = document.createElement("span");
    v.className = "sym-venue";
    v.textContent = venue;
    sym.appendChild(v);
  }
  const cells = {
    price: cell(tr, "num price"),
    tick: cell(tr, "num tick"),
    time: cell(tr, "num time"),
    lag: cell(tr, "num lag"),
  };
  const t = document.createElement("span");
  t.className = "t-clock";
  const age = document.createElement("span");
  age.className = "t-age";
  cells.time.append(t, age);
  cells.clock = t;
  cells.age = age;
  tr.addEventListener("click", () => select(symbol, true));
  tr.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      select(symbol, true);
    }
  });
  return { tr, cells, price: null };
}

function flash(el, dir) {
  el.classList.remove("flash-up", "flash-down");
  // Reading layout restarts the CSS animation when the same class comes back.
  void el.offsetWidth;
  el.classList.add(dir === "up" ? "flash-up" : "flash-down");
}

function updateRow(row, item) {
  const { cells } = row;
  if (row.price !== null && item.price !== row.price) {
    const dir = item.price > row.price ? "up" : "down";
    const delta = item.price - row.price;
    row.tr.dataset.dir = dir;
    cells.tick.textContent = `${dir === "up" ? "▲" : "▼"} ${fmtPrice(Math.abs(delta), item.price)}`;
    flash(row.tr, dir);
  }
  row.price = item.price;
  cells.price.dataset.price = String(item.price);
  cells.price.textContent = fmtPrice(item.price);
  cells.clock.textContent = clock(item.t, false);
  const age = serverNow() - item.t;
  cells.age.textContent = fmtAge(age);
  row.tr.classList.toggle("quiet", age > 60000);
  const lag = item.updated_at ? toMillis(item.updated_at) - item.t : NaN;
  cells.lag.textContent = fmtLag(lag);
}

function applyLatest(body) {
  state.clockOffset = body.server_time - Date.now();
  const tbody = $("symbol-rows");
  const seen = new Set();
  let previous = null;
  for (const item of body.symbols) {
    seen.add(item.symbol);
    state.latest.set(item.symbol, item);
    let row = state.rows.get(item.symbol);
    if (!row) {
      row = makeRow(item.symbol);
      state.rows.set(item.symbol, row);
    }
    // Keep the API's symbol order while moving as few nodes as possible.
    const want = previous ? previous.nextSibling : tbody.firstChild;
    if (row.tr !== want) tbody.insertBefore(row.tr, want);
    updateRow(row, item);
    previous = row.tr;
  }
  for (const [symbol, row] of state.rows) {
    if (!seen.has(symbol)) {
      row.tr.remove();
      state.rows.delete(symbol);
      state.latest.delete(symbol);
    }
  }
  const n = body.symbols.length;
  $("symbol-count").textContent = `${n} symbol${n === 1 ? "" : "s"}${body.truncated ? " (truncated)" : ""}`;
  state.loaded = true;
  renderEmptyList();
  if (!state.selected && n > 0) select(body.symbols[0].symbol, false);
  markSelected();
  updateQuote();
}

function renderEmptyList() {
  const empty = $("symbols-empty");
  empty.hidden = state.rows.size > 0;
  if (state.loaded) empty.textContent = "No symbols yet: waiting for the first trade.";
  else if (state.lastError) empty.textContent = "Could not load symbols; see the status above.";
  else empty.textContent = "Loading…";
}

function markSelected() {
  for (const [symbol, row] of state.rows) {
    const on = symbol === state.selected;
    row.tr.classList.toggle("selected", on);
    row.tr.setAttribute("aria-selected", on ? "true" : "false");
  }
}

// ---------- selection ----------

function symbolFromHash() {
  const raw = location.hash.slice(1);
  if (!raw) return null;
  try {
    return decodeURIComponent(raw);
  } catch (_) {
    return null;
  }
}

function select(symbol, byUser) {
  if (symbol === state.selected) return;
  state.selected = symbol;
  state.candles = null;
  state.hoveredT = null;
  state.selectGeneration += 1;
  const hash = "#" + encodeURIComponent(symbol);
  if (location.hash !== hash) {
    // A click is worth a history entry; the automatic first pick is not.
    if (byUser) location.hash = hash;
    else history.replaceState(null, "", hash);
  }
  const [name, venue] = splitSymbol(symbol);
  $("selected-symbol").textContent = name;
  $("selected-venue").textContent = venue;
  document.title = `${symbol} · tickpipe`;
  markSelected();
  updateQuote();
  renderCandles();
  if (byUser) refreshCandles().then(ok, fail);
}

async function refreshCandles() {
  const symbol = state.selected;
  if (!symbol) return;
  const generation = state.selectGeneration;
  const body = await getJSON(candlesUrl(symbol));
  // A slow answer for a symbol the user has since left must not overwrite the new one.
  if (generation !== state.selectGeneration) return;
  state.candles = body;
  renderCandles();
}

function moveSelection(step) {
  const symbols = [...state.rows.keys()];
  if (symbols.length === 0) return;
  const i = symbols.indexOf(state.selected);
  const next = symbols[Math.min(symbols.length - 1, Math.max(0, i + step))];
  select(next, true);
  const row = state.rows.get(next);
  if (row) row.tr.focus({ preventScroll: false });
}

// ---------- quote and candle stats ----------

function updateQuote() {
  const item = state.selected ? state.latest.get(state.selected) : null;
  const priceEl = $("selected-price");
  const changeEl = $("selected-change");
  const row = state.selected ? state.rows.get(state.selected) : null;
  priceEl.textContent = item ? fmtPrice(item.price) : state.selected ? "—" : "";
  priceEl.dataset.dir = row && row.tr.dataset.dir ? row.tr.dataset.dir : "";
  const candles = state.candles ? state.candles.candles : [];
  if (item && candles.length > 0) {
    const base = candles[0].open;
    const delta = item.price - base;
    const pct = base !== 0 ? (delta / base) * 100 : 0;
    const minutes = Math.round((candles[candles.length - 1].t - candles[0].t) / 60000) + 1;
    const span = minutes >= 120 ? `${Math.round(minutes / 60)}h` : `${minutes}m`;
    const sign = delta > 0 ? "+" : delta < 0 ? "−" : "";
    changeEl.textContent =
      `${sign}${fmtPrice(Math.abs(delta), item.price)} (${sign}${Math.abs(pct).toFixed(2)}%) · ${span}`;
    changeEl.dataset.dir = delta > 0 ? "up" : delta < 0 ? "down" : "";
  } else {
    changeEl.textContent = "";
    changeEl.dataset.dir = "";
  }
}

function showStats(candle, isLatest) {
  const set = (id, text) => {
    $(id).textContent = text;
  };
  if (!candle) {
    for (const id of ["c-open", "c-high", "c-low", "c-close", "c-volume", "c-vwap", "c-count"]) {
      set(id, "—");
    }
    $("candle-label").textContent = "Latest 1-minute candle";
    $("candle-stats").dataset.dir = "";
    return;
  }
  set("c-open", fmtPrice(candle.open));
  set("c-high", fmtPrice(candle.high));
  set("c-low", fmtPrice(candle.low));
  set("c-close", fmtPrice(candle.close));
  set("c-volume", fmtCompact(candle.volume));
  set("c-vwap", candle.vwap === null ? "—" : fmtPrice(candle.vwap));
  set("c-count", candle.count === null ? "—" : candle.count.toLocaleString("en-US"));
  const end = candle.t + 60000;
  $("candle-label").textContent =
    `${isLatest ? "Latest" : "Hovered"} 1-minute candle · ${hhmm(candle.t)}–${hhmm(end)}`;
  $("candle-stats").dataset.dir = candle.close >= candle.open ? "up" : "down";
}

// ---------- chart ----------

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

// Axis steps of 1, 2, 2.5 or 5 times a power of ten, about `count` of them across `range`.
function niceStep(range, count) {
  const raw = range / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}

function stepDigits(step) {
  return Math.max(0, Math.min(8, -Math.floor(Math.log10(step) + 1e-9)));
}

function renderCandles() {
  const chart = $("chart");
  const empty = $("chart-empty");
  chart.replaceChildren();
  const body = state.candles;
  const candles = body && body.symbol === state.selected ? body.candles : null;
  chart.dataset.symbol = state.selected || "";
  if (!candles || candles.length === 0) {
    empty.hidden = false;
    empty.textContent = !state.selected
      ? state.loaded || !state.lastError
        ? "Select a symbol to chart it."
        : "No data yet; see the status above."
      : candles
        ? `No 1-minute candles for ${state.selected} yet.`
        : "Loading candles…";
    showStats(null);
    updateQuote();
    return;
  }
  empty.hidden = true;
  drawChart(chart, candles);
  const latest = candles[candles.length - 1];
  const hovered = candles.find((c) => c.t === state.hoveredT);
  showStats(hovered || latest, !hovered || hovered === latest);
  updateQuote();
}

function drawChart(chart, candles) {
  const wrap = $("chart-wrap");
  const W = Math.max(320, wrap.clientWidth);
  const H = Math.max(240, wrap.clientHeight);
  chart.setAttribute("viewBox", `0 0 ${W} ${H}`);
  chart.setAttribute("width", W);
  chart.setAttribute("height", H);

  const pad = { left: 12, right: 72, top: 16, bottom: 28 };
  const plotW = W - pad.left - pad.right;
  const plotH = H - pad.top - pad.bottom;
  const volH = Math.round(plotH * 0.2);
  const priceH = plotH - volH - 10;

  // Time runs left to right in 1-minute slots ending at the newest candle; missing
  // minutes stay empty rather than being squeezed out.
  const lastT = candles[candles.length - 1].t;
  const firstT = candles[0].t;
  const slots = Math.max(MIN_SLOTS, Math.round((lastT - firstT) / 60000) + 1);
  const slotW = plotW / slots;
  const x = (t) => pad.left + plotW - ((lastT - t) / 60000 + 0.5) * slotW;

  const item = state.latest.get(state.selected);
  let lo = Math.min(...candles.map((c) => c.low));
  let hi = Math.max(...candles.map((c) => c.high));
  if (item) {
    lo = Math.min(lo, item.price);
    hi = Math.max(hi, item.price);
  }
  if (hi === lo) {
    const nudge = Math.abs(hi) * 0.001 || 1;
    hi += nudge;
    lo -= nudge;
  }
  const margin = (hi - lo) * 0.08;
  lo -= margin;
  hi += margin;
  const y = (p) => pad.top + ((hi - p) / (hi - lo)) * priceH;
  const maxVol = Math.max(0, ...candles.map((c) => c.volume || 0));
  const volTop = pad.top + priceH + 10;
  const vy = (v) => volTop + volH - (maxVol > 0 ? (v / maxVol) * volH : 0);

  const grid = svg("g", { class: "grid" }, chart);
  const axis = svg("g", { class: "axis" }, chart);

  // The last price's tag sits on the price axis; labels it would cover are left out.
  const last = item ? item.price : candles[candles.length - 1].close;
  const tagY = y(last);

  // Price axis.
  const step = niceStep(hi - lo, Math.max(3, Math.floor(priceH / 56)));
  const digits = Math.max(stepDigits(step), priceDigits(hi)[0]);
  for (let p = Math.ceil(lo / step) * step; p <= hi; p += step) {
    const py = y(p);
    svg("line", { x1: pad.left, x2: pad.left + plotW, y1: py, y2: py }, grid);
    if (Math.abs(py - tagY) < 16) continue;
    const label = svg("text", { x: pad.left + plotW + 8, y: py, class: "y-label" }, axis);
    label.textContent = p.toLocaleString("en-US", {
      minimumFractionDigits: digits,
      maximumFractionDigits: digits,
    });
  }

  // Time axis: a label every 5, 10, 15, 30 or 60 minutes, whichever keeps them apart.
  const minGap = 64;
  const every = [1, 2, 5, 10, 15, 30, 60, 120].find((m) => m * slotW >= minGap) || 240;
  const firstSlotT = lastT - (slots - 1) * 60000;
  const startLabel = Math.ceil(firstSlotT / (every * 60000)) * every * 60000;
  for (let t = startLabel; t <= lastT; t += every * 60000) {
    const tx = x(t);
    svg("line", { x1: tx, x2: tx, y1: pad.top, y2: pad.top + plotH, class: "v" }, grid);
    const label = svg("text", { x: tx, y: H - 8, class: "x-label" }, axis);
    label.textContent = hhmm(t);
  }
  svg("line", { x1: pad.left, x2: pad.left + plotW, y1: volTop - 5, y2: volTop - 5, class: "sep" }, grid);
  if (maxVol > 0) {
    const volLabel = svg("text", { x: pad.left + plotW + 8, y: volTop + 6, class: "y-label" }, axis);
    volLabel.textContent = `Vol ${fmtCompact(maxVol)}`;
  }

  // Candles: wick, body and volume bar share one group, so one element stands for one
  // candle; a transparent full-height rectangle makes the whole slot hoverable.
  const bodyW = Math.max(1, Math.min(18, slotW * 0.68));
  const layer = svg("g", { class: "candles" }, chart);
  const latestCandle = candles[candles.length - 1];
  for (const c of candles) {
    const dir = c.close >= c.open ? "up" : "down";
    const cx = x(c.t);
    const g = svg("g", { class: `candle ${dir}`, "data-candle": c.t }, layer);
    if (c === latestCandle) g.setAttribute("data-latest", "");
    if (c.t === state.hoveredT) g.classList.add("hover");
    svg("line", { x1: cx, x2: cx, y1: y(c.high), y2: y(c.low), class: "wick" }, g);
    const top = y(Math.max(c.open, c.close));
    const h = Math.max(1, y(Math.min(c.open, c.close)) - top);
    svg("rect", { x: cx - bodyW / 2, y: top, width: bodyW, height: h, class: "body" }, g);
    if (c.volume) {
      const vTop = vy(c.volume);
      svg("rect", { x: cx - bodyW / 2, y: vTop, width: bodyW, height: volTop + volH - vTop, class: "vol" }, g);
    }
    svg("rect", { x: cx - slotW / 2, y: pad.top, width: slotW, height: plotH, class: "hit" }, g);
    g.addEventListener("mouseenter", () => {
      state.hoveredT = c.t;
      showStats(c, c === latestCandle);
      g.classList.add("hover");
    });
    g.addEventListener("mouseleave", () => {
      state.hoveredT = null;
      showStats(latestCandle, true);
      g.classList.remove("hover");
    });
  }

  // Last price: a dashed line across the chart and a tag on the axis.
  const dir = last >= latestCandle.open ? "up" : "down";
  const ly = tagY;
  svg("line", { x1: pad.left, x2: pad.left + plotW, y1: ly, y2: ly, class: `last-line ${dir}` }, chart);
  const tag = svg("g", { class: `last-tag ${dir}`, id: "last-price-tag" }, chart);
  svg("rect", { x: pad.left + plotW + 2, y: ly - 10, width: pad.right - 4, height: 20, rx: 3 }, tag);
  const text = svg("text", { x: pad.left + plotW + 8, y: ly }, tag);
  text.textContent = fmtPrice(last);
}

// ---------- status line ----------

function renderStatus() {
  const el = $("status");
  const text = $("status-text");
  const now = Date.now();
  let stateName;
  let message;
  if (state.lastError) {
    stateName = "error";
    const since = state.lastOk ? ` · last good update ${clock(state.lastOk, false)}` : "";
    const times = state.failures > 1 ? ` (${state.failures} failures in a row)` : "";
    message = `${state.lastError}${times} · retrying${since}`;
  } else if (!state.lastOk) {
    stateName = "connecting";
    message = "Connecting…";
  } else if (now - state.lastOk > STALE_MS) {
    stateName = "stale";
    message = `No update for ${Math.round((now - state.lastOk) / 1000)}s · last ${clock(state.lastOk, false)}`;
  } else {
    stateName = "live";
    message = `Live · updated ${clock(state.lastOk, false)}`;
  }
  el.dataset.state = stateName;
  text.textContent = message;
}

function ok() {
  state.lastOk = Date.now();
  state.failures = 0;
  state.lastError = null;
  renderStatus();
}

function fail(e) {
  state.failures += 1;
  state.lastError = e instanceof ApiError ? e.message : "page error: " + (e && e.message);
  renderStatus();
  renderEmptyList();
  if (!state.candles) renderCandles();
}

// ---------- main loop ----------

async function poll() {
  const started = Date.now();
  try {
    const wanted = state.selected;
    const generation = state.selectGeneration;
    const candlesReq = wanted ? getJSON(candlesUrl(wanted)) : null;
    // Both requests are in flight together; a failed candle request must not go unhandled
    // while the latest one is awaited.
    if (candlesReq) candlesReq.catch(() => {});
    applyLatest(await getJSON("/api/latest"));
    if (candlesReq && generation === state.selectGeneration) {
      state.candles = await candlesReq;
      renderCandles();
    } else if (state.selected) {
      // The first poll picks a symbol only once the list has arrived.
      await refreshCandles();
    }
    ok();
  } catch (e) {
    fail(e);
  } finally {
    setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
  }
}

function start() {
  const fromHash = symbolFromHash();
  if (fromHash) select(fromHash, false);
  else renderCandles();
  window.addEventListener("hashchange", () => {
    const symbol = symbolFromHash();
    if (symbol && symbol !== state.selected) select(symbol, true);
  });
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement) return;
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      moveSelection(e.key === "ArrowDown" ? 1 : -1);
    }
  });
  // Redraw inside the observer callback, which runs before the next paint, so a resized
  // chart is never painted at its old size. Drawing changes only the SVG's contents, not
  // the observed box, so this cannot loop.
  new ResizeObserver(() => renderCandles()).observe($("chart-wrap"));
  // Keep ages and the stale warning moving even while a request hangs.
  setInterval(renderStatus, POLL_MS);
  poll();
}

start();
