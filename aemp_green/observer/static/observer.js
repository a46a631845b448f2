// aemp_green observer: draws the network view from api/network (no libraries, no build step).
// Every name shown comes from the network: it is only ever set as text, never as HTML.
"use strict";
(function () {
  var token = new URLSearchParams(window.location.search).get("token") || "";
  var SVGNS = "http://www.w3.org/2000/svg";
  var POLL_MS = 2000;
  var SIZE = 640;
  var statusEl = document.getElementById("status");
  var summaryEl = document.getElementById("summary");
  var svg = document.getElementById("graph");
  var details = document.getElementById("details");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function sel(tag, attrs, text) {
    var e = document.createElementNS(SVGNS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function statusClass(s) { return String(s || "").replace(/ /g, ""); }

  function rate(x) {
    x = Number(x) || 0;
    return (x >= 100 ? x.toFixed(0) : x.toFixed(1)) + "/s";
  }

  function bytes(n) {
    n = Number(n) || 0;
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
    if (n < 1073741824) return (n / 1048576).toFixed(1) + " MiB";
    return (n / 1073741824).toFixed(1) + " GiB";
  }

  function duration(s) {
    s = Math.max(0, Number(s) || 0);
    if (s < 120) return s.toFixed(0) + " s";
    if (s < 7200) return (s / 60).toFixed(0) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }

  function short(name, n) {
    name = String(name);
    return name.length > n ? name.slice(0, n - 1) + "\u2026" : name;
  }

  // nodes on a circle, the observing node first (at the top)
  function layout(ids) {
    var pos = {}, n = ids.length, c = SIZE / 2, r = n > 1 ? SIZE / 2 - 80 : 0;
    ids.forEach(function (id, i) {
      var a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
      pos[id] = { x: c + r * Math.cos(a), y: c + r * Math.sin(a) };
    });
    return pos;
  }

  function drawGraph(view) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var ids = view.nodes.map(function (n) { return n.id; });
    var pos = layout(ids);
    var edges = sel("g", { "class": "links" });
    view.links.forEach(function (l) {
      var a = pos[l[0]], b = pos[l[1]];
      if (!a || !b) return;
      var line = sel("line", { "class": "link", x1: a.x, y1: a.y, x2: b.x, y2: b.y,
                               "data-a": l[0], "data-b": l[1] });
      line.appendChild(sel("title", {}, l[0] + " \u2194 " + l[1]));
      edges.appendChild(line);
    });
    svg.appendChild(edges);
    view.nodes.forEach(function (n) {
      var p = pos[n.id];
      var cls = "node " + statusClass(n.status) + (n.id === view.observer ? " self" : "");
      var g = sel("g", { "class": cls, "data-node": n.id,
                         transform: "translate(" + p.x.toFixed(1) + "," + p.y.toFixed(1) + ")" });
      g.appendChild(sel("title", {}, n.id + " (" + n.status + ")"));
      g.appendChild(sel("circle", { r: 26 }));
      g.appendChild(sel("text", { "class": "name", y: 44 }, short(n.id, 28)));
      var info = n.node;
      var line2 = info ? info.ports + (info.ports === 1 ? " port" : " ports") : n.status;
      g.appendChild(sel("text", { "class": "inner", y: 5 }, info ? String(info.ports) : "?"));
      g.appendChild(sel("text", { "class": "count", y: 60 }, line2));
      svg.appendChild(g);
    });
  }

  function table(headers, rows, numeric) {
    var t = el("table"), tr = el("tr");
    headers.forEach(function (h, i) { tr.appendChild(el("th", numeric[i] ? "num" : "", h)); });
    t.appendChild(tr);
    rows.forEach(function (r) {
      var row = el("tr");
      r.forEach(function (v, i) { row.appendChild(el("td", numeric[i] ? "num" : (i === 0 ? "id" : ""), v)); });
      t.appendChild(row);
    });
    return t;
  }

  function card(n, view) {
    var c = el("article", "card " + statusClass(n.status));
    c.setAttribute("data-node", n.id);
    var h = el("h2", "", n.id);
    h.appendChild(el("span", "badge", n.id === view.observer ? "this node" : n.status));
    c.appendChild(h);
    if (n.error) c.appendChild(el("p", "error", n.error));
    var info = n.node;
    if (!info) return c;
    var dl = el("dl"), rates = info.rates || {};
    [["uptime", duration(info.uptime)],
     ["ports", info.ports + " (" + info.greenlet_ports + " greenlet)"],
     ["messages in", info.msgs_in + "  (" + rate(rates.msgs_in) + ")"],
     ["messages out", info.msgs_out + "  (" + rate(rates.msgs_out) + ")"],
     ["local messages", info.msgs_local + "  (" + rate(rates.msgs_local) + ")"],
     ["bytes in / out", bytes(info.bytes_in) + " / " + bytes(info.bytes_out)],
     ["global node", info.is_global ? "yes" : "no"],
     ["pid / version", info.pid + " / " + info.version]].forEach(function (kv) {
      dl.appendChild(el("dt", "", kv[0]));
      dl.appendChild(el("dd", "", kv[1]));
    });
    c.appendChild(dl);
    var ports = n.ports || [];
    if (ports.length) {
      c.appendChild(el("h3", "", "busiest ports"));
      c.appendChild(table(["port", "kind", "mailbox", "handled", "age"],
        ports.map(function (p) { return [p.id, p.kind, p.mailbox, p.handled, duration(p.age)]; }),
        [false, false, true, true, true]));
    }
    var fams = Object.keys(info.db || {}).sort();
    if (fams.length) {
      c.appendChild(el("h3", "", "database families"));
      c.appendChild(table(["family", "keys"],
        fams.map(function (f) { return [f, info.db[f]]; }), [false, true]));
    }
    var links = n.links || [];
    if (links.length) {
      c.appendChild(el("h3", "", "links"));
      c.appendChild(table(["peer", "dir", "framing", "msgs in", "msgs out", "rtt"],
        links.map(function (l) {
          return [l.peer, l.direction, l.framing, l.msgs_in, l.msgs_out,
                  l.rtt === null || l.rtt === undefined ? "-" : (l.rtt * 1000).toFixed(1) + " ms"];
        }), [false, false, false, true, true, true]));
    }
    return c;
  }

  function render(view) {
    drawGraph(view);
    while (details.firstChild) details.removeChild(details.firstChild);
    view.nodes.forEach(function (n) { details.appendChild(card(n, view)); });
    var ok = view.nodes.filter(function (n) { return n.status === "ok"; }).length;
    summaryEl.textContent = view.nodes.length + " nodes (" + ok + " answered), " +
      view.links.length + " links, seen from " + view.observer;
    statusEl.textContent = "updated " + new Date(view.time * 1000).toLocaleTimeString();
    statusEl.className = "ok";
    document.body.setAttribute("data-rendered", String(Number(document.body.getAttribute("data-rendered") || 0) + 1));
  }

  function refresh() {
    fetch("api/network?token=" + encodeURIComponent(token), { cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(render)
      .catch(function (e) {
        statusEl.textContent = "error: " + e.message;
        statusEl.className = "bad";
      })
      .then(function () { setTimeout(refresh, POLL_MS); });
  }

  refresh();
})();
