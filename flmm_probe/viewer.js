// flmm_probe attention viewer: one self-contained page per record (see flmm_probe/viewer.py for the data).
// Every view is scoped to its root element, so several can live in one notebook.
(function () {
  "use strict";

  function decode(b64) {
    const raw = atob(b64);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }

  function paint(canvas, values, offset, gh, gw, lut) {
    // One canvas pixel per map cell: the colour of its 8-bit value (CSS scales the canvas up, pixelated).
    canvas.width = gw;
    canvas.height = gh;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(gw, gh);
    for (let i = 0; i < gh * gw; i++) {
      const v = values[offset + i];
      img.data[4 * i] = lut[3 * v];
      img.data[4 * i + 1] = lut[3 * v + 1];
      img.data[4 * i + 2] = lut[3 * v + 2];
      img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  function start(root) {
    const data = JSON.parse(root.querySelector("script.flmm-data").textContent);
    const maps = decode(data.maps);
    const [gh, gw] = data.grid;
    const L = data.layers, H = data.heads, columns = H + 1; // the last column: the layer's head average
    const cell = gh * gw;
    const state = { phrase: 0, layer: 0, head: 0, opacity: 0.6, sort: Object.keys(data.scores || {})[0] || "" };
    const $ = (sel) => root.querySelector(sel);
    const offset = (p, l, h) => ((p * L + l) * columns + h) * cell;
    const headName = (h) => (h === H ? "mean" : "H" + h);

    // The text, its phrases clickable.
    const text = $(".flmm-text");
    let cursor = 0;
    data.phrases.forEach((p, i) => {
      text.append(document.createTextNode(data.text.slice(cursor, p.start)));
      const span = document.createElement("span");
      span.className = "flmm-phrase";
      span.dataset.phrase = i;
      span.textContent = data.text.slice(p.start, p.end);
      span.title = "tokens: " + p.tokens.join(" | ");
      span.addEventListener("click", () => set({ phrase: i }));
      text.append(span);
      cursor = p.end;
    });
    text.append(document.createTextNode(data.text.slice(cursor)));

    // The layer x head grid.
    const grid = $(".flmm-grid");
    grid.style.gridTemplateColumns = "3em repeat(" + columns + ", var(--cell))";
    grid.append(document.createElement("div"));
    for (let h = 0; h < columns; h++) {
      const label = document.createElement("div");
      label.className = "flmm-label";
      label.textContent = headName(h);
      grid.append(label);
    }
    const cells = [];
    for (let l = 0; l < L; l++) {
      const label = document.createElement("div");
      label.className = "flmm-label";
      label.textContent = "L" + l;
      grid.append(label);
      cells.push([]);
      for (let h = 0; h < columns; h++) {
        const canvas = document.createElement("canvas");
        canvas.className = "flmm-cell";
        canvas.dataset.layer = l;
        canvas.dataset.head = h;
        canvas.title = "L" + l + " " + headName(h);
        canvas.addEventListener("click", () => set({ layer: l, head: h }));
        grid.append(canvas);
        cells[l].push(canvas);
      }
    }

    // The colour scale: the 256 colours, dark (the map's minimum) to bright (its maximum).
    const scale = $(".flmm-scale");
    scale.width = 256;
    scale.height = 1;
    const strip = scale.getContext("2d").createImageData(256, 1);
    for (let v = 0; v < 256; v++) {
      strip.data.set([data.lut[3 * v], data.lut[3 * v + 1], data.lut[3 * v + 2], 255], 4 * v);
    }
    scale.getContext("2d").putImageData(strip, 0, 0);
    const opacity = $(".flmm-opacity");
    opacity.addEventListener("input", () => set({ opacity: parseFloat(opacity.value) }));
    const sort = $(".flmm-sort");
    Object.keys(data.scores || {}).forEach((m) => {
      const o = document.createElement("option");
      o.value = m;
      o.textContent = m;
      sort.append(o);
    });
    sort.addEventListener("change", () => set({ sort: sort.value }));
    root.tabIndex = 0;
    root.addEventListener("keydown", (e) => {
      const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
      if (e.key in moves) {
        const [dl, dh] = moves[e.key];
        set({ layer: Math.min(L - 1, Math.max(0, state.layer + dl)), head: Math.min(columns - 1, Math.max(0, state.head + dh)) });
        e.preventDefault();
      } else if (e.key === "[" || e.key === "]") {
        const n = data.phrases.length;
        set({ phrase: (state.phrase + (e.key === "]" ? 1 : n - 1)) % n });
      }
    });

    function render() {
      root.querySelectorAll(".flmm-phrase").forEach((s) => s.classList.toggle("flmm-on", +s.dataset.phrase === state.phrase));
      for (let l = 0; l < L; l++)
        for (let h = 0; h < columns; h++) {
          paint(cells[l][h], maps, offset(state.phrase, l, h), gh, gw, data.lut);
          cells[l][h].classList.toggle("flmm-on", l === state.layer && h === state.head);
        }
      paint($(".flmm-heat"), maps, offset(state.phrase, state.layer, state.head), gh, gw, data.lut);
      $(".flmm-heat").style.opacity = state.opacity;
      opacity.value = state.opacity;
      const range = data.range[(state.phrase * L + state.layer) * columns + state.head];
      $(".flmm-title").textContent = '"' + data.phrases[state.phrase].text + '"  L' + state.layer + " " + headName(state.head) +
        "  attention " + range[0].toExponential(2) + " (dark) to " + range[1].toExponential(2) + " (bright)";
      root.querySelectorAll(".flmm-overlay").forEach((img) => {
        const list = data.overlays[img.dataset.kind];
        img.src = list[state.phrase] || "";
        img.style.display = list[state.phrase] ? "" : "none";
      });
      renderScores();
      const hash = "phrase=" + state.phrase + "&layer=" + state.layer + "&head=" + state.head + "&opacity=" + state.opacity +
        (state.sort ? "&sort=" + state.sort : "");
      if (data.standalone && location.hash.slice(1) !== hash) history.replaceState(null, "", "#" + hash);
    }

    function renderScores() {
      const table = $(".flmm-scores");
      table.innerHTML = "";
      if (!state.sort) return;
      sort.value = state.sort;
      const values = data.scores[state.sort][state.phrase]; // (layer, head)
      const ranked = [];
      values.forEach((row, l) => row.forEach((v, h) => ranked.push([v, l, h])));
      ranked.sort((a, b) => b[0] - a[0]);
      ranked.slice(0, 16).forEach(([v, l, h]) => {
        const row = document.createElement("tr");
        row.innerHTML = "<td>L" + l + "H" + h + "</td><td>" + v.toFixed(3) + "</td>";
        row.className = l === state.layer && h === state.head ? "flmm-on" : "";
        row.addEventListener("click", () => set({ layer: l, head: h }));
        table.append(row);
      });
    }

    function set(change) {
      Object.assign(state, change);
      render();
    }

    function fromHash() {
      // A shared or edited URL: take the state it names, within range.
      const given = new URLSearchParams(location.hash.slice(1));
      const limits = { phrase: data.phrases.length, layer: L, head: columns };
      for (const key of ["phrase", "layer", "head"]) {
        const v = parseInt(given.get(key), 10);
        if (v >= 0 && v < limits[key]) state[key] = v;
      }
      const o = parseFloat(given.get("opacity"));
      if (o >= 0 && o <= 1) state.opacity = o;
      if (given.has("sort") && data.scores && given.get("sort") in data.scores) state.sort = given.get("sort");
    }

    if (data.standalone) {
      fromHash();
      window.addEventListener("hashchange", () => { fromHash(); render(); });
    }
    render();
    root.dataset.paintedAt = performance.now().toFixed(1); // ms since the page began loading (benchmarks read it)
  }

  document.querySelectorAll(".flmm-view:not([data-started])").forEach((root) => {
    root.dataset.started = "1";
    start(root);
  });
})();
