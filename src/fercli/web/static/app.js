// fer live page: polls /state.json, draws bars per tracked face and a one-minute timeline.
"use strict";
const WINDOW = 60;          // seconds on the timeline
const POLL_MS = 200;        // how often the state is read
const COLOURS = ["#e53935", "#43a047", "#1e88e5", "#fb8c00", "#8e24aa", "#00897b", "#6d4c41", "#546e7a"];
const history = [];         // {t, faces: [{track, probabilities}]}
let classes = [];
let stopped = false;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  Object.assign(node, attrs || {});
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawBars(faces) {
  const box = document.getElementById("bars");
  box.replaceChildren();
  if (!faces.length) { box.append(el("p", {className: "none"}, "no face in this frame")); return; }
  for (const face of faces) {
    const card = el("div", {className: "face"});
    card.append(el("h3", {}, `#${face.track}: ${face.label}`));
    for (const name of classes) {
      const p = face.probabilities[name] || 0;
      const row = el("div", {className: "row"});
      const bar = el("div", {className: "bar"});
      const fill = el("div");
      fill.style.width = `${(100 * p).toFixed(1)}%`;
      bar.append(fill);
      row.append(el("span", {}, name), bar, el("span", {}, p.toFixed(2)));
      card.append(row);
    }
    box.append(card);
  }
}

function drawTimeline(now) {
  const canvas = document.getElementById("timeline");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#eee";
  for (let s = 0; s <= WINDOW; s += 10) {
    const x = w - (s / WINDOW) * w;
    ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, h); ctx.stroke();
  }
  while (history.length && now - history[0].t > WINDOW * 1000) history.shift();
  const tracks = new Set();
  for (const entry of history) for (const face of entry.faces) tracks.add(face.track);
  classes.forEach((name, c) => {
    ctx.strokeStyle = COLOURS[c % COLOURS.length];
    ctx.lineWidth = 1.5;
    for (const track of tracks) {
      ctx.beginPath();
      let drawing = false;
      for (const entry of history) {
        const face = entry.faces.find(f => f.track === track);
        const x = w - ((now - entry.t) / (WINDOW * 1000)) * w;
        if (!face) { drawing = false; continue; }
        const y = h - 4 - (face.probabilities[name] || 0) * (h - 8);
        if (drawing) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        drawing = true;
      }
      ctx.stroke();
    }
  });
}

function drawLegend() {
  const legend = document.getElementById("legend");
  legend.replaceChildren(...classes.map((name, c) => {
    const item = el("span", {}, name);
    const swatch = el("i");
    swatch.style.background = COLOURS[c % COLOURS.length];
    item.prepend(swatch);
    return item;
  }));
}

function showStatus(text, failed) {
  const status = document.getElementById("status");
  status.hidden = false;
  status.textContent = text;
  status.className = failed ? "failed" : "";
}

async function poll() {
  if (stopped) return;
  try {
    const response = await fetch("/state.json", {cache: "no-store"});
    const state = await response.json();
    if (classes.join() !== state.classes.join()) { classes = state.classes; drawLegend(); }
    document.getElementById("info").textContent =
      `${state.source} · model ${state.model} · ${state.fps.toFixed(1)} frames/s · ${state.latency_ms} ms a frame`;
    const now = Date.now();
    history.push({t: now, faces: state.faces});
    drawBars(state.faces);
    drawTimeline(now);
    if (state.status === "ended") { showStatus("The video has ended.", false); stopped = true; }
    if (state.status === "failed") { showStatus(`The source is gone: ${state.error}`, true); stopped = true; }
  } catch (error) {
    showStatus("fer live is not answering (stopped?)", true);
    stopped = true;
  }
  if (!stopped) setTimeout(poll, POLL_MS);
}

poll();
