// Tether's dashboard: the device table (polled from /api/devices each second), a canvas
// plot of the chosen device's readings and the log (Server-Sent Events from /api/events),
// and a command box (POST /api/devices/{id}/commands). Plain JavaScript, no build step,
// nothing fetched from elsewhere.
'use strict';

const MAX_WINDOW_MS = 600e3;     // the longest "last N minutes"
const MAX_SAMPLES = 40000;       // 10 min at 50 samples/s, and some
const MAX_LOG_LINES = 1000;
const COLORS = ['#1f6feb', '#cf222e', '#1a7f37', '#9a6700', '#8250df', '#bf3989', '#0a7ea4',
  '#6e7781', '#953800', '#116329', '#0550ae', '#a40e26', '#4d2d00', '#512a97', '#99286e', '#1b7c83'];

// Everything the page knows; `window.tether` so that tests (and the curious) can look.
const state = {
  token: tokenFromHash() || sessionStorage.getItem('tether-token') || '',
  devices: [],
  selected: null,        // device id (hex) plotted and commanded
  times: [],             // sample times, ms (server clock)
  values: [],            // per sample: [[last, min, max], …] per field
  fields: 0,             // fields seen in the selected device's readings
  names: null,           // the selected device's field names, as the last legend showed them
  hidden: new Set(),     // field indexes not drawn
  samples: 0,            // samples received for the selected device
  lastSample: null,      // the latest sample received
  clockOffset: null,     // server time - browser time, ms
  windowMs: 60e3,
  paused: false,
  pausedAt: 0,
  zoom: null,            // {from, to} when zoomed (the view stays put)
  drawn: { frames: 0, right: 0, points: 0, lastT: 0 },
  commands: [],          // {device, text, seq, status, li}
  events: null,
  streamState: 'connecting',
};
window.tether = state;

const $ = (id) => document.getElementById(id);
const canvas = $('plot');
const ctx = canvas.getContext('2d');

function tokenFromHash() {
  const m = location.hash.match(/token=([^&]+)/);
  return m ? decodeURIComponent(m[1]) : '';
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.token) h['Authorization'] = 'Bearer ' + state.token;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const r = await fetch(path, opts);
  if (r.status === 401) {
    $('auth').hidden = false;
    throw new Error('a token is needed');
  }
  return r;
}

// ---- the device table ------------------------------------------------------------------

const fmt = new Intl.NumberFormat('en');
function num(n) { return n == null ? '—' : fmt.format(Math.round(n)); }
function ago(ms) {
  if (ms == null) return '—';
  if (ms < 1000) return ms + ' ms ago';
  if (ms < 120e3) return (ms / 1000).toFixed(1) + ' s ago';
  return Math.round(ms / 60e3) + ' min ago';
}
function cell(text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}
function countCell(n) { return cell(num(n), 'n' + (n > 0 ? ' nonzero' : '')); }

async function refresh() {
  let body;
  try {
    const r = await api('/api/devices');
    if (!r.ok) return;
    body = await r.json();
  } catch (e) { return; }
  $('auth').hidden = true;
  state.devices = body.devices;
  $('title').textContent = body.title;
  const t = body.totals;
  const connected = body.devices.filter((d) => d.connected).length;
  const dropped = Object.values(t.connections_dropped).reduce((a, b) => a + b, 0);
  $('totals').textContent =
    `${num(t.records)} records (${num(t.records_per_s)}/s), ${num(t.finished)} ${t.finished_means} · ` +
    `${t.sessions} device${t.sessions === 1 ? '' : 's'}, ${connected} connected · ` +
    `${num(t.connections)} connections, ${num(dropped)} dropped · ` +
    `${num(t.retransmissions)} retransmitted · ${num(t.corrupt_frames)} corrupt, ${num(t.dropped_frames)} dropped frames`;
  renderTable(body.devices);
  if (!state.selected && body.devices.length) select(body.devices[0].id);
}

