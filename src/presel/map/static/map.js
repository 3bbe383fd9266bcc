/* presel map: a canvas scatter of every pool image (no library, no network). Data: window.PRESEL_MAP_DATA
   (assets/data.js). Points are drawn into one ImageData per frame; a pick buffer of the same size maps each
   pixel to the point drawn there (hover and click are one lookup). */
(function () {
  "use strict";
  var t0 = performance.now();
  var D = window.PRESEL_MAP_DATA;
  var root = document.documentElement;
  function $(id) { return document.getElementById(id); }
  function b64(s, Type) {
    var bin = atob(s), n = bin.length, u8 = new Uint8Array(n);
    for (var i = 0; i < n; i++) u8[i] = bin.charCodeAt(i);
    return new Type(u8.buffer);
  }
  if (!D) { root.setAttribute("data-error", "no data"); return; }
  var N = D.n;
  var X = b64(D.x, Float32Array), Y = b64(D.y, Float32Array);
  var TASK = b64(D.task, Uint16Array), CL = b64(D.cluster, Int32Array), RANK = b64(D.rank, Int32Array);
  var CEN = b64(D.central, Float32Array), ST = b64(D.status, Uint8Array), GR = b64(D.group, Int32Array);
  var CQ = b64(D.cq, Int32Array), FORCED = b64(D.forced, Uint8Array);
  var IDS = D.ids.split("\n"), IMGS = D.images.split("\n"), ALSO = D.also.split("\n"), KEPT = D.kept.split("\n");
  var THUMBS = D.thumbs ? D.thumbs.split("\n") : null;
  var STATUS = D.status_names, TASKS = D.tasks, WEIGHTS = D.weights;
  var STATUS_COLORS = ["#b8c0cc", "#e8590c", "#1971c2", "#9c36b5"];
  var CAT = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d",
    "#31a354", "#756bb1"];
  var RAMP = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"];

  // ---- colours (ABGR words for ImageData on little-endian machines)
  function word(hex) {
    var r = parseInt(hex.substr(1, 2), 16), g = parseInt(hex.substr(3, 2), 16), b = parseInt(hex.substr(5, 2), 16);
    return ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;
  }
  var CATW = CAT.map(word), RAMPW = RAMP.map(word), STW = STATUS_COLORS.map(word), GREY = word("#d5d9e0");
  var colour = new Uint32Array(N);
  var legend = [];
  function colourBy(mode) {
    var i;
    legend = [];
    if (mode === "status") {
      for (i = 0; i < N; i++) colour[i] = STW[ST[i]];
      legend = STATUS.map(function (s, k) { return [STATUS_COLORS[k], s]; });
    } else if (mode === "task") {
      for (i = 0; i < N; i++) colour[i] = CATW[TASK[i] % CATW.length];
      legend = TASKS.map(function (t, k) { return [CAT[k % CAT.length], t]; });
    } else if (mode === "cluster") {
      for (i = 0; i < N; i++) colour[i] = CL[i] < 0 ? GREY : CATW[(CL[i] * 7 + TASK[i] * 3) % CATW.length];
      legend = [["", "clusters of each task in 20 cycling colours; grey: none"]];
    } else if (mode === "group") {
      for (i = 0; i < N; i++) colour[i] = GR[i] < 0 ? GREY : CATW[GR[i] % CATW.length];
      legend = [["", "near-duplicate groups in 20 cycling colours; grey: no group"]];
    } else {
      var v = new Float32Array(N), lo = Infinity, hi = -Infinity;
      for (i = 0; i < N; i++) {
        v[i] = mode === "weight" ? (WEIGHTS[TASK[i]] === null ? NaN : WEIGHTS[TASK[i]]) : CEN[i];
        if (v[i] === v[i]) { if (v[i] < lo) lo = v[i]; if (v[i] > hi) hi = v[i]; }
      }
      var span = hi > lo ? hi - lo : 1;
      for (i = 0; i < N; i++) colour[i] = v[i] === v[i] ? RAMPW[Math.min(9, Math.floor((v[i] - lo) / span * 10))] : GREY;
      legend = [["ramp", (lo === Infinity ? "no values" : lo.toPrecision(3) + " … " + hi.toPrecision(3)) + "; grey: none"]];
    }
    var el = $("legend");
    el.textContent = "";
    legend.forEach(function (l) {
      var d = document.createElement("div");
      if (l[0] === "ramp") {
        var r = document.createElement("i");
        r.className = "ramp";
        r.style.background = "linear-gradient(90deg," + RAMP.join(",") + ")";
        el.appendChild(r);
      } else if (l[0]) {
        var sw = document.createElement("i");
        sw.style.background = l[0];
        d.appendChild(sw);
      }
      d.appendChild(document.createTextNode(l[1]));
      el.appendChild(d);
    });
  }

  // ---- filter
  var visible = new Uint8Array(N);
  var hits = null; // search matches: Uint8Array or null
  function applyFilter() {
    var task = $("f-task").value, cl = $("f-cluster").value.trim(), okSt = [], q = $("search").value.trim().toLowerCase();
    var gr = $("f-group").value.trim(), gi = gr === "" ? null : +gr, cmin = $("f-central").value.trim(), cm = cmin === "" ? null : +cmin;
    var wmin = $("f-weight").value.trim(), wm = wmin === "" ? null : +wmin;
    for (var s = 0; s < STATUS.length; s++) okSt.push($("f-st-" + s).checked);
    var ti = task === "" ? -1 : +task, ci = cl === "" ? null : +cl;
    hits = null;
    var nh = 0, first = -1;
    if (q) {
      hits = new Uint8Array(N);
      for (var j = 0; j < N; j++) {
        if (IDS[j].toLowerCase().indexOf(q) >= 0 || IMGS[j].toLowerCase().indexOf(q) >= 0) {
          hits[j] = 1; nh++; if (first < 0 || IDS[j].toLowerCase() === q) first = j;
        }
      }
    }
    var nv = 0;
    for (var i = 0; i < N; i++) {
      var ok = okSt[ST[i]] && (ti < 0 || TASK[i] === ti) && (ci === null || CL[i] === ci) && (!hits || hits[i]) &&
        (gi === null || GR[i] === gi) && (cm === null || CEN[i] >= cm) && (wm === null || WEIGHTS[TASK[i]] >= wm);
      visible[i] = ok ? 1 : 0;
      nv += ok ? 1 : 0;
    }
    $("n-visible").textContent = nv.toLocaleString();
    root.setAttribute("data-visible", String(nv));
    $("search-note").textContent = q ? nh.toLocaleString() + " match" + (nh === 1 ? "" : "es") : "";
    if (q && first >= 0 && nh <= 50) show(first);
    draw();
  }

  // ---- view
  var canvas = $("plot"), ctx = canvas.getContext("2d"), ov = $("overlay"), octx = ov.getContext("2d");
  var W = 0, H = 0, img = null, buf32 = null, pick = null;
  var minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
  for (var k = 0; k < N; k++) {
    if (X[k] < minX) minX = X[k]; if (X[k] > maxX) maxX = X[k];
    if (Y[k] < minY) minY = Y[k]; if (Y[k] > maxY) maxY = Y[k];
  }
  if (!(maxX > minX)) { minX -= 1; maxX += 1; }
  if (!(maxY > minY)) { minY -= 1; maxY += 1; }
  var view = { cx: (minX + maxX) / 2, cy: (minY + maxY) / 2, s: 1 };
  function fit() {
    view.cx = (minX + maxX) / 2; view.cy = (minY + maxY) / 2;
    view.s = 0.92 * Math.min(W / (maxX - minX), H / (maxY - minY));
  }
  function resize() {
    W = canvas.clientWidth || 800; H = canvas.clientHeight || 600;
    canvas.width = ov.width = W; canvas.height = ov.height = H;
    img = ctx.createImageData(W, H);
    buf32 = new Uint32Array(img.data.buffer);
    pick = new Int32Array(W * H);
  }
  // draw order: not picked, dropped, then reference and selected on top
  var order = new Uint32Array(N);
  (function () {
    var o = 0, rankSt = [0, 3, 2, 1];
    for (var p = 0; p < 4; p++) for (var i = 0; i < N; i++) if (ST[i] === rankSt[p]) order[o++] = i;
  })();
  var drawn = 0, queued = false, hover = -1, current = -1, chosen = null, nChosen = 0;
  var BG = word("#ffffff"), CHOSEN = word("#111111"), HIT = word("#f03e3e");
  function draw() {
    if (queued) return;
    queued = true;
    requestAnimationFrame(function () { queued = false; render(); });
  }
  function render() {
    buf32.fill(BG);
    pick.fill(-1);
    var r = N > 200000 ? 1 : N > 20000 ? 2 : N > 2000 ? 3 : 5;
    if (view.s > 4 * 0.92 * Math.min(W / (maxX - minX), H / (maxY - minY))) r += 1;
    var hx = W / 2 - view.cx * view.s, hy = H / 2 + view.cy * view.s, s = view.s, n = 0;
    for (var o = 0; o < N; o++) {
      var i = order[o];
      if (!visible[i]) continue;
      var px = (X[i] * s + hx) | 0, py = (hy - Y[i] * s) | 0;
      if (px < 0 || py < 0 || px >= W || py >= H) continue;
      n++;
      var c = chosen && chosen[i] ? CHOSEN : hits && hits[i] ? HIT : colour[i];
      var x1 = Math.min(W, px + r), y1 = Math.min(H, py + r);
      for (var yy = py; yy < y1; yy++) {
        var row = yy * W;
        for (var xx = px; xx < x1; xx++) { buf32[row + xx] = c; pick[row + xx] = i; }
      }
    }
    ctx.putImageData(img, 0, 0);
    drawn = n;
    $("n-drawn").textContent = n.toLocaleString();
    root.setAttribute("data-drawn", String(n));
    overlay();
  }
  function toData(px, py) { return [(px - W / 2) / view.s + view.cx, view.cy - (py - H / 2) / view.s]; }
  function nearest(px, py) {
    var best = -1, bd = 1e9;
    for (var dy = -4; dy <= 4; dy++) for (var dx = -4; dx <= 4; dx++) {
      var x = px + dx, y = py + dy;
      if (x < 0 || y < 0 || x >= W || y >= H) continue;
      var i = pick[y * W + x];
      if (i >= 0 && dx * dx + dy * dy < bd) { bd = dx * dx + dy * dy; best = i; }
    }
    return best;
  }

  // ---- selection tools
  var mode = "pan", drag = null, path = [];
  function setMode(m) {
    mode = m;
    ["pan", "box", "lasso"].forEach(function (x) { $("m-" + x).className = x === m ? "on" : ""; });
  }
  function overlay() {
    octx.clearRect(0, 0, W, H);
    if (current >= 0) {
      var px = X[current] * view.s + W / 2 - view.cx * view.s, py = H / 2 + view.cy * view.s - Y[current] * view.s;
      octx.strokeStyle = "#111"; octx.lineWidth = 2; octx.beginPath(); octx.arc(px, py, 7, 0, 6.3); octx.stroke();
    }
    if (path.length > 1) {
      octx.strokeStyle = "#111"; octx.setLineDash([4, 3]); octx.lineWidth = 1; octx.beginPath();
      octx.moveTo(path[0][0], path[0][1]);
      for (var i = 1; i < path.length; i++) octx.lineTo(path[i][0], path[i][1]);
      if (mode === "lasso") octx.closePath();
      octx.stroke(); octx.setLineDash([]);
    }
  }
  function inPoly(x, y, poly) {
    var inside = false;
    for (var i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      var xi = poly[i][0], yi = poly[i][1], xj = poly[j][0], yj = poly[j][1];
      if ((yi > y) !== (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) inside = !inside;
    }
    return inside;
  }
  function choose(poly) { // poly: screen points; box = 4 corners
    var dp = poly.map(function (p) { return toData(p[0], p[1]); });
    var x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    dp.forEach(function (p) { x0 = Math.min(x0, p[0]); x1 = Math.max(x1, p[0]); y0 = Math.min(y0, p[1]); y1 = Math.max(y1, p[1]); });
    chosen = new Uint8Array(N);
    nChosen = 0;
    for (var i = 0; i < N; i++) {
      if (!visible[i] || X[i] < x0 || X[i] > x1 || Y[i] < y0 || Y[i] > y1) continue;
      if (dp.length > 4 && !inPoly(X[i], Y[i], dp)) continue;
      chosen[i] = 1; nChosen++;
    }
    $("n-chosen").textContent = nChosen.toLocaleString();
    $("export-btn").disabled = nChosen === 0;
    root.setAttribute("data-chosen", String(nChosen));
    $("export").textContent = chosenIds().join("\n");
    path = [];
    draw();
  }
  function chosenIds() {
    var out = [];
    if (chosen) for (var i = 0; i < N; i++) if (chosen[i]) out.push(IDS[i]);
    return out;
  }
  function exportIds() {
    var text = chosenIds().join("\n") + "\n";
    var a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
    a.download = "presel-map-selection.txt";
    document.body.appendChild(a); a.click(); a.remove();
  }
  canvas.addEventListener("mousedown", function (e) {
    drag = { x: e.offsetX, y: e.offsetY, cx: view.cx, cy: view.cy, moved: false };
    if (mode !== "pan") path = [[e.offsetX, e.offsetY]];
  });
  window.addEventListener("mouseup", function (e) {
    if (!drag) return;
    var d = drag; drag = null;
    if (mode === "pan" && !d.moved) { var i = nearest(e.offsetX, e.offsetY); if (i >= 0) show(i); return; }
    if (mode === "box" && path.length > 1) {
      var a = path[0], b = path[path.length - 1];
      choose([[a[0], a[1]], [b[0], a[1]], [b[0], b[1]], [a[0], b[1]]]);
    } else if (mode === "lasso" && path.length > 2) choose(path);
    else { path = []; overlay(); }
  });
  canvas.addEventListener("mousemove", function (e) {
    if (drag) {
      var dx = e.offsetX - drag.x, dy = e.offsetY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 2) drag.moved = true;
      if (mode === "pan") { view.cx = drag.cx - dx / view.s; view.cy = drag.cy + dy / view.s; draw(); }
      else if (mode === "box") { path = [path[0], [e.offsetX, e.offsetY]]; overlay(); }
      else { path.push([e.offsetX, e.offsetY]); overlay(); }
      return;
    }
    var i = nearest(e.offsetX, e.offsetY), tip = $("tip");
    hover = i;
    if (i < 0) { tip.style.display = "none"; return; }
    tip.textContent = IDS[i] + " · " + TASKS[TASK[i]] + " · " + STATUS[ST[i]];
    tip.style.left = (e.offsetX + 12) + "px"; tip.style.top = (e.offsetY + 12) + "px"; tip.style.display = "block";
  });
  canvas.addEventListener("mouseleave", function () { $("tip").style.display = "none"; });
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    var f = Math.exp(-e.deltaY * 0.0015), p = toData(e.offsetX, e.offsetY);
    view.s *= f;
    view.cx = p[0] - (e.offsetX - W / 2) / view.s; view.cy = p[1] + (e.offsetY - H / 2) / view.s;
    draw();
  }, { passive: false });

  // ---- details
  function thumbEl(i, big) {
    var t = THUMBS && THUMBS[i];
    var el;
    if (t) { el = document.createElement("img"); el.src = "assets/thumbs/" + t.substr(0, 2) + "/" + t + ".jpg"; el.alt = IDS[i]; el.loading = "lazy"; }
    else { el = document.createElement("div"); el.className = "ph"; el.title = "no thumbnail"; }
    if (big) el.className = (el.className + " big").trim();
    return el;
  }
  function why(i) {
    var t = TASKS[TASK[i]], c = CL[i], r = RANK[i], q = CQ[i];
    if (ST[i] === 2) return "Reference image: part of the budget (it was annotated to score the tasks); clustering does not choose it.";
    if (ST[i] === 3) return "Near-copy left out before selection: group " + GR[i] + "; the copy kept is " + (KEPT[i] || "another image") + ".";
    if (ST[i] === 1 && FORCED[i]) return "Picked because the include list (presel select --include) named it; it is rank " + r +
      " in cluster " + c + " of task " + t + ", which received " + q + " pick" + (q === 1 ? "" : "s") + ".";
    if (ST[i] === 1) return "Picked: rank " + r + " in cluster " + c + " of task " + t + "; this cluster received " + q +
      " pick" + (q === 1 ? "" : "s") + ", its best-ranked images first.";
    if (r <= 0) return "Not picked: the method does not rank images inside clusters (random order).";
    if (q === 0) return "Not picked: cluster " + c + " of task " + t + " received no pick (the task's quota went to larger clusters); rank " + r + ".";
    if (r <= q) return "Not picked: rank " + r + " is within the cluster's " + q + " picks, but the image was taken by another task.";
    return "Not picked: rank " + r + " in cluster " + c + " of task " + t + "; the cluster received " + q + " pick" + (q === 1 ? "" : "s") + " (ranks 1–" + q + ").";
  }
  function show(i) {
    current = i;
    var box = $("info");
    box.style.display = "block";
    var im = $("info-img");
    im.textContent = "";
    im.appendChild(thumbEl(i, true));
    var rows = [["id", IDS[i]], ["path", IMGS[i]], ["task", TASKS[TASK[i]] + (ALSO[i] ? " (also: " + ALSO[i] + ")" : "")],
      ["cluster", CL[i] < 0 ? "none" : String(CL[i])], ["rank in cluster", RANK[i] > 0 ? String(RANK[i]) : "none"],
      ["centrality", CEN[i] === CEN[i] ? CEN[i].toPrecision(4) : "none"], ["task weight", WEIGHTS[TASK[i]] === null ? "none" : String(WEIGHTS[TASK[i]])],
      ["near-dup group", GR[i] < 0 ? "none" : String(GR[i])], ["status", STATUS[ST[i]]]];
    var tb = $("info-table");
    tb.textContent = "";
    rows.forEach(function (r) {
      var tr = document.createElement("tr"), a = document.createElement("td"), b = document.createElement("td");
      a.textContent = r[0]; b.textContent = r[1]; tr.appendChild(a); tr.appendChild(b); tb.appendChild(tr);
    });
    $("why").textContent = why(i);
    $("cluster-btn").disabled = CL[i] < 0;
    overlay();
  }
  function clusterView() {
    if (current < 0 || CL[current] < 0) return;
    var t = TASK[current], c = CL[current], mem = [];
    for (var i = 0; i < N; i++) if (TASK[i] === t && CL[i] === c && ST[i] !== 3) mem.push(i);
    // pick order: reference images, then by rank (best first), unranked last
    mem.sort(function (a, b) {
      var ka = ST[a] === 2 ? -1 : RANK[a] > 0 ? RANK[a] : 1e9, kb = ST[b] === 2 ? -1 : RANK[b] > 0 ? RANK[b] : 1e9;
      return ka - kb || (IDS[a] < IDS[b] ? -1 : 1);
    });
    var panel = $("cluster");
    panel.style.display = "block";
    $("cluster-title").textContent = "Task " + TASKS[t] + ", cluster " + c + ": " + mem.length + " images in pick order (" +
      CQ[current] + " picked; orange: picked, blue: reference)" + (mem.length > 400 ? "; first 400 shown" : "");
    var g = $("cluster-grid");
    g.textContent = "";
    mem.slice(0, 400).forEach(function (i) {
      var d = document.createElement("div");
      d.className = "thumb" + (ST[i] === 1 ? " s" : ST[i] === 2 ? " r" : "");
      d.title = IDS[i];
      d.appendChild(thumbEl(i, false));
      var s = document.createElement("span");
      s.textContent = ST[i] === 2 ? "ref" : RANK[i] > 0 ? "#" + RANK[i] : "–";
      d.appendChild(s);
      d.addEventListener("click", function () { show(i); });
      g.appendChild(d);
    });
    root.setAttribute("data-cluster-shown", String(mem.length));
  }

  // ---- controls
  var ft = $("f-task");
  TASKS.forEach(function (t, k) { var o = document.createElement("option"); o.value = String(k); o.textContent = t; ft.appendChild(o); });
  var fs = $("f-status");
  var cnt = [0, 0, 0, 0];
  for (var q = 0; q < N; q++) cnt[ST[q]]++;
  STATUS.forEach(function (s, k) {
    var l = document.createElement("label"), c = document.createElement("input");
    c.type = "checkbox"; c.checked = true; c.id = "f-st-" + k; c.addEventListener("change", applyFilter);
    l.appendChild(c); l.appendChild(document.createTextNode(" " + s + " (" + cnt[k].toLocaleString() + ")"));
    fs.appendChild(l);
  });
  $("n-points").textContent = N.toLocaleString();
  root.setAttribute("data-points", String(N));
  root.setAttribute("data-selected", String(cnt[1]));
  root.setAttribute("data-reference", String(cnt[2]));
  root.setAttribute("data-dropped", String(cnt[3]));
  $("color").addEventListener("change", function () { colourBy(this.value); draw(); });
  ft.addEventListener("change", applyFilter);
  ["f-cluster", "f-group", "f-central", "f-weight"].forEach(function (id) { $(id).addEventListener("change", applyFilter); });
  $("search").addEventListener("change", applyFilter);
  ["pan", "box", "lasso"].forEach(function (m) { $("m-" + m).addEventListener("click", function () { setMode(m); }); });
  $("export-btn").addEventListener("click", exportIds);
  $("clear-btn").addEventListener("click", function () { chosen = null; nChosen = 0; $("n-chosen").textContent = "0"; $("export-btn").disabled = true; $("export").textContent = ""; root.setAttribute("data-chosen", "0"); draw(); });
  $("fit-btn").addEventListener("click", function () { fit(); draw(); });
  $("cluster-btn").addEventListener("click", clusterView);
  $("cluster-close").addEventListener("click", function () { $("cluster").style.display = "none"; });
  window.addEventListener("resize", function () { resize(); fit(); draw(); });

  resize();
  fit();
  colourBy("status");
  applyFilter();
  render(); // the first frame synchronously: the page is interactive from here
  root.setAttribute("data-interactive-ms", String(Math.round(performance.now())));
  root.setAttribute("data-render-ms", String(Math.round(performance.now() - t0)));
  var tf = performance.now();
  render(); // one more full frame, timed: what each pan, zoom or filter costs
  root.setAttribute("data-frame-ms", String(Math.round(performance.now() - tf)));
  // URL hash hooks (for scripted checks and links): #box=x0,y0,x1,y1 (fractions of the plot) selects a box,
  // #lasso=x0,y0,x1,y1,... a polygon, #filter=ID=VALUE;... sets filters, #show=ID opens an image and its cluster view
  var h = decodeURIComponent(location.hash.slice(1));
  var m = /^box=([\d.]+),([\d.]+),([\d.]+),([\d.]+)$/.exec(h);
  if (m) { setMode("box"); choose([[m[1] * W, m[2] * H], [m[3] * W, m[2] * H], [m[3] * W, m[4] * H], [m[1] * W, m[4] * H]]); render(); }
  m = /^lasso=([\d.,]+)$/.exec(h);
  if (m) {
    var v = m[1].split(",").map(Number), poly = [];
    for (var q2 = 0; q2 + 1 < v.length; q2 += 2) poly.push([v[q2] * W, v[q2 + 1] * H]);
    setMode("lasso"); choose(poly); render();
  }
  m = /^filter=(.+)$/.exec(h); // #filter=f-task=0;f-st-0=off: set filter inputs by id
  if (m) {
    m[1].split(";").forEach(function (kv) {
      var e = kv.indexOf("="), el = $(kv.slice(0, e)), val = kv.slice(e + 1);
      if (!el) return;
      if (el.type === "checkbox") el.checked = val !== "off"; else el.value = val;
    });
    applyFilter(); render();
  }
  m = /^show=(.+)$/.exec(h);
  if (m) { var at = IDS.indexOf(m[1]); if (at >= 0) { show(at); clusterView(); } }
  root.setAttribute("data-loaded", "yes");
})();
