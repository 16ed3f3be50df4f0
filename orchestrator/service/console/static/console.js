// The console's live updates: one EventSource on /events (the types the page lists in
// <main data-events>, the thread in data-events-thread), and on each event the fragments it
// touches are fetched again with htmx: the elements marked data-live-thread="<its thread>",
// or, when no element shows that thread yet, those marked data-live-new (a list that gains a
// row). A fragment already being fetched is fetched once more when it ends, never twice at
// once. Other scripts listen to the "orch:event" DOM event (detail: the event).
(function () {
  "use strict";
  var main = document.querySelector("main[data-events]");
  if (!main || !window.EventSource || !window.htmx) return;
  var types = main.dataset.events.split(",").filter(Boolean);
  var url = "/events?types=" + encodeURIComponent(types.join(","));
  if (main.dataset.eventsThread) url += "&thread=" + encodeURIComponent(main.dataset.eventsThread);
  // Resume after the newest event the page was rendered with: what happens between the render
  // and the stream opening is replayed, and so is what a dropped stream misses before its
  // first event (the browser's Last-Event-ID header only exists once an event has arrived).
  var rendered = document.querySelectorAll("[data-testid=timeline] li[data-event-id]");
  var last = main.dataset.lastEventId ||
    (rendered.length ? rendered[rendered.length - 1].dataset.eventId : "");
  if (last) url += "&last_event_id=" + encodeURIComponent(last);

  var busy = {};
  function refresh(src) {
    if (busy[src]) { busy[src] = "again"; return; }
    var el = document.querySelector('[data-live-src="' + CSS.escape(src) + '"]');
    if (!el) return;
    busy[src] = true;
    htmx.ajax("GET", src, { target: el, swap: "outerHTML" }).finally(function () {
      var again = busy[src] === "again";
      delete busy[src];
      if (again) refresh(src);
    });
  }

  function onEvent(message) {
    var event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    var thread = event && event.data && event.data.thread_id;
    var shown = thread ? document.querySelectorAll(
      '[data-live-thread="' + CSS.escape(thread) + '"][data-live-src]') : [];
    var targets = shown.length ? shown : document.querySelectorAll("[data-live-new][data-live-src]");
    targets.forEach(function (el) { refresh(el.dataset.liveSrc); });
    document.dispatchEvent(new CustomEvent("orch:event", { detail: event }));
  }

  var source = new EventSource(url);
  types.forEach(function (type) { source.addEventListener(type, onEvent); });
  source.addEventListener("reload", function () { window.location.reload(); });
  window.orchEvents = source;
})();