function renderTable(devices) {
  const tbody = $('devices').tBodies[0];
  const rows = [];
  for (const d of devices) {
    const tr = document.createElement('tr');
    tr.dataset.device = d.id;
    if (d.id === state.selected) tr.className = 'selected';
    const link = document.createElement('td');
    const dot = document.createElement('span');
    dot.className = 'dot' + (d.connected ? ' on' : d.phase === 'dead' ? ' dead' : '');
    link.title = d.connected ? 'a connection serves it' : 'no connection now';
    link.append(dot, d.phase + (d.upstream == null ? '' : d.upstream ? ', upstream up' : ', upstream down'));
    tr.append(
      cell(d.id, 'mono'), link,
      cell(d.transport ? `${d.transport} ${d.peer}` : '—', 'mono'),
      cell(`${d.session} (v${d.protocol})`, 'mono'),
      cell(num(d.records), 'n'), cell(num(d.records_per_s), 'n'),
      countCell(d.retransmissions), countCell(d.corrupt_frames), countCell(d.dropped_frames),
      cell(num(d.reconnects), 'n'),
      cell(d.round_trip_ms == null ? '—' : d.round_trip_ms + ' ms', 'n'),
      cell(ago(d.last_seen_ms), 'n'),
      cell(num(d.commands_pending), 'n'));
    tr.children[10].title = `retransmission time-out ${d.rto_ms} ms` +
      (d.round_trip_ms == null ? '; this link does not measure its round trip' : '');
    tr.addEventListener('click', () => select(d.id));
    rows.push(tr);
  }
  if (!rows.length) {
    const tr = document.createElement('tr');
    tr.className = 'empty';
    const td = cell('no device yet');
    td.colSpan = 13;
    tr.append(td);
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
}

// ---- choosing a device, the event stream -------------------------------------------------

function select(id) {
  if (state.selected === id) return;
  state.selected = id;
  state.times = [];
  state.values = [];
  state.fields = 0;
  state.names = null;
  state.samples = 0;
  state.lastSample = null;
  state.zoom = null;
  $('zoom-reset').disabled = true;
  $('plot-device').textContent = id;
  $('command-device').textContent = id;
  for (const tr of $('devices').tBodies[0].rows) {
    tr.classList.toggle('selected', tr.dataset.device === id);
  }
  renderLegend();
  openEvents();
}

function setStreamState(s) {
  state.streamState = s;
  const b = $('stream-state');
  b.textContent = s;
  b.className = 'badge' + (s === 'live' ? ' live' : s === 'reconnecting' ? ' down' : '');
}

function openEvents() {
  if (state.events) state.events.close();
  const q = new URLSearchParams();
  if (state.selected) q.set('watch', state.selected);
  if (state.token) q.set('token', state.token);
  const es = new EventSource('/api/events?' + q);
  state.events = es;
  // The stream starts with the latest log lines: they replace what is shown.
  $('log').replaceChildren();
  es.onopen = () => setStreamState('live');
  es.onerror = () => setStreamState('reconnecting');
  es.addEventListener('sample', (e) => onSample(JSON.parse(e.data)));
  es.addEventListener('reply', (e) => onReply(JSON.parse(e.data)));
  es.addEventListener('log', (e) => onLog(JSON.parse(e.data)));
  es.addEventListener('lagged', () => {
    // This page fell behind and the server dropped it: start again.
    es.close();
    setStreamState('reconnecting');
    setTimeout(openEvents, 500);
  });
}

function onSample(s) {
  if (s.device !== state.selected) return;
  const offset = s.t - Date.now();
  if (state.clockOffset == null || Math.abs(offset - state.clockOffset) > 2000) state.clockOffset = offset;
  state.times.push(s.t);
  state.values.push(s.v);
  state.samples++;
  state.lastSample = s;
  const names = (s.names || []).join('\n');
  if (s.v.length > state.fields || names !== state.names) {
    state.fields = Math.max(state.fields, Math.min(s.v.length, COLORS.length));
    state.names = names;
    renderLegend();
  }
  // Keep the longest window (a little more, so that panning back has something), cutting
  // in chunks rather than at every sample.
  let drop = firstAtOrAfter(s.t - MAX_WINDOW_MS * 1.1);
  drop = Math.max(drop, state.times.length - MAX_SAMPLES);
  if (drop >= 500) {
    state.times.splice(0, drop);
    state.values.splice(0, drop);
  }
}

// ---- the plot --------------------------------------------------------------------------

// The declared field's name and unit (the sample says), else field_N.
function fieldName(i) {
  const names = state.lastSample && state.lastSample.names;
  return (names && names[i]) || 'field_' + (i + 1);
}

function renderLegend() {
  const legend = $('legend');
  const items = [];
  for (let i = 0; i < state.fields; i++) {
    const label = document.createElement('label');
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.checked = !state.hidden.has(i);
    box.addEventListener('change', () => { box.checked ? state.hidden.delete(i) : state.hidden.add(i); });
    const sw = document.createElement('span');
    sw.className = 'swatch';
    sw.style.background = COLORS[i];
    const name = document.createElement('span');
    name.textContent = fieldName(i);
    const value = document.createElement('span');
    value.className = 'muted';
    value.id = 'legend-value-' + i;
    label.append(box, sw, name, ' ', value);
    items.push(label);
  }
  legend.replaceChildren(...items);
}

function nowServer() { return Date.now() + (state.clockOffset || 0); }

function viewRange() {
  if (state.zoom) return state.zoom;
  const right = state.paused ? state.pausedAt : nowServer();
  return { from: right - state.windowMs, to: right };
}

function firstAtOrAfter(t) {
  let lo = 0, hi = state.times.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (state.times[mid] < t) lo = mid + 1; else hi = mid;
  }
  return lo;
}

