// The canary page: each rollout's health samples drawn with uPlot (error rate and p95 latency
// over time), kept live from the events stream. A `canary.observed` event's samples go straight
// into the chart; any event about a rollout shown re-fetches its fragment (stages, traffic, the
// gate's buttons), and an event of a rollout not shown yet adds it. Points are kept per rollout
// by their time, so a sample seen in an event and again in the re-fetched fragment (or again
// after a reconnect) is drawn once.
(function () {
  "use strict";

  const points = new Map(); // thread id -> Map(sample time -> point)
  const charts = new Map(); // thread id -> uPlot
  const pending = new Map(); // thread id -> timer of a coming re-fetch

  function merge(thread, samples, percent) {
    let mine = points.get(thread);
    if (!mine) {
      mine = new Map();
      points.set(thread, mine);
    }
    for (const s of samples || []) {
      const at = typeof s.at === "number" ? s.at : Date.parse(s.at) / 1000;
      if (!Number.isFinite(at)) continue;
      const latency = s.latency_ms !== undefined ? s.latency_ms
        : (s.p95_ms !== null && s.p95_ms !== undefined ? s.p95_ms : s.response_ms);
      mine.set(at, {
        at: at,
        percent: s.percent !== undefined ? s.percent : percent,
        error: s.error_rate === null || s.error_rate === undefined ? null : s.error_rate * 100,
        latency: latency === undefined ? null : latency,
      });
    }
  }

  function columns(thread) {
    const sorted = [...(points.get(thread) || new Map()).values()].sort((a, b) => a.at - b.at);
    return [sorted.map((p) => p.at), sorted.map((p) => p.error), sorted.map((p) => p.latency)];
  }

  function options(el) {
    return {
      width: Math.max(320, el.clientWidth || 640),
      height: 200,
      scales: { x: { time: true }, err: { auto: true }, ms: { auto: true } },
      series: [
        {},
        { label: "error rate %", scale: "err", stroke: "#c0392b", width: 2, spanGaps: true,
          points: { show: true } },
        { label: "p95 latency ms", scale: "ms", stroke: "#2c6fbb", width: 2, spanGaps: true,
          points: { show: true } },
      ],
      axes: [
        {},
        { scale: "err", label: "error %" },
        { scale: "ms", side: 1, label: "ms", grid: { show: false } },
      ],
    };
  }

  // el.dataset.points: how many samples the chart shows (for the browser tests)
  function draw(el) {
    const thread = el.dataset.threadId;
    const data = columns(thread);
    const old = charts.get(thread);
    if (old && el.contains(old.root)) {
      old.setData(data);
    } else {
      if (old) old.destroy();
      charts.set(thread, new uPlot(options(el), data, el));
    }
    el.dataset.points = String(data[0].length);
  }

  function redraw(thread) {
    const el = document.querySelector(
      '[data-testid=health-chart][data-thread-id="' + CSS.escape(thread) + '"]');
    if (el) draw(el);
  }

  // a rollout's fragment arrived (the page, a re-fetch, a new rollout): its samples, its chart
  htmx.onLoad(function (root) {
    const found = root.matches && root.matches("[data-testid=health-chart]") ? [root]
      : [...root.querySelectorAll("[data-testid=health-chart]")];
    for (const el of found) {
      const script = el.parentElement.querySelector("script[data-testid=samples]");
      merge(el.dataset.threadId, script ? JSON.parse(script.textContent) : []);
      draw(el);
    }
  });

  function rolloutOf(thread) {
    return document.querySelector(
      '[data-testid=rollout][data-thread-id="' + CSS.escape(thread) + '"]');
  }

  function refresh(thread, isCanary) {
    if (pending.has(thread)) return;
    pending.set(thread, setTimeout(function () {
      pending.delete(thread);
      const article = rolloutOf(thread);
      if (article) {
        htmx.trigger(article, "refresh");
      } else if (isCanary) {
        const list = document.querySelector("[data-testid=rollouts]");
        const empty = list.querySelector("[data-testid=empty]");
        if (empty) empty.remove();
        htmx.ajax("GET", "/console/canary/" + encodeURIComponent(thread),
          { target: list, swap: "afterbegin" });
      }
    }, 150));
  }

  function listen() {
    const list = document.querySelector("[data-testid=rollouts]");
    if (!list) return;
    const url = list.dataset.events;
    const source = new EventSource(url);
    const types = new URL(url, location.href).searchParams.get("types").split(",");
    for (const type of types) {
      source.addEventListener(type, function (message) {
        const event = JSON.parse(message.data);
        const data = event.data || {};
        const thread = data.thread_id;
        if (!thread) return;
        if (type === "canary.observed" && data.samples) {
          merge(thread, data.samples, data.percent);
          redraw(thread);
        }
        if (type.startsWith("canary.") || rolloutOf(thread)) {
          refresh(thread, type.startsWith("canary."));
        }
      });
    }
    // the events we missed are no longer kept: the page is the only safe state
    source.addEventListener("reload", function () { location.reload(); });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", listen);
  } else {
    listen();
  }
})();
