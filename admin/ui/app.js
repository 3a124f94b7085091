// hopwatch dashboard. Polls the admin server's JSON APIs every 2 s and draws
// them with the plain DOM: no framework, no build step, nothing loaded from
// anywhere but this server (the page runs under CSP default-src 'self', so
// no inline script or style attribute either: positions are set through
// element.style, which the CSP does not restrict).
//
// API conventions (admin/api.go): durations are float seconds, times RFC
// 3339, trace IDs 32 lowercase hex digits, errors {"error": "..."}.
'use strict';

(() => {
  const POLL_MS = 2000;
  // The sparkline ring: one p95 sample per poll, five minutes of them.
  const SPARK_POINTS = 150;
  const TRACE_LIMIT = 20;
  // Endpoints that this build may not have (404) are asked again this often.
  const OPTIONAL_RECHECK_MS = 30000;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  // The APIs sit beside /ui/: resolve them against this script's own URL so
  // the page also works when the admin server is mounted under a prefix.
  const apiBase = new URL('../', document.currentScript.src);
  const apiURL = (path) => new URL(path, apiBase).toString();

  const $ = (sel) => document.querySelector(sel);

  const state = {
    sparks: new Map(), // hop key → p95 samples (seconds, null: no traffic)
    bottleneckKey: null, // hop key of the top bottleneck
    slowRules: [], // per root route: how /api/bottlenecks judged its turns slow
    selected: null, // trace ID shown in the waterfall
    shownSpans: -1, // span count of the trace drawn
    listSpans: new Map(), // trace ID → span count in the latest list
    lastTraces: '',
    lastBottlenecks: '',
    optional: new Map(), // path → time of the last 404
    session: null, // session ID whose turns are shown
    lastWorst: '',
    lastSession: '',
    failingSince: null,
  };

  // ---------- helpers ----------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    for (const c of children) {
      if (c != null && c !== false) e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function svgEl(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    setAttrs(e, attrs);
    return e;
  }

  function setAttrs(e, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
  }

  const hopKey = (h) => `${h.caller}\u0000${h.route}\u0000${h.upstream}`;
  const hopText = (h) => `${h.caller} → ${h.route} → ${h.upstream}`;

  function hopCell(h, extra) {
    return el('td', {class: 'hop', title: hopText(h)},
      el('span', {class: 'caller', text: h.caller}),
      el('span', {class: 'arrow', 'aria-hidden': 'true', text: '→'}),
      el('span', {class: 'route', text: h.route}),
      el('span', {class: 'arrow', 'aria-hidden': 'true', text: '→'}),
      el('span', {class: 'upstream', text: h.upstream}),
      extra);
  }

  // fmtDur formats seconds for people: 0.42 ms, 8.1 ms, 312 ms, 1.62 s.
  function fmtDur(s) {
    if (!(s >= 0)) return '–';
    const ms = s * 1000;
    if (ms < 1) return `${ms.toFixed(2)} ms`;
    if (ms < 10) return `${ms.toFixed(1)} ms`;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 10000) return `${(ms / 1000).toFixed(2)} s`;
    return `${(ms / 1000).toFixed(1)} s`;
  }

  // fmtMs formats seconds as a bare millisecond number, for the hop table.
  function fmtMs(s) {
    if (!(s > 0)) return '–';
    const ms = s * 1000;
    if (ms < 10) return ms.toFixed(2);
    if (ms < 100) return ms.toFixed(1);
    return String(Math.round(ms));
  }

  function fmtRate(r) {
    if (!(r > 0)) return '0';
    if (r < 1) return r.toFixed(2);
    if (r < 100) return r.toFixed(1);
    return String(Math.round(r));
  }

  function fmtPct(ratio) {
    if (!(ratio > 0)) return '0';
    const p = ratio * 100;
    if (p < 0.1) return '<0.1';
    if (p < 10) return p.toFixed(1);
    return p.toFixed(0);
  }

  const pad = (n, w = 2) => String(n).padStart(w, '0');

  function fmtClock(t) {
    const d = t instanceof Date ? t : new Date(t);
    if (isNaN(d)) return '–';
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function fmtSpan(seconds) {
    if (seconds < 60) return `${Math.round(seconds)} s`;
    const m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
    return s ? `${m} min ${s} s` : `${m} min`;
  }

  const isTraceID = (id) => /^[0-9a-f]{32}$/.test(id);
  const shortID = (id) => `${id.slice(0, 8)}…`;

  function traceLink(id, text, label) {
    return el('a', {href: `#trace=${id}`, 'data-trace': id, title: `trace ${id}`, 'aria-label': label || `trace ${id}`, text});
  }

  function setMsg(node, text, cls) {
    node.textContent = text || '';
    node.className = cls ? `msg ${cls}` : 'msg';
  }

  // getJSON never throws: status 0 means the server could not be reached.
  async function getJSON(path) {
    let res;
    try {
      res = await fetch(apiURL(path), {cache: 'no-store', headers: {Accept: 'application/json'}});
    } catch (e) {
      return {status: 0, body: null, error: 'admin server unreachable'};
    }
    let body = null;
    if ((res.headers.get('Content-Type') || '').includes('json')) {
      try { body = await res.json(); } catch (e) { body = null; }
    } else {
      await res.text().catch(() => '');
    }
    const error = res.ok ? null : (body && body.error) || `HTTP ${res.status}`;
    return {status: res.status, body, error};
  }

  // An endpoint that answered 404 (not in this build) is asked again only
  // every OPTIONAL_RECHECK_MS; until then the last answer stands.
  async function getOptional(path) {
    const last = state.optional.get(path);
    if (last && Date.now() - last < OPTIONAL_RECHECK_MS) return null;
    const r = await getJSON(path);
    if (r.status === 404) state.optional.set(path, Date.now());
    else state.optional.delete(path);
    return r;
  }

  // ---------- hop table and sparklines ----------

  function pushSample(key, v) {
    let ring = state.sparks.get(key);
    if (!ring) state.sparks.set(key, ring = []);
    ring.push(v);
    if (ring.length > SPARK_POINTS) ring.splice(0, ring.length - SPARK_POINTS);
  }

  function sparkline(values) {
    const W = 124, H = 22, P = 2;
    const nums = values.filter((v) => v != null);
    const covered = fmtSpan(values.length * POLL_MS / 1000);
    const s = svgEl('svg', {class: 'spark', viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img'});
    s.append(svgEl('line', {class: 'spark-base', x1: P, x2: W - P, y1: H - P + 0.5, y2: H - P + 0.5}));
    if (!nums.length) {
      s.setAttribute('aria-label', 'p95 trend: no samples yet');
      return s;
    }
    const lo = Math.min(...nums), hi = Math.max(...nums);
    const top = hi * 1.1 || 1;
    // The samples seen so far span the width (at most SPARK_POINTS of
    // them: five minutes), the newest at the right edge.
    const step = (W - 2 * P) / Math.max(values.length - 1, 1);
    const x = (i) => P + i * step;
    const y = (v) => H - P - (v / top) * (H - 2 * P);
    // One polyline per run of samples; a gap (no traffic) breaks the line.
    let run = [];
    const flush = () => {
      if (run.length > 1) {
        s.append(svgEl('polyline', {class: 'spark-line', points: run.map((p) => p.join(',')).join(' ')}));
      }
      run = [];
    };
    values.forEach((v, i) => {
      if (v == null) flush();
      else run.push([x(i).toFixed(1), y(v).toFixed(1)]);
    });
    flush();
    const lastIdx = values.length - 1;
    if (values[lastIdx] != null) {
      s.append(svgEl('circle', {class: 'spark-dot', cx: x(lastIdx).toFixed(1), cy: y(values[lastIdx]).toFixed(1), r: 1.8}));
    }
    const now = values[lastIdx] != null ? fmtDur(values[lastIdx]) : 'no traffic';
    const label = `p95 over the last ${covered}: min ${fmtDur(lo)}, max ${fmtDur(hi)}, now ${now}`;
    s.setAttribute('aria-label', label);
    const title = svgEl('title');
    title.textContent = label;
    s.prepend(title);
    return s;
  }

  function renderHops(r) {
    const tbody = $('#hops tbody'), msg = $('#hops-msg');
    if (r.status !== 200 || !r.body) {
      setMsg(msg, r.status === 0 ? 'admin server unreachable' : `hops: ${r.error}`, 'bad');
      return 0;
    }
    const hops = r.body.hops || [];
    const seen = new Set();
    for (const h of hops) {
      const k = hopKey(h);
      seen.add(k);
      pushSample(k, h.count > 0 ? h.p95 : null);
    }
    // Hops gone from the API (no traffic for five minutes) lose their ring.
    for (const k of state.sparks.keys()) if (!seen.has(k)) state.sparks.delete(k);

    const rows = hops.map((h) => {
      const k = hopKey(h);
      const badge = k === state.bottleneckKey
        ? el('span', {class: 'badge', title: 'the hop that dominated the most slow turns', text: 'bottleneck'})
        : null;
      const errCls = h.error_ratio >= 0.05 ? 'num bad' : h.error_ratio >= 0.01 ? 'num warn' : 'num';
      return el('tr', {'data-hop': hopText(h)},
        hopCell(h, badge),
        el('td', {class: 'num', text: fmtRate(h.rate)}),
        el('td', {class: errCls, text: fmtPct(h.error_ratio)}),
        el('td', {class: 'num', text: fmtMs(h.p50)}),
        el('td', {class: 'num', text: fmtMs(h.p95)}),
        el('td', {class: 'num', text: fmtMs(h.p99)}),
        el('td', {class: 'spark-col'}, sparkline(state.sparks.get(k))));
    });
    tbody.replaceChildren(...rows);
    setMsg(msg, hops.length ? '' : 'no traffic in the last five minutes');
    return hops.length;
  }

  // ---------- bottleneck of slow turns ----------

  // ruleText says how a route's turns were judged slow (api.go slowRuleJSON).
  function ruleText(r) {
    let t = r.rule === 'bimodal' ? `${r.route}: the slow mode, from ${fmtDur(r.threshold)}`
      : r.rule === 'p95' ? `${r.route}: at least ${fmtDur(r.threshold)} (p95 ${fmtDur(r.p95)} less 5%)`
        : `${r.route}: at least ${fmtDur(r.threshold)}`;
    if (r.slo > 0) t += `, or over the SLO of ${fmtDur(r.slo)}`;
    return t;
  }

  function renderBottlenecks(r) {
    const table = $('#bottlenecks'), tbody = $('#bottlenecks tbody'), summary = $('#bn-summary');
    if (r.status !== 200 || !r.body) {
      state.bottleneckKey = null;
      state.slowRules = [];
      table.hidden = true;
      setMsg(summary, r.status === 0 ? 'admin server unreachable' : `bottlenecks: ${r.error}`, 'bad');
      state.lastBottlenecks = '';
      return;
    }
    const b = r.body;
    state.slowRules = (b.rules || []).filter((x) => x.turns > 0);
    const hops = b.hops || [];
    state.bottleneckKey = hops.length ? hopKey(hops[0]) : null;

    let text = `${b.slow_traces} of ${b.traces} turns in the last ${fmtSpan(b.window)} were slow`;
    if (state.slowRules.length) text += ` (${state.slowRules.map(ruleText).join('; ')})`;
    text += hops.length ? '.' : '; no bottleneck to name.';
    setMsg(summary, text);

    const sig = JSON.stringify(hops);
    if (sig === state.lastBottlenecks) return;
    state.lastBottlenecks = sig;
    table.hidden = !hops.length;
    tbody.replaceChildren(...hops.map((h, i) => el('tr', {class: i === 0 ? 'lead' : null, 'data-hop': hopText(h)},
      hopCell(h),
      el('td', {class: 'num', title: `mean self time ${fmtDur(h.mean_self)}`, text: String(h.count)}),
      el('td', {class: 'num', title: 'mean share of the turn spent in this hop itself', text: `${Math.round(h.share * 100)}%`}),
      el('td', {class: 'ex'}, ...(h.example_trace_ids || []).slice(0, 3)
        .filter(isTraceID)
        .map((id, j) => traceLink(id, String(j + 1), `example ${j + 1}: trace ${id}`))))));
  }

  // ---------- slowest recent traces ----------

  function tracesQuery() {
    // The turns the bottleneck panel calls slow, judged by the server on
    // their exact durations with the same rule (never a client-side
    // comparison with a percentile, which can exclude every slow turn):
    // the newest TRACE_LIMIT of them, drawn slowest first. Before there
    // are any, the newest 100 traces, of which the slowest are shown.
    if (state.slowRules.length) return `api/traces?slow=true&window=5m&limit=${TRACE_LIMIT}`;
    return 'api/traces?limit=100';
  }

  function renderTraces(r) {
    const table = $('#traces'), tbody = $('#traces tbody'), msg = $('#tr-msg'), sub = $('#tr-summary');
    if (r.status !== 200 || !r.body) {
      setMsg(msg, r.status === 0 ? 'admin server unreachable' : `traces: ${r.error}`, 'bad');
      return;
    }
    const list = (r.body.traces || []).slice()
      .sort((a, b) => b.duration - a.duration)
      .slice(0, TRACE_LIMIT);
    state.listSpans = new Map(list.map((t) => [t.trace_id, t.spans]));
    sub.textContent = state.slowRules.length
      ? 'Recent slow turns (as the bottleneck panel judges them), slowest first. Click one for its waterfall.'
      : 'The slowest of the 100 newest traces. Click one for its waterfall.';
    setMsg(msg, list.length ? '' : 'no traces yet');
    table.hidden = !list.length;

    const sig = JSON.stringify(list);
    if (sig !== state.lastTraces) {
      state.lastTraces = sig;
      tbody.replaceChildren(...list.map((t) => el('tr', {'data-trace': t.trace_id},
        el('td', {class: 'route'}, traceLink(t.trace_id, t.root.route || '(unknown)',
          `${t.root.route}, ${fmtDur(t.duration)}, trace ${t.trace_id}`)),
        el('td', {class: 'num', text: fmtDur(t.duration)}),
        el('td', {class: 'num', text: t.dropped_spans ? `${t.spans}+${t.dropped_spans}` : String(t.spans)}),
        el('td', null, el('span', {class: `outcome outcome-${t.outcome}`, text: t.outcome}), hopError(t)),
        el('td', {class: 'start', text: fmtClock(t.start)}))));
    }
    markSelected();
  }

  // hopError marks a trace whose root answered but some hop failed.
  function hopError(t) {
    if (!t.error || t.outcome !== 'ok') return null;
    return el('span', {class: 'hop-error', title: 'a hop of this trace failed', text: ' · hop error'});
  }

  function markSelected() {
    for (const tr of document.querySelectorAll('#traces tbody tr')) {
      const on = tr.dataset.trace === state.selected;
      tr.classList.toggle('selected', on);
      if (on) tr.setAttribute('aria-current', 'true');
      else tr.removeAttribute('aria-current');
    }
  }

  // ---------- waterfall ----------

  async function selectTrace(id) {
    if (!isTraceID(id)) return;
    state.selected = id;
    markSelected();
    const r = await getJSON(`api/traces/${id}`);
    if (state.selected !== id) return; // another trace was picked meanwhile
    const table = $('#waterfall'), msg = $('#wf-msg');
    if (r.status !== 200 || !r.body) {
      table.hidden = true;
      $('#wf-summary').replaceChildren();
      state.shownSpans = -1;
      setMsg(msg, r.status === 404
        ? `Trace ${id} is not in the store: unknown, or evicted by newer traces.`
        : `trace ${id}: ${r.error}`, r.status === 404 ? '' : 'bad');
      return;
    }
    renderWaterfall(r.body);
  }

  // selfSegments returns, for each server span, the parts of its interval
  // not covered by its child hops (the server spans whose nearest
  // server-span ancestor it is): where the hop itself spent time. This is
  // the self time the API reports, laid out on the time axis.
  function selfSegments(spans) {
    const hopParent = spans.map((s) => {
      let p = s.parent;
      while (p >= 0 && spans[p].kind !== 'server') p = spans[p].parent;
      return p;
    });
    const children = spans.map(() => []);
    spans.forEach((s, i) => {
      if (s.kind === 'server' && hopParent[i] >= 0) children[hopParent[i]].push([s.offset, s.offset + s.duration]);
    });
    return spans.map((s, i) => {
      if (s.kind !== 'server') return [];
      const start = s.offset, end = s.offset + s.duration;
      const ivs = children[i].map(([a, b]) => [Math.max(a, start), Math.min(b, end)])
        .filter(([a, b]) => b > a).sort((x, y) => x[0] - y[0]);
      const out = [];
      let at = start;
      for (const [a, b] of ivs) {
        if (a > at) out.push([at, a]);
        at = Math.max(at, b);
      }
      if (end > at) out.push([at, end]);
      return out;
    });
  }

  function renderWaterfall(d) {
    const sum = d.summary, spans = d.spans || [];
    const table = $('#waterfall'), tbody = $('#waterfall tbody');
    const total = sum.duration > 0 ? sum.duration
      : Math.max(1e-9, ...spans.map((s) => s.offset + s.duration));
    const t0 = Date.parse(sum.start);
    const pct = (sec) => `${Math.min(100, Math.max(0, sec / total * 100)).toFixed(3)}%`;

    const sep = () => el('span', {class: 'sep', 'aria-hidden': 'true', text: '|'});
    $('#wf-summary').replaceChildren(el('span', null,
      el('strong', {text: sum.root.route}), ' ',
      el('code', {title: sum.trace_id, text: sum.trace_id}), sep(),
      el('strong', {text: fmtDur(sum.duration)}), sep(),
      `${sum.spans} spans${sum.dropped_spans ? ` (+${sum.dropped_spans} dropped)` : ''}`, sep(),
      el('span', {class: `outcome outcome-${sum.outcome}`, text: sum.outcome}), hopError(sum), sep(),
      `started ${fmtClock(sum.start)}`));

    const axis = $('#wf-axis');
    axis.replaceChildren(...[0, 0.25, 0.5, 0.75, 1].map((f, i, all) => {
      const span = el('span', {class: i === 0 ? 'first' : i === all.length - 1 ? 'last' : null, text: f === 0 ? '0' : fmtDur(total * f)});
      span.style.left = `${f * 100}%`;
      return span;
    }));

    const selfs = selfSegments(spans);
    tbody.replaceChildren(...spans.map((s, i) => {
      const label = el('td', {class: 'label'});
      label.style.paddingLeft = `${6 + s.depth * 12}px`;
      const details = [s.method, s.code && `code ${s.code}`, s.endpoint, s.attempt > 1 && `attempt ${s.attempt}`]
        .filter(Boolean);
      const events = (s.events || []).map((e) => {
        const attrs = Object.entries(e.attrs || {}).map(([k, v]) => `${k}=${v}`).join(' ');
        return attrs ? `${e.name} (${attrs})` : e.name;
      });
      // A server span is the hop: caller → route → upstream. A client span
      // is one attempt of that hop at an endpoint.
      // A service span is one the service sent to hopwatch's OTLP
      // receiver: what happened inside it between two hops.
      const line1 = s.kind === 'server'
        ? [el('strong', {text: s.route}), ' ', el('span', {class: 'sub', text: `${s.caller} → ${s.upstream}`})]
        : s.kind === 'service'
          ? [el('span', {text: s.name}), ' ', el('span', {class: 'sub', text: `in ${s.service}`})]
          : [el('span', {text: s.route}), ' ', el('span', {class: 'sub', text: `attempt ${s.attempt || 1}${s.endpoint ? ` → ${s.endpoint}` : ''}`})];
      const line2 = [s.method, s.code && `code ${s.code}`].filter(Boolean);
      // A stitched hop's propagated parent is a span of the calling
      // service that hopwatch did not see: it is drawn under the attempt
      // that carried the request into that service instead.
      const stitch = s.stitched
        ? el('span', {class: 'stitched', title: `stitched: the caller's own span ${s.stitched_from} is not in hopwatch's view; shown under the attempt that carried the request into ${s.caller}, the gap is ${s.caller}'s own time`, text: '⤷'})
        : null;
      label.append(
        el('div', {class: 'wf-line1'}, stitch, el('span', {class: `kind kind-${s.kind}`, text: s.kind}), ...line1),
        el('div', {class: 'wf-line2'}, line2.join(' · '),
          events.length ? el('span', {class: 'ev', text: `${line2.length ? ' · ' : ''}⚑ ${events.join(', ')}`}) : null));
      label.title = (s.kind === 'service'
        ? `span ${s.span_id} of service ${s.service}: ${s.name} (sent by the service, not a hop)`
        : `${s.kind} span ${s.span_id}: ${s.caller} → ${s.route} → ${s.upstream}`) +
        (s.stitched ? `\nstitched under the attempt into ${s.caller} (propagated parent ${s.stitched_from} not seen)` : '') +
        (details.length ? `\n${details.join(', ')}` : '') + `\noutcome ${s.outcome}` +
        (events.length ? `\nevents: ${events.join(', ')}` : '');

      const track = el('div', {class: 'track'});
      const bar = el('div', {
        class: `bar kind-${s.kind} outcome-${s.outcome}`,
        title: `${s.kind === 'service' ? `${s.service}: ${s.name}` : `${s.route} ${s.kind}`}: ${fmtDur(s.duration)} from +${fmtDur(s.offset)}, ${s.outcome}` +
          (s.kind === 'server' ? `, self ${fmtDur(s.self_time)}` : ''),
      });
      bar.style.left = pct(s.offset);
      bar.style.width = pct(s.duration);
      if (s.duration > 0) {
        for (const [a, b] of selfs[i]) {
          const seg = el('div', {class: 'self'});
          seg.style.left = `${((a - s.offset) / s.duration * 100).toFixed(3)}%`;
          seg.style.width = `${((b - a) / s.duration * 100).toFixed(3)}%`;
          bar.append(seg);
        }
      }
      track.append(bar);
      for (const e of s.events || []) {
        const at = (Date.parse(e.time) - t0) / 1000;
        if (!(at >= 0)) continue;
        const mark = el('div', {class: 'event', title: `${e.name} at +${fmtDur(at)}`});
        mark.style.left = pct(at);
        track.append(mark);
      }
      const timeline = el('td', {class: 'timeline'}, track,
        el('span', {class: 'visually-hidden', text: `starts at +${fmtDur(s.offset)}, lasts ${fmtDur(s.duration)}, ${s.outcome}`}));

      return el('tr', {class: `kind-${s.kind}`, 'data-span': s.span_id, 'data-route': s.route},
        label, timeline,
        el('td', {class: 'num', text: fmtDur(s.duration)}),
        el('td', {class: 'num', text: s.kind === 'server' ? fmtDur(s.self_time) : '–'}));
    }));
    table.hidden = false;
    state.shownSpans = spans.length;
    setMsg($('#wf-msg'), spans.length ? '' : 'This trace has no spans.');
  }


  // ---------- conversations: SLI chart, worst sessions, turns ----------

  const SLI_WINDOW = '1h';
  const MIN_CHART_POINTS = 15; // steps the SLI chart always shows
  const WORST_LIMIT = 100; // rows of the worst-sessions list (it scrolls)

  // renderConversation draws the panel from /api/sli and
  // /api/sessions?good=false; null: not asked this time (404 recheck).
  function renderConversation(sli, sessions) {
    if (sli == null || sessions == null) return;
    const msg = $('#cv-msg'), body = $('#cv-body');
    if (sli.status === 404 || sessions.status === 404) {
      // No conversation section: say how to turn it on.
      state.conv = null;
      body.hidden = true;
      $('#cv-chart').replaceChildren();
      $('#cv-summary').replaceChildren();
      setMsg(msg, 'Conversation signals are off. Add a conversation section to the configuration, ' +
        'naming the route whose requests are user turns (conversation: {entry_routes: [chat]}), ' +
        'and restart hopwatch: sessions, their outcomes and the good-session SLI appear here.', 'na');
      return;
    }
    for (const r of [sli, sessions]) {
      if (r.status !== 200 || !r.body) {
        setMsg(msg, r.status === 0 ? 'admin server unreachable' : `conversations: ${r.error}`, 'bad');
        return;
      }
    }
    setMsg(msg, '');
    body.hidden = false;
    renderSLISummary(sli.body, sessions.body);
    renderSLIChart(sli.body);
    renderWorst(sessions.body.sessions || []);
  }

  function renderSLISummary(d, s) {
    const t = d.total || {};
    const sep = () => el('span', {class: 'sep', 'aria-hidden': 'true', text: '|'});
    const good = t.good_ratio != null
      ? el('strong', {text: `${fmtPct(t.good_ratio)}%`}) : el('strong', {text: '–'});
    $('#cv-summary').replaceChildren(
      el('span', {class: 'cv-key cv-key-sli'}), 'good sessions ', good,
      el('span', {class: 'sub', text: ` (${t.good_sessions || 0} of ${t.sessions || 0} ended)`}), sep(),
      el('span', {class: 'cv-key cv-key-p95'}), 'turn p95 ', el('strong', {text: t.p95 != null ? fmtDur(t.p95) : '–'}),
      el('span', {class: 'sub', text: ` (SLO ${fmtDur(d.turn_slo)})`}), sep(),
      el('span', {class: 'cv-key cv-key-err'}), 'errors ', el('strong', {text: t.error_ratio != null ? `${fmtPct(t.error_ratio)}%` : '–'}),
      el('span', {class: 'sub', text: ` of ${t.turns || 0} turns`}), sep(),
      `${s.active || 0} active`);
  }

  // renderSLIChart draws three strips on one time axis: the good-session
  // ratio, the p95 turn latency (with the turn SLO) and the turn error
  // ratio, one point per step of /api/sli.
  function renderSLIChart(d) {
    const box = $('#cv-chart');
    // Leading minutes without a turn or an ended session are left out
    // (hopwatch just started), down to a quarter of an hour, so that a
    // young series is not squeezed against the right edge.
    const all = d.points || [];
    const first = all.findIndex((p) => p.turns > 0 || p.sessions > 0);
    const points = all.slice(first < 0 ? 0 : Math.max(0, Math.min(first, all.length - MIN_CHART_POINTS)));
    const W = Math.max(320, Math.round(box.clientWidth || 700));
    const L = 92, R = 62, STRIP = 38, GAP = 8, TOP = 4, AXIS = 16;
    const strips = [
      {key: 'sli', label: 'good sessions', v: (p) => p.good_ratio, max: 1, fmt: (v) => `${fmtPct(v)}%`},
      {key: 'p95', label: 'turn p95', v: (p) => p.p95,
        max: Math.max(d.turn_slo * 1.25, ...points.map((p) => p.p95 || 0)) || 1, fmt: fmtDur, ref: d.turn_slo, refLabel: 'SLO'},
      {key: 'err', label: 'turn errors', v: (p) => p.error_ratio,
        max: Math.max(0.05, ...points.map((p) => p.error_ratio || 0)), fmt: (v) => `${fmtPct(v)}%`},
    ];
    const H = TOP + strips.length * (STRIP + GAP) + AXIS;
    const svg = svgEl('svg', {class: 'cv-svg', viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img'});
    const n = points.length;
    const x = (i) => L + (n > 1 ? i * (W - L - R) / (n - 1) : 0);
    const labels = [];
    strips.forEach((st, k) => {
      const y0 = TOP + k * (STRIP + GAP), y1 = y0 + STRIP;
      const y = (v) => y1 - Math.min(1, v / st.max) * STRIP;
      svg.append(svgEl('rect', {class: 'cv-strip', x: L, y: y0, width: W - L - R, height: STRIP}));
      const name = svgEl('text', {class: 'cv-label', x: L - 6, y: y0 + 13, 'text-anchor': 'end'});
      name.textContent = st.label;
      const scale = svgEl('text', {class: 'cv-scale', x: L - 6, y: y1 - 1, 'text-anchor': 'end'});
      scale.textContent = `0–${st.fmt(st.max)}`;
      svg.append(name, scale);
      if (st.ref > 0) {
        svg.append(svgEl('line', {class: 'cv-ref', x1: L, x2: W - R, y1: y(st.ref), y2: y(st.ref)}));
        const t = svgEl('text', {class: 'cv-scale', x: L + 3, y: y(st.ref) - 2});
        t.textContent = `${st.refLabel} ${st.fmt(st.ref)}`;
        svg.append(t);
      }
      // One polyline per run of points with a value; a dot where a point
      // stands alone.
      let run = [];
      const flush = () => {
        if (run.length > 1) svg.append(svgEl('polyline', {class: `cv-line cv-${st.key}`, points: run.map((q) => q.join(',')).join(' ')}));
        else if (run.length === 1) svg.append(svgEl('circle', {class: `cv-dot cv-${st.key}`, cx: run[0][0], cy: run[0][1], r: 2}));
        run = [];
      };
      let last = null;
      points.forEach((p, i) => {
        const v = st.v(p);
        if (v == null) { flush(); return; }
        run.push([x(i).toFixed(1), y(v).toFixed(1)]);
        last = v;
      });
      flush();
      const now = svgEl('text', {class: `cv-now cv-${st.key}-text`, x: W - R + 4, y: y0 + 13});
      now.textContent = last != null ? st.fmt(last) : '–';
      svg.append(now);
      labels.push(`${st.label} ${last != null ? st.fmt(last) : 'no data'}`);
    });
    // The shared time axis: a tick every quarter of the window.
    const yAxis = TOP + strips.length * (STRIP + GAP) - GAP + 12;
    for (let q = 0; q <= 4; q++) {
      const i = Math.round(q * (n - 1) / 4);
      if (!points[i]) continue;
      const t = svgEl('text', {class: 'cv-scale', x: x(i), y: yAxis, 'text-anchor': q === 0 ? 'start' : q === 4 ? 'end' : 'middle'});
      t.textContent = fmtClock(points[i].start).slice(0, 5);
      svg.append(t);
    }
    const label = `Last ${fmtSpan(points.length * d.step)}, per ${fmtSpan(d.step)}: ${labels.join(', ')}`;
    svg.setAttribute('aria-label', label);
    const title = svgEl('title');
    title.textContent = label;
    svg.prepend(title);
    box.replaceChildren(svg);
  }

  const WORST = new Set(['abandoned', 'frustrated']);

  // renderWorst lists abandoned and frustrated sessions: green ones first
  // (the sessions latency and error dashboards cannot see), newest first.
  function renderWorst(list) {
    const worst = list.filter((s) => WORST.has(s.outcome))
      .sort((a, b) => (b.green - a.green) || (Date.parse(b.ended) - Date.parse(a.ended)))
      .slice(0, WORST_LIMIT);
    const sig = JSON.stringify(worst.map((s) => [s.id, s.ended, s.outcome]));
    if (sig !== state.lastWorst) {
      state.lastWorst = sig;
      $('#cv-sessions tbody').replaceChildren(...worst.map((s) => {
        const lb = s.last_bad;
        const after = lb
          ? `${lb.outcome}${lb.blame ? ` · ${lb.blame}` : ''}`
          : s.repeats ? 'repeated question' : '–';
        return el('tr', {'data-session': s.id, tabindex: 0, title: `session ${s.id}: click for its turns`},
          el('td', {class: 'sid'}, el('code', {text: s.id}),
            s.green ? el('span', {class: 'tag-green', title: 'every turn 2xx/OK and within the turn SLO', text: 'green'}) : null),
          el('td', null, el('span', {class: `so so-${s.outcome}`, text: s.outcome})),
          el('td', {class: 'num', text: String(s.turns)}),
          el('td', {class: 'num', text: String(s.repeats)}),
          el('td', {class: 'after', text: after}),
          el('td', {class: 'num start', text: s.ended ? fmtClock(s.ended).slice(0, 8) : '–'}));
      }));
    }
    setMsg($('#cv-sessions-msg'), worst.length ? '' : 'No abandoned or frustrated session among the last ended ones.');
    markSession();
    if (state.session) selectSession(state.session, false);
  }

  function markSession() {
    for (const tr of document.querySelectorAll('#cv-sessions tbody tr')) {
      const on = tr.dataset.session === state.session;
      tr.classList.toggle('selected', on);
      if (on) tr.setAttribute('aria-current', 'true');
      else tr.removeAttribute('aria-current');
    }
  }

  async function selectSession(id, fresh = true) {
    state.session = id;
    markSession();
    const r = await getJSON(`api/sessions/${encodeURIComponent(id)}`);
    if (state.session !== id) return;
    const table = $('#cv-turns'), msg = $('#cv-turns-msg');
    if (r.status !== 200 || !r.body) {
      table.hidden = true;
      setMsg(msg, r.status === 404 ? `Session ${id} is no longer kept.` : `session ${id}: ${r.error}`, r.status === 404 ? '' : 'bad');
      return;
    }
    const s = r.body, turns = s.turns_detail || [];
    const sig = JSON.stringify(s);
    if (!fresh && sig === state.lastSession) return;
    state.lastSession = sig;
    $('#cv-turns-title').replaceChildren('Turns of ', el('code', {text: s.id}), ' ',
      el('span', {class: `so so-${s.outcome}`, text: s.outcome}),
      el('span', {class: 'sub', text: ` · ${s.turns} turn${s.turns === 1 ? '' : 's'} in ${fmtDur(s.duration)}` +
        (s.turns > turns.length ? ` (last ${turns.length} kept)` : '')}));
    $('#cv-turns tbody').replaceChildren(...turns.map((t) => {
      const marks = [...t.signals, t.verdict && `verdict ${t.verdict}`].filter(Boolean);
      const trace = isTraceID(t.trace_id) ? traceLink(t.trace_id, shortID(t.trace_id), `turn ${t.index}: trace ${t.trace_id}`) : '–';
      return el('tr', {'data-turn-trace': isTraceID(t.trace_id) ? t.trace_id : null, class: t.outcome === 'good' ? null : 'bad-turn'},
        el('td', {class: 'num', text: String(t.index)}),
        el('td', {class: 'start', text: fmtClock(t.start)}),
        el('td', {class: t.green ? 'num' : 'num warn', text: fmtDur(t.latency)}),
        el('td', null, el('span', {class: `to to-${t.outcome}`, text: t.outcome})),
        el('td', {class: 'marks', text: marks.join(', ') || '–'}),
        el('td', {class: 'blame', text: t.blame || '–'}),
        el('td', {class: 'trace'}, trace));
    }));
    table.hidden = !turns.length;
    setMsg(msg, turns.length ? 'Click a turn for its trace waterfall.' : 'No turn kept.');
  }

  // ---------- optional panels: breakers & fallbacks ----------

  function scalar(v) {
    if (v == null) return '–';
    if (typeof v === 'number') return Number.isInteger(v) ? String(v) : v.toFixed(3);
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  // renderGeneric draws whatever a newer endpoint returns, without knowing
  // its shape in advance: top-level scalars as a list, arrays of objects as
  // tables, objects of scalars as lists.
  function renderGeneric(box, body) {
    const parts = [];
    const table = (rows) => {
      const cols = [...new Set(rows.flatMap((r) => (r && typeof r === 'object' ? Object.keys(r) : [])))];
      return el('table', {class: 'data'},
        el('thead', null, el('tr', null, ...cols.map((c) => el('th', {scope: 'col', text: c})))),
        el('tbody', null, ...rows.map((r) => el('tr', null, ...cols.map((c) => el('td', {text: scalar(r && r[c])}))))));
    };
    const dl = (entries) => el('dl', null, ...entries.flatMap(([k, v]) => [el('dt', {text: k}), el('dd', {text: scalar(v)})]));
    if (Array.isArray(body)) {
      parts.push(body.length ? table(body) : el('p', {class: 'na', text: 'none'}));
    } else if (body && typeof body === 'object') {
      const flat = [];
      for (const [k, v] of Object.entries(body)) {
        if (Array.isArray(v)) {
          parts.push(el('h3', {text: k}), v.length ? table(v) : el('p', {class: 'na', text: 'none'}));
        } else if (v && typeof v === 'object') {
          parts.push(el('h3', {text: k}), dl(Object.entries(v)));
        } else {
          flat.push([k, v]);
        }
      }
      if (flat.length) parts.unshift(dl(flat));
    }
    box.replaceChildren(...parts);
  }

  // renderOptional: 404 means this build has no such endpoint; the panel
  // says so and shows no data. null: not asked this time.
  function renderOptional(r, box, msg, what, absent) {
    if (r == null) return;
    if (r.status === 404) {
      box.replaceChildren();
      setMsg(msg, absent, 'na');
      return;
    }
    if (r.status !== 200) {
      setMsg(msg, r.status === 0 ? 'admin server unreachable' : `${what}: ${r.error}`, 'bad');
      return;
    }
    setMsg(msg, '');
    renderGeneric(box, r.body);
  }

  // renderGenAI shows what each genai route spent per model: requests,
  // tokens, truncated answers, cost and mean time to first token.
  function renderGenAI(r) {
    if (r == null) return;
    const box = $('#genai');
    const msg = $('#ga-msg');
    if (r.status === 200 && r.body && Array.isArray(r.body.models) && r.body.models.length === 0) {
      box.replaceChildren();
      setMsg(msg, 'no LLM calls yet: set genai: {api: openai} on an HTTP route to an OpenAI-compatible API', 'na');
      return;
    }
    if (r.status !== 200 || !r.body || !Array.isArray(r.body.models)) {
      renderOptional(r, box, msg, 'model usage', 'model usage: not available');
      return;
    }
    setMsg(msg, '');
    const num = (v) => (v >= 1e6 ? `${(v / 1e6).toFixed(2)} M` : v >= 1e4 ? `${(v / 1e3).toFixed(1)} k` : String(Math.round(v)));
    // Narrow panel: the route goes in the model cell's tooltip; tokens in
    // and out share a column.
    box.replaceChildren(el('table', {class: 'data', id: 'genai-table'},
      el('thead', null, el('tr', null, ...['model', 'req.', 'tokens in / out', 'trunc.', 'cost', 'TTFT'].map((c) => el('th', {scope: 'col', text: c})))),
      el('tbody', null, ...r.body.models.map((m) => el('tr', {'data-model': m.model},
        el('td', {title: `route ${m.route}`, 'data-route': m.route}, el('span', {class: 'model', text: m.model})),
        el('td', {text: num(m.requests)}),
        el('td', {text: `${num(m.input_tokens)} / ${num(m.output_tokens)}`}), el('td', {text: num(m.truncated)}),
        el('td', {text: m.cost ? m.cost.toFixed(4) : '–'}), el('td', {text: m.ttft_mean_seconds ? fmtMs(m.ttft_mean_seconds) + ' ms' : '–'}))))));
  }

  // ---------- polling ----------

  async function refresh() {
    const [hops, bottlenecks, breakers, genai, sli, sessions] = await Promise.all([
      getJSON('api/hops'),
      getJSON('api/bottlenecks?window=5m'),
      getOptional('api/breakers'),
      getOptional('api/genai'),
      getOptional(`api/sli?window=${SLI_WINDOW}`),
      getOptional('api/sessions?good=false&limit=200'),
    ]);
    renderBottlenecks(bottlenecks); // first: the hop table marks the bottleneck
    const n = renderHops(hops);
    renderTraces(await getJSON(tracesQuery()));
    renderOptional(breakers, $('#breakers'), $('#br-msg'), 'circuit breakers', 'circuit breakers: not configured');
    renderGenAI(genai);
    renderConversation(sli, sessions);

    // A trace picked while it was still in flight gains spans: redraw it.
    const listed = state.listSpans.get(state.selected);
    if (state.selected && listed != null && listed !== state.shownSpans) selectTrace(state.selected);

    const status = $('#status');
    if (hops.status === 0) {
      state.failingSince = state.failingSince || new Date();
      status.textContent = `admin server unreachable since ${fmtClock(state.failingSince).slice(0, 8)}; retrying every ${POLL_MS / 1000} s`;
      status.classList.add('bad');
    } else {
      state.failingSince = null;
      status.textContent = `${n} hop${n === 1 ? '' : 's'} · updated ${fmtClock(new Date()).slice(0, 8)}`;
      status.classList.remove('bad');
    }
  }

  let timer = 0;
  let running = false;

  async function tick() {
    if (running) return;
    running = true;
    clearTimeout(timer);
    try {
      if (!document.hidden) await refresh();
    } catch (e) {
      const status = $('#status');
      status.textContent = `dashboard error: ${e && e.message ? e.message : e}`;
      status.classList.add('bad');
    } finally {
      running = false;
      timer = setTimeout(tick, POLL_MS);
    }
  }

  function hashTrace() {
    const m = /^#trace=([0-9a-f]{32})$/.exec(location.hash);
    return m ? m[1] : null;
  }

  function showWaterfall() {
    const panel = $('#waterfall-panel');
    panel.focus({preventScroll: true});
    panel.scrollIntoView({block: 'nearest'});
  }

  window.addEventListener('hashchange', () => {
    const id = hashTrace();
    if (id) {
      selectTrace(id);
      showWaterfall();
    }
  });

  // A click on a trace row opens it like its link; a click on the link of
  // the trace already in the URL reloads it (the hash does not change).
  document.addEventListener('click', (ev) => {
    const link = ev.target.closest('a[data-trace]');
    if (link) {
      if (location.hash === `#trace=${link.dataset.trace}`) {
        ev.preventDefault();
        selectTrace(link.dataset.trace);
        showWaterfall();
      }
      return;
    }
    const row = ev.target.closest('#traces tbody tr[data-trace]');
    if (row) {
      location.hash = `trace=${row.dataset.trace}`;
      return;
    }
    // A turn of the selected session opens its trace, as its link does.
    const turn = ev.target.closest('#cv-turns tbody tr[data-turn-trace]');
    if (turn) {
      location.hash = `trace=${turn.dataset.turnTrace}`;
      return;
    }
    const session = ev.target.closest('#cv-sessions tbody tr[data-session]');
    if (session) selectSession(session.dataset.session);
  });

  document.addEventListener('keydown', (ev) => {
    const session = ev.target.closest && ev.target.closest('#cv-sessions tbody tr[data-session]');
    if (session && (ev.key === 'Enter' || ev.key === ' ')) {
      ev.preventDefault();
      selectSession(session.dataset.session);
    }
  });

  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) tick();
  });

  const initial = hashTrace();
  if (initial) selectTrace(initial);
  tick();
})();