function draw() {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(200, Math.round(canvas.clientWidth * dpr));
  const h = Math.max(100, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const pad = { l: 62 * dpr, r: 12 * dpr, t: 10 * dpr, b: 24 * dpr };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  ctx.clearRect(0, 0, w, h);
  ctx.font = `${11 * dpr}px system-ui, sans-serif`;
  const { from, to } = viewRange();
  const start = Math.max(0, firstAtOrAfter(from) - 1);
  const end = firstAtOrAfter(to + 1);
  const visible = [];
  for (let i = 0; i < state.fields; i++) if (!state.hidden.has(i)) visible.push(i);
  // Each field's range over what is in view (or one range for all).
  const ranges = visible.map(() => [Infinity, -Infinity]);
  for (let k = start; k < end; k++) {
    const v = state.values[k];
    visible.forEach((f, j) => {
      const x = v[f];
      if (!x) return;
      if (x[1] != null && x[1] < ranges[j][0]) ranges[j][0] = x[1];
      if (x[2] != null && x[2] > ranges[j][1]) ranges[j][1] = x[2];
    });
  }
  const shared = $('shared-scale').checked;
  if (shared && ranges.length) {
    const lo = Math.min(...ranges.map((r) => r[0])), hi = Math.max(...ranges.map((r) => r[1]));
    ranges.forEach((r) => { r[0] = lo; r[1] = hi; });
  }
  for (const r of ranges) {
    if (!isFinite(r[0])) { r[0] = 0; r[1] = 1; }
    if (r[1] - r[0] < 1e-9) { r[0] -= 0.5; r[1] += 0.5; }
    const m = (r[1] - r[0]) * 0.06;
    r[0] -= m; r[1] += m;
  }
  // Grid and time axis.
  ctx.strokeStyle = '#e6e6e1';
  ctx.fillStyle = '#6b6b66';
  ctx.lineWidth = 1;
  const span = to - from;
  const step = niceStep(span / 8);
  ctx.textAlign = 'center';
  for (let t = Math.ceil(from / step) * step; t <= to; t += step) {
    const x = pad.l + (t - from) / span * pw;
    ctx.beginPath(); ctx.moveTo(x, pad.t); ctx.lineTo(x, pad.t + ph); ctx.stroke();
    ctx.fillText(timeLabel(t, step), x, h - 6 * dpr);
  }
  ctx.textAlign = 'right';
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + ph * i / 4;
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(pad.l + pw, y); ctx.stroke();
    if (ranges.length && (shared || ranges.length === 1)) {
      const r = ranges[0];
      ctx.fillText(short(r[1] - (r[1] - r[0]) * i / 4), pad.l - 6 * dpr, y + 4 * dpr);
    }
  }
  if (!shared && ranges.length > 1) {
    ctx.save(); ctx.translate(14 * dpr, pad.t + ph / 2); ctx.rotate(-Math.PI / 2);
    ctx.textAlign = 'center'; ctx.fillText('each field on its own scale', 0, 0); ctx.restore();
  }
  // The fields: per pixel column, the lowest and highest value of the samples in it.
  let points = 0;
  ctx.lineWidth = 1.5 * dpr;
  ctx.save();
  ctx.beginPath(); ctx.rect(pad.l, pad.t, pw, ph); ctx.clip();
  visible.forEach((f, j) => {
    const [lo, hi] = ranges[j];
    const y = (v) => pad.t + ph - (v - lo) / (hi - lo) * ph;
    ctx.strokeStyle = COLORS[f];
    ctx.beginPath();
    let col = null, cmin = 0, cmax = 0, clast = 0, prevT = null, pen = false;
    const flush = () => {
      if (col == null) return;
      const x = pad.l + col;
      if (!pen) { ctx.moveTo(x, y(cmin)); pen = true; } else ctx.lineTo(x, y(cmin));
      ctx.lineTo(x, y(cmax));
      ctx.lineTo(x, y(clast));
      points++;
    };
    for (let k = start; k < end; k++) {
      const v = state.values[k][f];
      const t = state.times[k];
      if (!v || v[0] == null) { flush(); col = null; pen = false; continue; }
      // A gap of more than 2 s (a device gone): the line breaks.
      if (prevT != null && t - prevT > 2000) { flush(); col = null; pen = false; }
      prevT = t;
      const c = Math.floor((t - from) / span * pw);
      if (c !== col) {
        flush();
        col = c; cmin = v[1] ?? v[0]; cmax = v[2] ?? v[0];
      } else {
        cmin = Math.min(cmin, v[1] ?? v[0]); cmax = Math.max(cmax, v[2] ?? v[0]);
      }
      clast = v[0];
    }
    flush();
    ctx.stroke();
  });
  ctx.restore();
  ctx.strokeStyle = '#c9c9c3';
  ctx.lineWidth = 1;
  ctx.strokeRect(pad.l + 0.5, pad.t + 0.5, pw, ph);
  // What the legend and the tests read.
  const last = state.lastSample;
  if (last) {
    for (let i = 0; i < state.fields; i++) {
      const el = $('legend-value-' + i);
      const x = last.v[i];
      if (el) el.textContent = x && x[0] != null ? short(x[0]) : '—';
    }
  }
  state.drawn.frames++;
  state.drawn.right = to;
  state.drawn.points = points;
  state.drawn.lastT = end > 0 ? state.times[end - 1] : 0;
  $('plot-info').textContent = state.selected
    ? `${num(state.samples)} samples` + (state.paused ? ' · paused' : '') + (state.zoom ? ' · zoomed' : '')
    : '';
}

