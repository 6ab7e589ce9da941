// backprop playground: the page. Plain JavaScript, no library, no network access beyond its own server.
//
// The server (Python, backprop's engine) owns the configuration and the training; this page sends what the
// learner does as small JSON messages over one WebSocket and draws the frames it receives: SVG for the
// network, canvas for the heat map, thumbnails and charts. Names of the things tests look at:
//   neuron-L-i  neuron i of layer L (0: the inputs, last: the outputs)
//   edge-L-i-j  the weight from neuron i of layer L-1 to neuron j of layer L, i.e. W^L[j, i]
// window.playground holds the current state (iteration, losses, weights and gradients as arrays).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const NEG = [245, 147, 34], POS = [8, 119, 189], WHITE = [255, 255, 255];
  const PALETTE = [[245, 147, 34], [8, 119, 189], [46, 160, 67], [214, 39, 40], [148, 103, 189]];
  const LAYER_COLORS = ["#0877bd", "#f59322", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"];
  const FEATURE_LABELS = { x1: "x1", x2: "x2", x1sq: "x1\u00b2", x2sq: "x2\u00b2", x1x2: "x1\u00b7x2",
    sinx1: "sin x1", sinx2: "sin x2" };
  const MAX_HISTORY = 1000;

  let ws = null;
  let model = null;        // the last "model" message: structure, points, configuration
  let frame = null;        // the last frame
  let history = null;      // loss and gradient-norm curves
  let selected = null;     // the edge being explained: [L, i, j]
  let explainedAt = null;  // the (iteration, phase) the explanation is of
  let maxUpload = 1000000;
  let messageTimer = null;

  const pg = window.playground = {
    connected: false, session: null, frames: 0, config: null, query: "", sizes: [],
    iteration: 0, epoch: 0, samplesSeen: 0, phase: "idle", running: false, stopped: null,
    trainLoss: null, testLoss: null, accuracy: null, batchLoss: null, lr: null,
    weights: null, biases: null, grads: null, biasGrads: null, updates: null, biasUpdates: null,
    batchIndices: null, neurons: null, gradNorms: null, confusion: null,
    explanation: null, errors: [], notices: [], exports: [], history: null,
    send: (msg) => send(msg),
  };

  // ------------------------------------------------------------------------------------------ helpers
  function fmt(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "\u2013";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(digits === undefined ? 2 : digits - 1);
    return Number(v.toPrecision(digits || 4)).toString();
  }
  function mix(c1, c2, t) { return c1.map((c, k) => Math.round(c + (c2[k] - c) * t)); }
  function signed(v) { // v in [-1, 1] -> orange (negative) / white / blue (positive)
    return v < 0 ? mix(WHITE, NEG, Math.min(1, -v)) : mix(WHITE, POS, Math.min(1, v));
  }
  function rgb(c, alpha) { return alpha === undefined ? `rgb(${c[0]},${c[1]},${c[2]})` : `rgba(${c[0]},${c[1]},${c[2]},${alpha})`; }
  function bytes(b64) {
    const s = atob(b64);
    const out = new Uint8Array(s.length);
    for (let k = 0; k < s.length; k++) out[k] = s.charCodeAt(k);
    return out;
  }
  function el(tag, attrs, parent, ns) {
    const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      // NOTE: styles through the CSSOM: the page's Content-Security-Policy refuses style attributes
      if (k === "text") e.textContent = v; else if (k === "style") e.style.cssText = v; else e.setAttribute(k, v);
    }
    if (parent) parent.appendChild(e);
    return e;
  }
  function classColor(label) {
    if (!model) return [0, 0, 0];
    if (model.task === "regression") return signed(Math.max(-1, Math.min(1, label)));
    if (model.classes === 2) return label === 1 ? POS : NEG;
    return PALETTE[label % PALETTE.length];
  }
  function showMessage(text, kind) {
    const m = $("message");
    m.textContent = text;
    m.className = "message " + kind;
    clearTimeout(messageTimer);
    messageTimer = setTimeout(() => { m.textContent = ""; m.className = "message"; }, kind === "error" ? 12000 : 5000);
  }

  // ------------------------------------------------------------------------------------------ connection
  function connect() {
    ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
    ws.onopen = () => {
      pg.connected = true;
      $("connection").textContent = "connected";
      $("connection").className = "connection ok";
      send({ type: "hello", query: location.search });
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      handle(msg);
    };
    ws.onclose = () => {
      pg.connected = false;
      $("connection").textContent = "disconnected: reload the page once the server runs";
      $("connection").className = "connection lost";
    };
  }
  function send(msg) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
  }
  function handle(msg) {
    switch (msg.type) {
      case "hello":
        pg.session = msg.session;
        maxUpload = msg.max_upload;
        $("speed").replaceChildren(...msg.speeds.map((s) => el("option", { value: s, text: s === "max" ? "max" : s + " step" + (s === "1" ? "" : "s") + "/frame" })));
        break;
      case "model": onModel(msg); break;
      case "frame": onFrame(msg); break;
      case "explain": onExplain(msg); break;
      case "export": onExport(msg); break;
      case "error":
        pg.errors.push(msg);
        showMessage(msg.message, "error");
        if (model) syncControls(model.config);
        break;
      case "notice":
        pg.notices.push(msg);
        showMessage(msg.message, "notice");
        break;
    }
  }

  // ------------------------------------------------------------------------------------------ controls
  function syncControls(config) {
    for (const input of document.querySelectorAll("[data-field]")) {
      const v = config[input.dataset.field];
      input.value = v === null || v === undefined ? "" : v;
    }
    $("classes-row").style.display = config.dataset === "blobs" ? "" : "none";
    $("momentum-row").style.display = config.optimizer === "sgd" || config.optimizer === "rmsprop" ? "" : "none";
    $("decay-row").style.display = config.schedule === "constant" ? "none" : "";
    const box = $("features");
    box.replaceChildren();
    for (const [name, label] of Object.entries(FEATURE_LABELS)) {
      const l = el("label", {}, box);
      const c = el("input", { type: "checkbox", "data-testid": "feature-" + name }, l);
      c.checked = config.features.includes(name);
      c.addEventListener("change", () => {
        const chosen = Object.keys(FEATURE_LABELS).filter((n) => n === name ? c.checked : model.config.features.includes(n));
        send({ type: "set", field: "features", value: chosen });
      });
      l.appendChild(document.createTextNode(" " + label));
    }
  }
  function fieldValue(input) {
    const raw = input.value.trim();
    if (input.type !== "number") return raw;
    if (raw === "") return input.dataset.field.startsWith("stop_") ? null : raw;
    const v = Number(raw);
    return Number.isFinite(v) ? v : raw;
  }
  function bindControls() {
    for (const input of document.querySelectorAll("[data-field]")) {
      input.addEventListener("change", () => send({ type: "set", field: input.dataset.field, value: fieldValue(input) }));
    }
    $("play").onclick = () => send({ type: "play" });
    $("pause").onclick = () => send({ type: "pause" });
    $("reset").onclick = () => send({ type: "reset" });
    $("step").onclick = () => send({ type: "step" });
    $("substep").onclick = () => send({ type: "substep" });
    $("speed").onchange = () => send({ type: "speed", value: $("speed").value });
    $("regenerate").onclick = () => send({ type: "set", field: "seed", value: Math.floor(Math.random() * 100000) });
    $("clear-points").onclick = () => send({ type: "clear_points" });
    $("edge-mode").onchange = () => { if (frame) drawEdges(); };
    $("show-test").onchange = () => { if (frame) drawHeat(); };
    $("sample").onchange = () => send({ type: "sample", index: Math.max(0, Math.floor(Number($("sample").value) || 0)) });
    $("add-layer").onclick = () => {
      const h = model.config.hidden;
      send({ type: "set", field: "hidden", value: [...h, h.length ? h[h.length - 1] : 4] });
    };
    $("remove-layer").onclick = () => send({ type: "set", field: "hidden", value: model.config.hidden.slice(0, -1) });
    $("copy-link").onclick = () => {
      const url = location.href;
      (navigator.clipboard ? navigator.clipboard.writeText(url) : Promise.reject())
        .then(() => showMessage("link copied: it reproduces this run (same data, weights and batches)", "notice"),
              () => showMessage("the link: " + url, "notice"));
    };
    $("export-model").onclick = () => send({ type: "export", what: "model" });
    $("export-script").onclick = () => send({ type: "export", what: "script" });
    $("upload").onchange = async () => {
      const file = $("upload").files[0];
      if (!file) return;
      if (file.size > maxUpload) {
        showMessage(`${file.name} is ${file.size} bytes; at most ${maxUpload} are accepted`, "error");
        pg.errors.push({ message: "file too large", field: "upload" });
      } else {
        send({ type: "upload", name: file.name, text: await file.text() });
      }
      $("upload").value = "";
    };
    $("boundary").addEventListener("click", (ev) => {
      const label = $("add-class").value;
      if (!model || label === "off") return;
      const r = $("boundary").getBoundingClientRect();
      const [x0, x1, y0, y1] = model.domain;
      const px = (ev.clientX - r.left) / r.width, py = (ev.clientY - r.top) / r.height;
      const clamp = (v) => Math.max(-6, Math.min(6, Math.round(v * 1000) / 1000));
      send({ type: "add_point", x1: clamp(x0 + px * (x1 - x0)), x2: clamp(y1 - py * (y1 - y0)), label: Number(label) });
    });
  }

  // ------------------------------------------------------------------------------------------ the model
  function onModel(msg) {
    model = msg;
    frame = null;
    selected = null;
    explainedAt = null;
    history = { it: [], train: [], test: [], grads: [] };
    Object.assign(pg, { config: msg.config, query: msg.query, sizes: msg.sizes, history, explanation: null });
    history_replace("?" + msg.query);
    syncControls(msg.config);
    const add = $("add-class");
    const opts = [["off", "nothing"]];
    if (msg.task === "regression") for (const v of [-1, -0.5, 0, 0.5, 1]) opts.push([String(v), "target " + v]);
    else msg.labels.forEach((l, k) => opts.push([String(k), "class " + l]));
    const before = add.value;
    add.replaceChildren(...opts.map(([v, t]) => el("option", { value: v, text: t })));
    if (opts.some(([v]) => v === before)) add.value = before;
    $("legend").replaceChildren();
    if (msg.task === "classification") {
      msg.labels.forEach((l, k) => {
        el("span", { class: "sw", style: `background:${rgb(classColor(k))}` }, $("legend"));
        $("legend").appendChild(document.createTextNode("class " + l));
      });
    } else {
      $("legend").textContent = "target: orange \u22121 \u2026 blue +1";
    }
    $("explain").replaceChildren(el("p", { class: "hint", text: "Click an edge to see the chain rule of its gradient on the current mini-batch." }));
    buildNetwork();
    drawCharts();
  }
  function history_replace(search) {
    if (location.search !== search) window.history.replaceState(null, "", search);
  }

  const layout = { x: [], y: [], size: 38 };
  function buildNetwork() {
    const net = $("network");
    const svg = $("edges");
    for (const n of net.querySelectorAll(".neuron")) n.remove();
    svg.replaceChildren();
    const sizes = model.sizes;
    const W = net.clientWidth || 560, H = net.clientHeight || 430;
    const left = 78, right = 46;
    const spacing = Math.min(52, (H - 40) / Math.max(...sizes));
    layout.x = sizes.map((_, c) => left + c * (W - left - right) / Math.max(1, sizes.length - 1));
    layout.y = sizes.map((n) => Array.from({ length: n }, (_, i) => H / 2 + (i - (n - 1) / 2) * spacing));
    // edges first (under the neurons)
    for (let L = 1; L < sizes.length; L++) {
      for (let j = 0; j < sizes[L]; j++) {
        for (let i = 0; i < sizes[L - 1]; i++) {
          const x0 = layout.x[L - 1] + layout.size / 2, y0 = layout.y[L - 1][i];
          const x1 = layout.x[L] - layout.size / 2, y1 = layout.y[L][j];
          const xm = (x0 + x1) / 2;
          const d = `M${x0},${y0} C${xm},${y0} ${xm},${y1} ${x1},${y1}`;
          const g = el("g", { "data-testid": `edge-${L}-${i}-${j}`, "data-layer": L, "data-from": i, "data-to": j }, svg, SVG);
          el("path", { class: "edge", d }, g, SVG);
          el("path", { class: "hit", d }, g, SVG);
          g.addEventListener("click", () => explainEdge(L, i, j));
          g.addEventListener("mousemove", (ev) => tooltip(ev, edgeTip(L, i, j)));
          g.addEventListener("mouseleave", hideTip);
        }
      }
    }
    const names = sizes.map((n, L) => Array.from({ length: n }, (_, i) => {
      if (L === 0) return model.feature_names[i];
      if (L === sizes.length - 1) {
        if (model.task === "regression") return "\u0177";
        if (model.config.loss === "bce") return "p(" + model.labels[1] + ")";
        return "class " + model.labels[i];
      }
      return "";
    }));
    sizes.forEach((n, L) => {
      for (let i = 0; i < n; i++) {
        const d = el("div", { class: "neuron", "data-testid": `neuron-${L}-${i}`,
          style: `left:${layout.x[L]}px;top:${layout.y[L][i]}px` }, net);
        const c = el("canvas", { width: 20, height: 20 }, d);
        c.dataset.role = "thumb";
        if (names[L][i]) el("span", { class: "nname", text: names[L][i] }, d).style.cssText =
          L === sizes.length - 1 ? "left:100%;right:auto;margin-left:4px" : "";
        el("span", { class: "nval" }, d);
        d.addEventListener("mousemove", (ev) => tooltip(ev, neuronTip(L, i)));
        d.addEventListener("mouseleave", hideTip);
      }
    });
    // per-layer controls above the hidden layers
    const lc = $("layer-controls");
    lc.replaceChildren();
    sizes.forEach((n, L) => {
      const box = el("div", { class: "lc", style: `left:${layout.x[L]}px` }, lc);
      if (L === 0) { el("span", { text: `${n} input${n > 1 ? "s" : ""}` }, box); return; }
      if (L === sizes.length - 1) {
        el("span", { text: `output: ${model.activations[L]}` }, box);
        el("span", { text: `${n} unit${n > 1 ? "s" : ""}` }, box);
        return;
      }
      const row = el("div", {}, box);
      const minus = el("button", { "data-testid": `neurons-minus-${L}`, text: "\u2212" }, row);
      el("span", { text: ` ${n} ` }, row);
      const plus = el("button", { "data-testid": `neurons-plus-${L}`, text: "+" }, row);
      const change = (delta) => {
        const h = [...model.config.hidden];
        h[L - 1] = Math.max(1, Math.min(8, h[L - 1] + delta));
        send({ type: "set", field: "hidden", value: h });
      };
      minus.onclick = () => change(-1);
      plus.onclick = () => change(+1);
      const sel = el("select", { "data-testid": `activation-${L}` }, box);
      for (const a of ["tanh", "relu", "sigmoid", "linear", "gelu"]) el("option", { value: a, text: a }, sel);
      sel.value = model.config.activations[L - 1];
      sel.onchange = () => {
        const acts = [...model.config.activations];
        acts[L - 1] = sel.value;
        send({ type: "set", field: "activations", value: acts });
      };
    });
  }

  // ------------------------------------------------------------------------------------------ frames
  function onFrame(f) {
    const previous = frame;
    frame = f;
    pg.frames += 1;
    Object.assign(pg, {
      iteration: f.iteration, epoch: f.epoch, samplesSeen: f.samples_seen, phase: f.phase, running: f.running,
      stopped: f.stopped, trainLoss: f.train_loss, testLoss: f.test_loss, accuracy: f.accuracy,
      batchLoss: f.batch_loss, lr: f.lr, weights: f.weights, biases: f.biases, grads: f.grads,
      biasGrads: f.bias_grads, updates: f.updates, biasUpdates: f.bias_updates, batchIndices: f.batch_indices,
      neurons: f.neurons, gradNorms: f.grad_norms, confusion: f.confusion,
    });
    $("iteration").textContent = f.iteration;
    $("epoch").textContent = f.epoch;
    $("samples-seen").textContent = f.samples_seen;
    const N = model.n_train, B = model.batch_size, per = model.iterations_per_epoch;
    const inEpoch = f.epoch_iteration;
    $("arith").textContent = `N = ${N} training samples, batch B = ${B}: ceil(${N}/${B}) = ${per} iteration${per > 1 ? "s" : ""} per epoch; ` +
      `iteration ${f.iteration} = ${f.epoch} epoch${f.epoch === 1 ? "" : "s"} + ${inEpoch} iteration${inEpoch === 1 ? "" : "s"}` +
      (N % B ? ` (the last batch of an epoch has ${N % B} sample${N % B === 1 ? "" : "s"})` : "");
    $("train-loss").textContent = fmt(f.train_loss);
    $("test-loss").textContent = fmt(f.test_loss);
    $("accuracy").textContent = f.accuracy === null ? "\u2013" : (f.accuracy * 100).toFixed(1) + "%";
    $("lr-now").textContent = fmt(f.lr);
    $("play").classList.toggle("active", f.running);
    const next = { idle: "forward", forward: "backward", backward: "update", update: "forward" }[f.phase];
    $("substep").innerHTML = next + " &#8594;";
    $("sample").max = f.neurons ? f.neurons.batch_size - 1 : 0;
    if (!previous || previous.iteration !== f.iteration || f.iteration === 0 && history.it.length === 0) pushHistory(f);
    drawEdges();
    drawNeurons();
    drawHeat();
    drawCharts();
    drawConfusion();
    drawPhase();
    if (selected && !f.running && f.phase !== "idle" && f.phase !== "forward") {
      const key = f.iteration + ":" + f.phase;
      if (explainedAt !== key) explainEdge(...selected);
    }
  }
  function pushHistory(f) {
    history.it.push(f.iteration);
    history.train.push(f.train_loss);
    history.test.push(f.test_loss);
    history.grads.push(f.grad_norms);
    if (history.it.length > MAX_HISTORY) {  // keep the page's memory flat: every other point
      for (const k of ["it", "train", "test", "grads"]) history[k] = history[k].filter((_, n) => n % 2 === 0);
      pg.history = history;
    }
  }
  function edgeMode() {
    const m = $("edge-mode").value;
    if (m !== "auto") return m;
    if (!frame || frame.running || frame.view === "play" || frame.phase === "idle" || frame.phase === "forward") return "weight";
    return frame.phase === "backward" ? "grad" : "update";
  }
  function edgeValues(mode) {
    if (mode === "grad") return frame.grads;
    if (mode === "update") return frame.updates;
    return frame.weights;
  }
  function bezierPoint(x0, y0, x1, y1, t) {
    const xm = (x0 + x1) / 2, s = 1 - t;
    return [s * s * s * x0 + 3 * s * s * t * xm + 3 * s * t * t * xm + t * t * t * x1,
      s * s * s * y0 + 3 * s * s * t * y0 + 3 * s * t * t * y1 + t * t * t * y1];
  }
  function drawEdges() {
    const mode = edgeMode();
    const values = edgeValues(mode) || frame.weights;
    const shown = edgeValues(mode) ? mode : "weight";
    let max = 1e-12;
    for (const W of values) for (const row of W) for (const v of row) if (v !== null) max = Math.max(max, Math.abs(v));
    const nEdges = model.sizes.slice(1).reduce((s, n, k) => s + n * model.sizes[k], 0);
    const labels = shown !== "weight" && !frame.running && frame.view === "step" && nEdges <= 48;
    const svg = $("edges");
    for (const t of svg.querySelectorAll("text")) t.remove();
    for (const g of svg.querySelectorAll("g")) {
      const L = +g.dataset.layer, i = +g.dataset.from, j = +g.dataset.to;
      const v = values[L - 1][j][i];
      const path = g.firstChild;
      const t = v === null ? 0 : Math.abs(v) / max;
      path.setAttribute("stroke", v === null ? "#999" : rgb(v < 0 ? NEG : POS));
      path.setAttribute("stroke-width", (0.6 + 5.4 * t).toFixed(2));
      path.setAttribute("stroke-opacity", (0.25 + 0.75 * t).toFixed(2));
      g.dataset.weight = frame.weights[L - 1][j][i];
      g.dataset.grad = frame.grads ? frame.grads[L - 1][j][i] : "";
      g.dataset.update = frame.updates ? frame.updates[L - 1][j][i] : "";
      g.classList.toggle("selected", !!selected && selected[0] === L && selected[1] === i && selected[2] === j);
      if (labels) {
        // NOTE: staggered by source, so the labels of the edges into one neuron do not pile up
        const at = 0.55 + 0.35 * (i + 0.5) / model.sizes[L - 1];
        const [x, y] = bezierPoint(layout.x[L - 1] + 19, layout.y[L - 1][i], layout.x[L] - 19, layout.y[L][j], at);
        el("text", { x: x.toFixed(1), y: (y - 2).toFixed(1), "text-anchor": "middle", text: fmt(v, 3) }, svg, SVG);
      }
    }
    svg.dataset.mode = shown;
  }
  function drawNeurons() {
    const thumbs = frame.thumbs, size = frame.thumb_size;
    const n = frame.neurons;
    const phase = frame.phase;
    for (let L = 0; L < model.sizes.length; L++) {
      for (let i = 0; i < model.sizes[L]; i++) {
        const d = document.querySelector(`[data-testid="neuron-${L}-${i}"]`);
        if (!d) continue;
        const canvas = d.querySelector("canvas");
        if (thumbs && thumbs[L] && thumbs[L][i]) {
          const ctx = canvas.getContext("2d");
          const img = ctx.createImageData(size, size);
          const b = bytes(thumbs[L][i].data);
          for (let k = 0; k < b.length; k++) {
            const c = signed(b[k] / 127.5 - 1);
            img.data.set([c[0], c[1], c[2], 255], 4 * k);
          }
          ctx.putImageData(img, 0, 0);
        }
        let text = "";
        const value = n ? n.values[L][i] : null;
        const delta = n && L > 0 && n.delta[L] ? n.delta[L][i] : null;
        d.dataset.value = value === null || value === undefined ? "" : value;
        d.dataset.delta = delta === null || delta === undefined ? "" : delta;
        d.dataset.bias = L > 0 ? frame.biases[L - 1][i] : "";
        if (n && !frame.running && frame.view === "step") {
          if (phase === "forward" || L === 0) text = (L === 0 ? "" : "a=") + fmt(value, 3);
          else if (phase === "backward") text = "\u03b4=" + fmt(delta, 3);
          else if (phase === "update" && frame.bias_updates) text = "\u0394b=" + fmt(frame.bias_updates[L - 1][i], 3);
        }
        d.querySelector(".nval").textContent = text;
      }
    }
  }
  function drawHeat() {
    const canvas = $("boundary");
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height;
    const h = frame.heat;
    if (h) {
      const n = h.size;
      const b = bytes(h.data);
      const off = document.createElement("canvas");
      off.width = n; off.height = n;
      const octx = off.getContext("2d");
      const img = octx.createImageData(n, n);
      for (let k = 0; k < n * n; k++) {
        let c;
        if (h.kind === "binary") c = signed(b[k] / 127.5 - 1);
        else if (h.kind === "regression") c = signed(b[k] / 127.5 - 1);
        else c = mix(WHITE, PALETTE[b[2 * k] % PALETTE.length], 0.15 + 0.75 * b[2 * k + 1] / 255);
        if (h.kind !== "multiclass") c = mix(WHITE, c, 0.85);
        img.data.set([c[0], c[1], c[2], 255], 4 * k);
      }
      octx.putImageData(img, 0, 0);
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(off, 0, 0, W, H);
    }
    const [x0, x1, y0, y1] = model.domain;
    const px = (x) => (x - x0) / (x1 - x0) * W, py = (y) => (y1 - y) / (y1 - y0) * H;
    const stepView = !frame.running && frame.view === "step";
    const inBatch = new Set(frame.batch_indices && stepView ? frame.batch_indices : []);
    const chosen = frame.neurons && stepView ? frame.neurons.index : -1;
    const draw = (pts, ys, stroke, test) => {
      for (let k = 0; k < pts.length; k++) {
        const batch = !test && inBatch.has(k);
        ctx.beginPath();
        ctx.arc(px(pts[k][0]), py(pts[k][1]), !test && k === chosen ? 6 : batch ? 4.2 : 3, 0, 2 * Math.PI);
        ctx.fillStyle = rgb(classColor(ys[k]));
        ctx.fill();
        ctx.lineWidth = batch ? 1.8 : 1;
        ctx.strokeStyle = batch ? "#000" : stroke;
        ctx.stroke();
      }
    };
    draw(model.train.x, model.train.y, "#fff", false);
    if ($("show-test").checked) draw(model.test.x, model.test.y, "#000", true);
  }
  function drawCharts() {
    lineChart($("loss-chart"), history.it, [[history.train, "#0877bd", "train"], [history.test, "#f59322", "test"]], false);
    const L = model.sizes.length - 1;
    const series = [];
    for (let l = 0; l < L; l++) {
      series.push([history.grads.map((g) => g ? g[l] : null), LAYER_COLORS[l % LAYER_COLORS.length], "layer " + (l + 1)]);
    }
    lineChart($("grad-chart"), history.it, series, true);
  }
  function lineChart(canvas, xs, series, log) {
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height, pad = 26;
    ctx.clearRect(0, 0, W, H);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    const tr = (v) => (v === null || v === undefined || !(v > 0 || !log)) ? null : log ? Math.log10(v) : v;
    let lo = Infinity, hi = -Infinity;
    for (const [ys] of series) for (const v of ys) { const t = tr(v); if (t !== null) { lo = Math.min(lo, t); hi = Math.max(hi, t); } }
    if (!isFinite(lo)) { ctx.fillStyle = "#999"; ctx.font = "11px sans-serif"; ctx.fillText("no data yet", pad, H / 2); return; }
    if (!log) lo = 0;
    if (hi - lo < 1e-12) hi = lo + 1;
    const xmax = Math.max(1, xs[xs.length - 1] || 1), xmin = xs[0] || 0;
    const X = (x) => pad + (x - xmin) / Math.max(1e-9, xmax - xmin) * (W - pad - 6);
    const Y = (t) => H - 14 - (t - lo) / (hi - lo) * (H - 22);
    ctx.strokeStyle = "#ccc"; ctx.beginPath(); ctx.moveTo(pad, 4); ctx.lineTo(pad, H - 14); ctx.lineTo(W - 4, H - 14); ctx.stroke();
    ctx.fillStyle = "#666"; ctx.font = "10px sans-serif";
    ctx.fillText(log ? "1e" + hi.toFixed(1) : fmt(hi, 3), 2, 12);
    ctx.fillText(log ? "1e" + lo.toFixed(1) : "0", 2, H - 16);
    ctx.fillText(String(xmax), W - 6 - ctx.measureText(String(xmax)).width, H - 3);
    let legendX = pad + 4;
    for (const [ys, color, name] of series) {
      ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
      let started = false;
      ys.forEach((v, k) => {
        const t = tr(v);
        if (t === null) { started = false; return; }
        if (started) ctx.lineTo(X(xs[k]), Y(t)); else { ctx.moveTo(X(xs[k]), Y(t)); started = true; }
      });
      ctx.stroke();
      ctx.fillStyle = color; ctx.fillText(name, legendX, H - 3);
      legendX += ctx.measureText(name).width + 10;
    }
  }
  function drawConfusion() {
    const t = $("confusion");
    t.replaceChildren();
    if (!frame.confusion) { el("tr", {}, t).appendChild(el("td", { text: "regression: no classes" })); return; }
    const head = el("tr", {}, t);
    el("th", { text: "true \\ predicted" }, head);
    model.labels.forEach((l) => el("th", { text: l }, head));
    frame.confusion.forEach((row, a) => {
      const tr = el("tr", {}, t);
      el("th", { text: model.labels[a] }, tr);
      const total = row.reduce((s, v) => s + v, 0) || 1;
      row.forEach((v, b) => {
        const c = mix(WHITE, a === b ? POS : NEG, 0.7 * v / total);
        el("td", { text: v, style: `background:${rgb(c)}` }, tr);
      });
    });
  }
  function drawPhase() {
    const p = $("phase");
    const n = frame.neurons;
    const f = frame;
    const who = n ? `sample ${n.sample} of the ${n.batch_size} (point ${n.index}: x1=${fmt(n.point[0], 3)}, x2=${fmt(n.point[1], 3)}, ` +
      `${model.task === "regression" ? "target " + fmt(n.target, 3) : "class " + model.labels[n.target]})` : "";
    let html;
    if (f.running) html = `<b>playing</b>: one mini-batch after another (forward, backward, update), ${f.speed === "max" ? "as fast as it goes" : f.speed + " per frame"}; edges: weights (width |w|, blue positive, orange negative).`;
    else if (f.view === "play" && f.phase !== "idle") html = `<b>paused</b> at iteration ${f.iteration}. Press <b>play</b> to go on, <b>step</b> to run one mini-batch and see its gradients and updates, or <b>forward &#8594;</b> to go through it one piece at a time.`;
    else if (f.phase === "idle") html = "Press <b>step</b> to train on one mini-batch, or <b>forward &#8594;</b> to go through it one piece at a time.";
    else if (f.phase === "forward") html = `<b>1. forward</b>: the mini-batch went through the network, z = W a + b and a = &sigma;(z) layer by layer; each neuron shows its activation a for ${who}. Batch loss L = ${fmt(f.batch_loss)}.`;
    else if (f.phase === "backward") html = `<b>2. backward</b>: the error went back through the layers by the chain rule; each neuron shows &delta; = dC/dz for ${who} (dL/dz = &delta;/${n.batch_size}), each edge dL/dw averaged over the batch. Click an edge for its chain rule.`;
    else html = `<b>3. update</b>: the optimizer (${model.optimizer}) moved every weight; each edge shows its change &Delta;w${model.optimizer === "sgd" && !model.config.momentum ? " = &minus;lr&middot;dL/dw" : ""} (hover for the optimizer's state), each neuron its bias change. lr = ${fmt(f.lr)}.`;
    if (f.stopped) html += ` <i>(stopped: ${f.stopped})</i>`;
    p.innerHTML = html;
  }

  // ------------------------------------------------------------------------------------------ tooltips
  function tooltip(ev, text) {
    if (!text) return;
    const t = $("tooltip");
    t.textContent = text;
    t.style.display = "block";
    t.style.left = ev.clientX + 14 + "px";
    t.style.top = ev.clientY + 10 + "px";
  }
  function hideTip() { $("tooltip").style.display = "none"; }
  function edgeTip(L, i, j) {
    if (!frame) return "";
    const lines = [`W^${L}[${j},${i}] = ${fmt(frame.weights[L - 1][j][i], 6)}  (neuron ${i} of layer ${L - 1} -> neuron ${j} of layer ${L})`];
    if (frame.grads) lines.push(`dL/dw = ${fmt(frame.grads[L - 1][j][i], 6)}`);
    if (frame.updates) lines.push(`last update = ${fmt(frame.updates[L - 1][j][i], 6)}   (-lr*dL/dw = ${fmt(frame.grads ? -frame.lr * frame.grads[L - 1][j][i] : null, 6)} at lr ${fmt(frame.lr)})`);
    const st = frame.optimizer_state && frame.optimizer_state[L - 1];
    if (st) for (const [k, v] of Object.entries(st)) lines.push(`${k} = ${fmt(v[j][i], 6)}`);
    lines.push("click: explain its gradient");
    return lines.join("\n");
  }
  function neuronTip(L, i) {
    if (!frame) return "";
    const n = frame.neurons;
    const name = L === 0 ? model.feature_names[i] : L === model.sizes.length - 1 ? "output " + i : `hidden layer ${L}, neuron ${i}`;
    const lines = [name + (L > 0 ? ` (${model.activations[L]})` : "")];
    if (L > 0) lines.push(`bias = ${fmt(frame.biases[L - 1][i], 6)}`);
    if (n) {
      lines.push(`a = ${fmt(n.values[L][i], 6)}  (sample ${n.sample} of the batch)`);
      if (L > 0) lines.push(`z = ${fmt(n.z[L][i], 6)}`);
      if (L > 0 && n.delta[L]) lines.push(`delta = dC/dz = ${fmt(n.delta[L][i], 6)}`);
    }
    if (L > 0 && frame.bias_grads) lines.push(`dL/db = ${fmt(frame.bias_grads[L - 1][i], 6)}`);
    if (L > 0 && frame.bias_updates) lines.push(`last bias update = ${fmt(frame.bias_updates[L - 1][i], 6)}`);
    lines.push("the picture: its output over the input plane");
    return lines.join("\n");
  }

  // ------------------------------------------------------------------------------------------ explain
  function explainEdge(L, i, j) {
    selected = [L, i, j];
    if (frame) { explainedAt = frame.iteration + ":" + frame.phase; drawEdges(); }
    send({ type: "explain", layer: L, from: i, to: j });
  }
  function onExplain(e) {
    pg.explanation = e;
    const box = $("explain");
    box.replaceChildren();
    const L = e.layer;
    el("div", { class: "formula", text: `W^${L}[${e.to},${e.from}] = ${fmt(e.weight, 6)}: from neuron ${e.from} of layer ${L - 1} to neuron ${e.to} of layer ${L}, on the mini-batch of iteration ${e.iteration + (e.update === null ? 1 : 0)} (${e.samples} samples)` }, box);
    el("div", { class: "formula", text: e.formula + "   (BP4)" }, box);
    el("div", { class: "formula", text: e.delta_rule }, box);
    const table = el("table", {}, box);
    const out = L === model.sizes.length - 1;
    const cols = [["sample", (r) => r.sample], [`a^${L - 1}[${e.from}]`, (r) => fmt(r.a_prev, 5)]];
    if (out) {
      cols.push([`a^${L}[${e.to}]`, (r) => fmt(r.output, 5)], ["y", (r) => fmt(r.target, 5)]);
      if (r0(e, "sigma_prime")) cols.push(["\u03c3'(z)", (r) => fmt(r.sigma_prime, 5)]);
    } else {
      cols.push([`(W^T \u03b4^${L + 1})[${e.to}]`, (r) => fmt(r.back, 5)],
        [model.config.dropout > 0 ? "\u03c3'(z)\u00b7mask" : "\u03c3'(z)", (r) => fmt(r.sigma_prime, 5)]);
    }
    cols.push([`\u03b4^${L}[${e.to}]`, (r) => fmt(r.delta, 5)], ["\u03b4\u00b7a", (r) => fmt(r.product, 5)]);
    const head = el("tr", {}, table);
    for (const [name] of cols) el("th", { text: name }, head);
    for (const r of e.rows) {
      const tr = el("tr", {}, table);
      for (const [, f] of cols) el("td", { text: f(r) }, tr);
    }
    if (e.samples > e.rows.length) el("div", { class: "hint", text: `\u2026 and ${e.samples - e.rows.length} more samples` }, box);
    const diff = (a, b) => Math.abs(a - b);
    const ok = (d) => d <= 1e-6 + 1e-5 * Math.abs(e.hand) ? "ok" : "bad";
    const lines = [
      [`chain rule by hand: dL/dw = mean of \u03b4\u00b7a = ${fmt(e.hand, 8)}`, null],
      [`the engine (loss.backward()): ${fmt(e.engine, 8)}   |difference| = ${fmt(diff(e.hand, e.engine), 2)}`, ok(diff(e.hand, e.engine))],
      [`finite difference (L(w+\u03b5) \u2212 L(w\u2212\u03b5)) / 2\u03b5, \u03b5 = ${e.eps}: ${fmt(e.numeric, 8)}   |difference| = ${fmt(diff(e.hand, e.numeric), 2)}`, ok(diff(e.hand, e.numeric))],
    ];
    if (e.l2 > 0) lines.push([`the optimizer adds L2: weight_decay\u00b7w = ${e.l2}\u00b7${fmt(e.weight, 5)} = ${fmt(e.l2 * e.weight, 5)}`, null]);
    if (e.update !== null) lines.push([`its update: \u0394w = ${fmt(e.update, 8)} (${e.optimizer}; plain SGD would be \u2212lr\u00b7dL/dw = ${fmt(-e.lr * e.engine, 8)})`, null]);
    for (const [text, cls] of lines) {
      const p = el("div", { text }, box);
      if (cls) el("span", { class: cls, text: cls === "ok" ? "  \u2713 agree" : "  \u2717 disagree" }, p);
    }
  }
  function r0(e, key) { return e.rows.length && e.rows[0][key] !== undefined; }

  // ------------------------------------------------------------------------------------------ exports
  function onExport(msg) {
    pg.exports.push({ what: msg.what, name: msg.name, size: (msg.text || msg.base64).length });
    const blob = msg.base64 ? new Blob([bytes(msg.base64)], { type: msg.mime }) : new Blob([msg.text], { type: msg.mime });
    const a = el("a", { href: URL.createObjectURL(blob), download: msg.name });
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
    showMessage(`${msg.name} downloaded`, "notice");
  }

  window.addEventListener("DOMContentLoaded", () => { bindControls(); connect(); });
  window.addEventListener("resize", () => { if (model) { buildNetwork(); if (frame) onFrame(frame); } });
})();
