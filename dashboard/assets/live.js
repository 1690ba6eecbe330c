// Live updates: after each scrape (a server-sent "scrape" event) fetch this
// page's content again and swap it in. Without JavaScript the pages are
// plain server-rendered HTML; reload to refresh.
(function () {
  "use strict";
  var status = document.getElementById("live-status");
  var main = document.getElementById("live");
  if (!window.EventSource || !main || main.hasAttribute("data-static")) { return; }
  var busy = false;
  function refresh() {
    if (busy) { return; }
    busy = true;
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    fetch(url.toString(), { headers: { "Accept": "text/html" } })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (html) {
        var keep = main.querySelector(".stockweb-rows");
        main.innerHTML = html;
        // Keep a StockWeb load on screen across updates.
        var slot = main.querySelector(".stockweb");
        if (keep && slot && !slot.querySelector(".stockweb-rows")) { slot.appendChild(keep); }
        status.textContent = "live · updated " + new Date().toLocaleTimeString();
      })
      .catch(function (e) { status.textContent = "update failed (" + e.message + "), retrying"; })
      .finally(function () { busy = false; });
  }
  var events = new EventSource("/events");
  events.addEventListener("scrape", refresh);
  events.onopen = function () { status.textContent = "live"; };
  events.onerror = function () { status.textContent = "reconnecting…"; };
})();