function niceStep(raw) {
  const steps = [100, 200, 500, 1e3, 2e3, 5e3, 10e3, 15e3, 30e3, 60e3, 120e3, 300e3, 600e3];
  return steps.find((s) => s >= raw) || 600e3;
}
function timeLabel(t, step) {
  const d = new Date(t - (state.clockOffset || 0));
  const s = d.toTimeString().slice(0, 8);
  return step < 1000 ? s + '.' + String(d.getMilliseconds()).padStart(3, '0').slice(0, 1) : s;
}
function short(v) {
  if (v == null || !isFinite(v)) return '—';
  const a = Math.abs(v);
  if (a >= 1e6 || (a > 0 && a < 1e-3)) return v.toExponential(2);
  if (a >= 100) return v.toFixed(0);
  return +v.toFixed(3) + '';
}

let lastFrame = 0;
function frame(ts) {
  // About 20 frames a second is smooth for a plot and cheap for a laptop.
  if (ts - lastFrame > 45) { lastFrame = ts; draw(); }
  requestAnimationFrame(frame);
}

// Zoom with the wheel around the pointer; drag to pan.
canvas.addEventListener('wheel', (e) => {
  e.preventDefault();
  const r = viewRange();
  const rect = canvas.getBoundingClientRect();
  const at = r.from + (r.to - r.from) * Math.min(1, Math.max(0, (e.clientX - rect.left - 62) / (rect.width - 74)));
  const k = e.deltaY > 0 ? 1.25 : 0.8;
  const span = Math.min(MAX_WINDOW_MS, Math.max(200, (r.to - r.from) * k));
  const f = (at - r.from) / (r.to - r.from);
  state.zoom = { from: at - span * f, to: at + span * (1 - f) };
  $('zoom-reset').disabled = false;
}, { passive: false });
let drag = null;
canvas.addEventListener('mousedown', (e) => { drag = { x: e.clientX, range: viewRange() }; });
window.addEventListener('mouseup', () => { drag = null; });
window.addEventListener('mousemove', (e) => {
  if (!drag) return;
  const dx = e.clientX - drag.x;
  if (Math.abs(dx) < 3 && !state.zoom) return;
  const span = drag.range.to - drag.range.from;
  const shift = -dx / canvas.getBoundingClientRect().width * span;
  state.zoom = { from: drag.range.from + shift, to: drag.range.to + shift };
  $('zoom-reset').disabled = false;
});
$('zoom-reset').addEventListener('click', () => { state.zoom = null; $('zoom-reset').disabled = true; });
$('window').addEventListener('change', (e) => {
  state.windowMs = Number(e.target.value) * 1000;
  state.zoom = null;
  $('zoom-reset').disabled = true;
});
$('pause').addEventListener('click', () => {
  state.paused = !state.paused;
  state.pausedAt = nowServer();
  $('pause').textContent = state.paused ? 'Resume' : 'Pause';
});

