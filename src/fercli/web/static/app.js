// fer live page: polls /state.json, draws bars per tracked face and a one-minute timeline.
"use strict";
const WINDOW = 60;          // seconds on the timeline
const POLL_MS = 200;        // how often the state is read
// A colour per class; a line style per person (track), so that two people's lines of one
// class can be told apart on the timeline.
const COLOURS = ["#e53935", "#43a047", "#1e88e5", "#fb8c00", "#8e24aa", "#00897b", "#6d4c41", "#546e7a"];
const DASHES = [[], [9, 4], [2, 3], [12, 4, 2, 4], [5, 5], [1, 6]];
const history = [];         // {t, faces: [{track, probabilities}]}
let classes = [];
let stopped = false;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  Object.assign(node, attrs || {});
  if (text !== undefined) node.textContent = text;
  return node;
}

function dashOf(track) {
  return DASHES[(track - 1) % DASHES.length];
}

// A short line in a track's style, as the timeline draws that person's lines.
function dashSample(track) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", "40");
  svg.setAttribute("height", "10");
  svg.setAttribute("class", "track-style");
  const line = document.createElementNS(ns, "line");
  for (const [key, value] of Object.entries({x1: 0, y1: 5, x2: 40, y2: 5})) line.setAttribute(key, value);
  line.setAttribute("stroke", "#333");
  line.setAttribute("stroke-width", "2");
  line.setAttribute("stroke-dasharray", dashOf(track).join(" ") || "none");
  svg.append(line);
  return svg;
}

function drawBars(faces) {
  const box = document.getElementById("bars");
  box.replaceChildren();
  if (!faces.length) { box.append(el("p", {className: "none"}, "no face in this frame")); return; }
  for (const face of faces) {
    const card = el("div", {className: "face"});
    const title = el("h3", {}, `#${face.track}: ${face.label} `);
    title.append(dashSample(face.track));
    card.append(title);
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
      ctx.setLineDash(dashOf(track));
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
  ctx.setLineDash([]);
  labelTracks(ctx, now, w, h);
  drawTrackLegend([...tracks].sort((a, b) => a - b));
}

// Each person's number at the latest point of their most probable class's line.
function labelTracks(ctx, now, w, h) {
  const latest = new Map();
  for (const entry of history) for (const face of entry.faces) latest.set(face.track, [entry, face]);
  ctx.fillStyle = "#222";
  ctx.font = "12px system-ui, sans-serif";
  ctx.textAlign = "right";
  for (const [track, [entry, face]] of latest) {
    const top = Math.max(0, ...classes.map(name => face.probabilities[name] || 0));
    const x = w - ((now - entry.t) / (WINDOW * 1000)) * w;
    const y = h - 4 - top * (h - 8);
    ctx.fillText(`#${track}`, Math.max(24, x - 3), Math.max(12, y - 3));
  }
}

function drawTrackLegend(tracks) {
  const legend = document.getElementById("tracks");
  const shown = tracks.join();
  if (legend.dataset.tracks === shown) return;
  legend.dataset.tracks = shown;
  legend.replaceChildren(...tracks.map(track => {
    const item = el("span", {}, ` #${track}`);
    item.prepend(dashSample(track));
    return item;
  }));
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
      `${state.source} · model ${state.model} · ${state.fps.toFixed(1)} frames/s · ${state.latency_ms} ms a frame` +
      (state.smooth ? ` · averaged over ${state.smooth} s` : "");
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
