// The live balance: server-sent events from /events (fed by the ledger's WatchBalance). No framework,
// no CDN. The browser's EventSource reconnects by itself and sends Last-Event-ID, so the portal
// resumes the ledger's stream after the last sequence shown.
(function () {
  "use strict";
  if (!window.EventSource || !document.querySelector("output.available")) { return; }
  var source = new EventSource("/events");
  function set(selector, unit, value) {
    document.querySelectorAll(selector + '[data-unit="' + unit + '"]').forEach(function (el) {
      if (el.textContent !== value) {
        el.textContent = value;
        el.classList.remove("flash"); void el.offsetWidth; el.classList.add("flash");
      }
    });
  }
  source.addEventListener("balance", function (event) {
    var change = JSON.parse(event.data);
    change.balances.forEach(function (b) {
      set("output.available", b.unit, b.available);
      set("output.held", b.unit, b.held);
      document.querySelectorAll('.live-status[data-unit="' + b.unit + '"]').forEach(function (el) {
        el.textContent = "Live: updated " + new Date().toLocaleTimeString() + " (change #" + change.sequence + ").";
      });
    });
    document.body.setAttribute("data-live-sequence", String(change.sequence));
  });
}());
