// The Tap page, live: the form's filters go to /api/tap, whose JSON lines
// become rows at the top of the table as they come (the newest 200 kept).
// Without JavaScript the form collects three seconds of requests instead.
(function () {
  "use strict";
  var form = document.getElementById("tap-form");
  var rows = document.getElementById("tap-rows");
  var status = document.getElementById("tap-status");
  var start = document.getElementById("tap-start");
  var stop = document.getElementById("tap-stop");
  if (!form || !rows || !window.fetch || !window.AbortController || !window.TextDecoder) { return; }
  var running = null;
  var KEEP = 200;

  function cell(row, text, className) {
    var td = document.createElement("td");
    if (className) { td.className = className; }
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function show(event) {
    var tr = document.createElement("tr");
    tr.dataset.path = event.path || "";
    tr.dataset.direction = event.direction || "";
    cell(tr, (event.workload || "?") + "/" + (event.instance || "?"));
    cell(tr, event.direction === "inbound" ? "served" : "called");
    cell(tr, event.source || "–");
    cell(tr, (event.endpoint || "–") + (event.endpoint_instance ? " (" + event.endpoint_instance + ")" : ""));
    cell(tr, event.method || "");
    var path = document.createElement("code");
    path.textContent = event.path || "";
    cell(tr, "").appendChild(path);
    cell(tr, String(event.status) + (event.grpc_status === null || event.grpc_status === undefined ? "" : " · gRPC " + event.grpc_status));
    cell(tr, (event.latency_ms || 0).toFixed(2) + " ms", "num");
    cell(tr, String(event.attempts), "num");
    cell(tr, event.tls ? "🔒 mTLS " + (event.identity || "") : "plaintext");
    rows.insertBefore(tr, rows.firstChild);
    while (rows.children.length > KEEP) { rows.removeChild(rows.lastChild); }
  }

  function note(text) {
    var p = document.createElement("p");
    p.className = "warning";
    p.textContent = text;
    status.parentNode.insertBefore(p, status.nextSibling);
  }

  function finish(text) {
    running = null;
    start.hidden = false;
    stop.hidden = true;
    status.textContent = text;
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    if (running) { running.abort(); }
    var query = new URLSearchParams();
    new FormData(form).forEach(function (value, key) {
      if (key !== "collect" && value !== "") { query.set(key, value); }
    });
    var controller = new AbortController();
    running = controller;
    start.hidden = true;
    stop.hidden = false;
    var seen = 0;
    status.textContent = "tapping…";
    fetch("/api/tap?" + query.toString(), { signal: controller.signal })
      .then(function (response) {
        if (!response.ok) {
          return response.text().then(function (t) { throw new Error(t.trim() || response.status); });
        }
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var buffered = "";
        status.textContent = "tapping: waiting for requests";
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) { finish("The tap ended (" + seen + " requests)."); return; }
            buffered += decoder.decode(chunk.value, { stream: true });
            var lines = buffered.split("\n");
            buffered = lines.pop();
            lines.forEach(function (line) {
              if (!line) { return; }
              var event = JSON.parse(line);
              var proxy = (event.workload || "?") + "/" + (event.instance || "?");
              if (event.type === "request") { seen += 1; show(event); }
              else if (event.type === "dropped") { note(proxy + ": " + event.count + " requests not shown (the tap's rate)"); }
              else if (event.type === "error") { note(proxy + ": " + event.error); }
            });
            status.textContent = "tapping live: " + seen + " requests";
            return pump();
          });
        }
        return pump();
      })
      .catch(function (err) {
        if (err.name === "AbortError") { finish("Stopped (" + seen + " requests)."); }
        else { finish("The tap failed: " + err.message); }
      });
  });
  stop.addEventListener("click", function () { if (running) { running.abort(); } });
})();