// ---- commands ---------------------------------------------------------------------------

$('command-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = $('command');
  const text = input.value.trim();
  const device = state.selected;
  if (!text || !device) return;
  input.value = '';
  const li = document.createElement('li');
  const entry = { device, text, seq: null, status: 'sending', li };
  state.commands.push(entry);
  $('command-status').prepend(li);
  show(entry, 'sending…');
  try {
    const r = await api(`/api/devices/${device}/commands`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ command: text }),
    });
    const body = await r.json();
    if (r.ok) {
      if (entry.status === 'sending') {
        entry.status = 'queued';
        show(entry, 'queued, waiting for the device to acknowledge it');
      }
    } else {
      entry.status = 'failed';
      show(entry, body.error || r.statusText);
    }
  } catch (err) {
    entry.status = 'failed';
    show(entry, String(err.message || err));
  }
});

function show(entry, what) {
  if (what) entry.note = what;
  entry.li.className = entry.status === 'acknowledged' ? 'acked' : entry.status === 'failed' ? 'failed' : '';
  entry.li.textContent = `${entry.device} ← “${entry.text}”` + (entry.seq != null ? ` (#${entry.seq})` : '') +
    `: ${entry.note}` + (entry.reply ? ` · replied: ${entry.reply}` : '');
}

// The listener's log says when a command got its number (with its text) and when the device
// acknowledged it.
function trackCommands(line) {
  let m = line.text.match(/command #(\d+) queued for device ([0-9a-f]{8}): `(.*)`$/);
  if (m) {
    const e = state.commands.find((c) => c.device === m[2] && c.text === m[3] && c.seq == null &&
      (c.status === 'sending' || c.status === 'queued'));
    if (e) { e.seq = Number(m[1]); e.status = 'sent'; show(e, 'sent, waiting for the device to acknowledge it'); }
    return;
  }
  m = line.text.match(/device ([0-9a-f]{8}) acknowledged commands up to #(\d+)/);
  if (m) {
    for (const e of state.commands) {
      if (e.device === m[1] && e.seq != null && e.seq <= Number(m[2]) && e.status !== 'acknowledged') {
        e.status = 'acknowledged';
        show(e, 'acknowledged by the device ✓');
      }
    }
  }
}

function onReply(r) {
  // The latest command to the device without a reply yet (a reply may come before the log
  // says the command was numbered or acknowledged).
  const e = state.commands.slice().reverse().find((c) => c.device === r.device && c.status !== 'failed' && !c.reply);
  if (e) { e.reply = r.text; show(e); }
  onLog({ time_ms: Date.now() + (state.clockOffset || 0), level: 'INFO', device: r.device, text: `device ${r.device} replied: ${r.text}` });
}

// ---- the log ---------------------------------------------------------------------------

function onLog(line) {
  trackCommands(line);
  const log = $('log');
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 30;
  const div = document.createElement('div');
  div.className = 'line ' + line.level;
  const time = document.createElement('time');
  time.textContent = new Date(line.time_ms - (state.clockOffset || 0)).toTimeString().slice(0, 8);
  div.append(time, (line.level === 'INFO' ? '' : line.level + ' ') + line.text);
  log.append(div);
  while (log.childElementCount > MAX_LOG_LINES) log.firstElementChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

// ---- the token ---------------------------------------------------------------------------

$('auth-form').addEventListener('submit', (e) => {
  e.preventDefault();
  state.token = $('token').value.trim();
  sessionStorage.setItem('tether-token', state.token);
  refresh().then(openEvents);
});

refresh();
setInterval(refresh, 1000);
openEvents();
requestAnimationFrame(frame);
