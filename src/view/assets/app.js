// rezolus view: draws the dashboard served by `rezolus view` (or inlined in
// a report) with uPlot. No build step, no network beyond this server.
"use strict";

(function () {
  const report = window.REZOLUS_REPORT;
  const status = {
    ready: false,
    section: null,
    charts: [],
    errors: [],
  };
  window.rezolusStatus = status;
  // for tests: each chart's x range, [min, max]
  status.ranges = () => plots.map((p) => [p.scales.x.min, p.scales.x.max]);
  window.addEventListener("error", (e) => status.errors.push(String(e.message)));

  const $ = (id) => document.getElementById(id);
  let dashboard = null;
  let plots = [];
  let charts = []; // what draw() made, in page order
  let zoom = null; // {min, max} of x while zoomed
  let syncing = false;
  let timer = null;
  let generation = 0;

  // ---- units -----------------------------------------------------------

  function sig(v) {
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1);
    if (a >= 1) return v.toFixed(2);
    return v.toPrecision(3);
  }

  function scaled(v, steps, base) {
    let i = 0;
    while (Math.abs(v) >= base && i < steps.length - 1) {
      v /= base;
      i++;
    }
    return sig(v) + " " + steps[i];
  }

  function time(ns) {
    const a = Math.abs(ns);
    if (a < 1e3) return sig(ns) + " ns";
    if (a < 1e6) return sig(ns / 1e3) + " us";
    if (a < 1e9) return sig(ns / 1e6) + " ms";
    return sig(ns / 1e9) + " s";
  }

  // a value with its unit made human: ns -> us/ms/s, bytes -> KiB/MiB
  function format(v, unit) {
    if (v == null || !isFinite(v)) return "-";
    const rate = unit.endsWith("/s");
    const base = rate ? unit.slice(0, -2) : unit;
    const per = rate ? "/s" : "";
    switch (base) {
      case "nanoseconds":
        return time(v) + per;
      case "bytes":
        return scaled(v, ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], 1024) + per;
      case "percent":
        return sig(v) + " %";
      default: {
        const s = scaled(v, ["", "k", "M", "G", "T", "P"], 1000).trim();
        return base ? s + " " + base + per : s + per;
      }
    }
  }

  // the same, shorter, for an axis: the unit's name goes in the title
  function axisFormat(v, unit) {
    const base = unit.endsWith("/s") ? unit.slice(0, -2) : unit;
    if (["nanoseconds", "bytes", "percent"].includes(base)) return format(v, unit);
    return scaled(v, ["", "k", "M", "G", "T", "P"], 1000).trim();
  }

  function unitTitle(unit) {
    const base = unit.endsWith("/s") ? unit.slice(0, -2) : unit;
    if (["nanoseconds", "bytes", "percent"].includes(base) || !unit) return "";
    return " (" + unit + ")";
  }

  function clock(seconds) {
    const s = Math.round(seconds);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (n) => String(n).padStart(2, "0");
    return "+" + (h ? h + ":" + pad(m) : m) + ":" + pad(s % 60);
  }

  // ---- data ------------------------------------------------------------

  async function getJSON(url) {
    const r = await fetch(url);
    if (!r.ok) throw new Error(url + ": " + r.status + " " + (await r.text()));
    return r.json();
  }

  async function loadDashboard() {
    if (report) return report.dashboard;
    return getJSON("api/dashboard");
  }

  // range: {min, max} in seconds since the epoch, or none for everything
  async function loadSection(id, range) {
    if (report) return report.sections[id];
    let url = "api/section/" + encodeURIComponent(id);
    if (range) url += "?from=" + range.min + "&to=" + range.max;
    return getJSON(url);
  }

  // a recording's section was served with merged points: once zoomed,
  // ask for the zoomed range at full resolution (and for everything
  // again once zoomed out)
  let refined = false;
  let refining = null;
  function refine() {
    if (report || dashboard.mode !== "file") return;
    if (!refined && !(zoom && lastStep > 1)) return;
    clearTimeout(refining);
    refining = setTimeout(async () => {
      const id = status.section;
      const range = zoom ? { min: zoom.min, max: zoom.max } : null;
      try {
        const data = await loadSection(id, range);
        if (status.section !== id) return;
        refined = range != null;
        update(dashboard.sections.find((s) => s.id === id), data);
      } catch (e) {
        $("status").textContent = "Error: " + e.message;
      }
    }, 150);
  }
  let lastStep = 1;

  // ---- charts ----------------------------------------------------------

  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
  const PERCENTILE_COLORS = ["#2ca02c", "#1f77b4", "#ff7f0e", "#d62728", "#7f7f7f"];

  function xValues(t, source) {
    if (dashboard.mode !== "compare") return t;
    const start = dashboard.sources[source].start || 0;
    return t.map((v) => v - start);
  }

  function syncHooks() {
    return {
      setScale: [
        (u, key) => {
          if (key !== "x" || syncing) return;
          syncing = true;
          const { min, max } = u.scales.x;
          for (const p of plots) if (p !== u) p.setScale("x", { min, max });
          syncing = false;
        },
      ],
      setSelect: [
        (u) => {
          if (u.select.width > 0) {
            zoom = {
              min: u.posToVal(u.select.left, "x"),
              max: u.posToVal(u.select.left + u.select.width, "x"),
            };
            refine();
          }
        },
      ],
    };
  }

  // whether the cursor is beyond this chart's data (in A/B, past the end
  // of the shorter recording), where the nearest point is not the value
  function outside(u) {
    const t = u.data[0];
    if (u.cursor.left == null || u.cursor.left < 0 || t.length === 0) return false;
    const x = u.posToVal(u.cursor.left, "x");
    const step = t.length > 1 ? (t[t.length - 1] - t[0]) / (t.length - 1) : 0;
    return x < t[0] - step || x > t[t.length - 1] + step;
  }

  function baseOptions(info, width) {
    const relative = dashboard.mode === "compare";
    return {
      width: width,
      height: 220,
      cursor: {
        sync: { key: "rezolus", setSeries: false },
        drag: { x: true, y: false },
      },
      scales: { x: { time: !relative } },
      axes: [
        relative
          ? { values: (u, splits) => splits.map(clock) }
          : {},
        {
          size: 80,
          values: (u, splits) => splits.map((v) => axisFormat(v, info.unit)),
        },
      ],
      series: [
        relative
          ? { label: "time", value: (u, v) => (v == null || outside(u) ? "--" : clock(v)) }
          : { label: "time" },
      ],
      hooks: syncHooks(),
    };
  }

  // each chart: {plot, points, update(t, data) -> false if it must be rebuilt}
  // a value with no neighbour on either side is drawn as a dot (a line
  // needs two), so an isolated spike is not lost
  function isolated(u, si, show) {
    if (show) return null;
    const v = u.data[si];
    const out = [];
    for (let i = 0; i < v.length; i++) {
      if (v[i] != null && (i === 0 || v[i - 1] == null) && (i === v.length - 1 || v[i + 1] == null)) {
        out.push(i);
      }
    }
    return out;
  }

  // the same line name has the same colour in every chart of an id (A and B)
  const palette = new Map();
  function colour(info, name, i) {
    if (info.style === "percentiles") return PERCENTILE_COLORS[i % PERCENTILE_COLORS.length];
    let names = palette.get(info.id);
    if (!names) palette.set(info.id, (names = new Map()));
    if (!names.has(name)) names.set(name, COLORS[names.size % COLORS.length]);
    return names.get(name);
  }

  function linesPlot(el, info, t, data, width) {
    const series = data.series || [];
    const names = series.map((s) => s.name).join("\u0000");
    const opts = baseOptions(info, width);
    opts.series = [opts.series[0]].concat(
      series.map((s, i) => ({
        label: s.name,
        stroke: colour(info, s.name, i),
        width: 1.5,
        spanGaps: false,
        points: { filter: isolated },
        value: (u, v) => (outside(u) ? "--" : format(v, info.unit)),
      }))
    );
    const count = (series) =>
      series.reduce((n, s) => n + s.values.filter((v) => v != null).length, 0);
    const plot = new uPlot(opts, [t].concat(series.map((s) => s.values)), el);
    const made = { plot, points: count(series) };
    made.update = (t, data) => {
      const series = data.series || [];
      if (series.map((s) => s.name).join("\u0000") !== names) return false;
      plot.setData([t].concat(series.map((s) => s.values)), zoom == null);
      made.points = count(series);
      return true;
    };
    return made;
  }

  function heatmapPlot(el, info, t, data, width) {
    // row r (absolute) holds [2^(r-1), 2^r); row 0 holds zeros, drawn at [0.5, 1)
    const lower = (r) => (r === 0 ? 0.5 : Math.pow(2, r - 1));
    const upper = (r) => Math.pow(2, r);
    const state = {};
    const load = (t, data) => {
      state.t = t;
      state.rows = data.rows || [];
      state.low = data.low || 0;
      state.height = state.rows.reduce((n, c) => Math.max(n, c.length), 0);
      state.max = 0;
      state.points = 0;
      for (const c of state.rows) {
        for (const v of c) {
          if (v > 0) {
            state.max = Math.max(state.max, v);
            state.points++;
          }
        }
      }
    };
    load(t, data);
    const caption = document.createElement("div");
    caption.className = "caption";
    const opts = baseOptions(info, width);
    opts.scales.y = {
      distr: 3,
      log: 2,
      range: () => [lower(state.low), upper(state.low + Math.max(state.height, 1) - 1)],
    };
    opts.series = [opts.series[0], { label: "observations/s", show: true, stroke: "transparent" }];
    opts.legend = { show: false };
    opts.hooks.draw = [
      (u) => {
        const { t, rows, low, max } = state;
        const ctx = u.ctx;
        ctx.save();
        ctx.beginPath();
        ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
        ctx.clip();
        const scale = Math.log1p(max || 1);
        for (let i = 0; i < rows.length; i++) {
          const x1 = u.valToPos(t[i], "x", true);
          const prev = i > 0 ? t[i - 1] : t[i] - (t.length > 1 ? t[1] - t[0] : 1);
          const x0 = u.valToPos(prev, "x", true);
          const column = rows[i];
          for (let r = 0; r < column.length; r++) {
            const v = column[r];
            if (!(v > 0)) continue;
            const y0 = u.valToPos(upper(low + r), "y", true);
            const y1 = u.valToPos(lower(low + r), "y", true);
            const a = 0.15 + 0.85 * (Math.log1p(v) / scale);
            ctx.fillStyle = "rgba(214, 39, 40, " + a.toFixed(3) + ")";
            ctx.fillRect(x0, y0, Math.max(x1 - x0, 1), Math.max(y1 - y0, 1));
          }
        }
        ctx.restore();
      },
    ];
    opts.hooks.setCursor = [
      (u) => {
        const i = u.cursor.idx;
        if (i == null || u.cursor.top == null || u.cursor.top < 0) {
          caption.textContent = "";
          return;
        }
        const y = u.posToVal(u.cursor.top, "y");
        const r = y < 1 ? 0 : Math.floor(Math.log2(y)) + 1;
        const v = (state.rows[i] || [])[r - state.low] || 0;
        const range = r === 0 ? "0" : format(lower(r), info.unit) + " to " + format(upper(r), info.unit);
        caption.textContent = new Date(state.t[i] * 1000).toISOString() + "  " + range + ": " +
          sig(v) + " observations/s";
      },
    ];
    const plot = new uPlot(opts, [t, t.map(() => null)], el);
    el.appendChild(caption);
    const made = { plot, points: state.points };
    made.update = (t, data) => {
      load(t, data);
      plot.setData([t, t.map(() => null)], zoom == null);
      made.points = state.points;
      return true;
    };
    return made;
  }

  function draw(info, data, source, el, width) {
    const chart = data && data.charts ? data.charts[info.id] : null;
    const t = data ? xValues(data.t || [], source) : [];
    if (!chart) {
      el.appendChild(document.createTextNode("not in this recording"));
      return null;
    }
    const made = info.style === "heatmap"
      ? heatmapPlot(el, info, t, chart, width)
      : linesPlot(el, info, t, chart, width);
    const note = document.createElement("div");
    note.className = "empty";
    el.appendChild(note);
    made.note = note;
    made.id = info.id;
    made.source = source;
    made.info = info;
    made.el = el;
    made.width = width;
    noted(made);
    return made;
  }

  function noted(made) {
    made.note.textContent = made.points === 0 ? "no data in this time range" : "";
  }

  function publish(data) {
    status.charts = charts.map((c) => ({ id: c.id, source: c.source, points: c.points }));
    if (data) {
      lastStep = Math.max(...data.sources.map((d) => d.step || 1));
      status.step = lastStep;
    }
  }

  async function show(id) {
    const mine = ++generation;
    const section = dashboard.sections.find((s) => s.id === id) || dashboard.sections[0];
    status.ready = false;
    status.section = section.id;
    for (const b of document.querySelectorAll("nav button")) {
      b.classList.toggle("active", b.dataset.id === section.id);
    }
    $("status").textContent = "Loading…";
    let data;
    try {
      // zoomed into a recording: the new section for that range
      const range = zoom && dashboard.mode === "file" && !report ? zoom : null;
      data = await loadSection(section.id, range);
      refined = range != null;
    } catch (e) {
      $("status").textContent = "Error: " + e.message;
      console.error(e);
      return;
    }
    if (mine !== generation) return;
    render(section, data);
    $("status").textContent = "";
    status.ready = true;
  }

  function render(section, data) {
    for (const p of plots) p.destroy();
    plots = [];
    charts = [];
    const main = $("charts");
    main.textContent = "";
    const sources = dashboard.mode === "compare" ? [0, 1] : [0];
    const columns = dashboard.mode === "compare" ? 2 : 1;
    // single: two cards a row on a wide screen; compare: A and B in a row
    const perRow = columns === 2 || main.clientWidth < 1200 ? 1 : 2;
    main.classList.toggle("grid", perRow === 2);
    const width = Math.max(
      320,
      Math.floor((main.clientWidth - 48) / (columns * perRow)) - 40
    );
    for (const info of section.charts) {
      const card = document.createElement("section");
      card.className = "card";
      const h = document.createElement("h2");
      h.textContent = info.title + unitTitle(info.unit);
      card.appendChild(h);
      const row = document.createElement("div");
      row.className = "row";
      for (const s of sources) {
        const cell = document.createElement("div");
        cell.className = "cell";
        if (columns === 2) {
          const label = document.createElement("div");
          label.className = "source";
          label.textContent = (s === 0 ? "A: " : "B: ") + dashboard.sources[s].name;
          cell.appendChild(label);
        }
        const inner = document.createElement("div");
        inner.className = "chart";
        inner.dataset.chart = info.id;
        cell.appendChild(inner);
        const made = draw(info, data.sources[s], s, inner, width);
        if (made) {
          made.plot.over.addEventListener("dblclick", () => { zoom = null; refine(); });
          plots.push(made.plot);
          charts.push(made);
        }
        row.appendChild(cell);
      }
      card.appendChild(row);
      main.appendChild(card);
    }
    if (zoom) for (const p of plots) p.setScale("x", zoom);
    publish(data);
  }

  // new data for the section shown: charts updated in place (keeping
  // zoom and hover); a chart whose lines changed is drawn anew in its place
  function update(section, data) {
    const known = new Set(charts.map((c) => c.id + "/" + c.source));
    const wanted = section.charts.length * data.sources.length;
    if (charts.length === 0 || known.size !== charts.length || wanted < charts.length) {
      render(section, data);
      return;
    }
    const missing = charts.some((c) => {
      const d = data.sources[c.source];
      return !(d && d.charts && d.charts[c.id]);
    });
    if (missing) {
      render(section, data);
      return;
    }
    charts = charts.map((c) => {
      const d = data.sources[c.source];
      const chart = d.charts[c.id];
      if (c.update(xValues(d.t || [], c.source), chart)) {
        noted(c);
        return c;
      }
      const at = plots.indexOf(c.plot);
      c.plot.destroy();
      c.el.textContent = "";
      const made = draw(c.info, d, c.source, c.el, c.width);
      made.plot.over.addEventListener("dblclick", () => { zoom = null; refine(); });
      plots[at] = made.plot;
      return made;
    });
    if (zoom) for (const p of plots) p.setScale("x", zoom);
    publish(data);
  }

  async function refresh() {
    const id = status.section;
    if (!id) return;
    try {
      const data = await loadSection(id);
      if (status.section === id && status.ready) {
        update(dashboard.sections.find((s) => s.id === id), data);
        $("status").textContent = data.error ? "agent not answering: " + data.error : "live";
        status.agentError = data.error || null;
      }
    } catch (e) {
      $("status").textContent = "Error: " + e.message;
    }
  }

  async function start() {
    try {
      dashboard = await loadDashboard();
    } catch (e) {
      $("status").textContent = "Error: " + e.message;
      console.error(e);
      return;
    }
    $("title").textContent = dashboard.title + (report ? " (report)" : "");
    const nav = $("sections");
    for (const s of dashboard.sections) {
      const b = document.createElement("button");
      b.textContent = s.title;
      b.dataset.id = s.id;
      b.addEventListener("click", () => {
        location.hash = s.id;
      });
      nav.appendChild(b);
    }
    window.addEventListener("hashchange", () => show(location.hash.slice(1)));
    await show(location.hash.slice(1));
    if (dashboard.mode === "live" && !report) {
      timer = setInterval(refresh, Math.max(dashboard.interval_ms || 1000, 250));
    }
  }

  start();
})();
