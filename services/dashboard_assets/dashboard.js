// Renders /dashboard/data: drift per series and window, latency per stage. No dependencies.
"use strict";

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function bar(td, value, scale) {
  const span = document.createElement("span");
  span.className = "bar";
  span.style.width = Math.min(200, Math.round((value / scale) * 200)) + "px";
  td.appendChild(span);
}

function fmt(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function renderDrift(data) {
  const head = document.querySelector("#drift thead");
  const body = document.querySelector("#drift tbody");
  head.innerHTML = "";
  body.innerHTML = "";
  const top = document.createElement("tr");
  cell(top, "series");
  for (const w of data.windows) {
    for (const label of ["n", "PSI", "JS", "p-value", ""]) {
      const th = document.createElement("th");
      th.textContent = `${w} ${label || "PSI bar"}`;
      top.appendChild(th);
    }
  }
  cell(top, "status");
  head.appendChild(top);
  for (const s of data.drift) {
    const drifting = data.windows.some((w) => s.windows[w].drifting);
    const row = document.createElement("tr");
    row.dataset.series = s.series;
    row.className = drifting ? "drifting" : "ok";
    cell(row, s.series);
    for (const w of data.windows) {
      const v = s.windows[w];
      cell(row, String(v.n));
      cell(row, fmt(v.psi, 3));
      cell(row, fmt(v.js, 3));
      cell(row, v.n ? v.p_value.toExponential(1) : "–", v.drifting ? "flag" : "");
      bar(cell(row, ""), v.psi, 1.0);
    }
    cell(row, drifting ? "drifting" : "ok", drifting ? "flag" : "");
    body.appendChild(row);
  }
  document.getElementById("drifting").textContent = data.drift.length === 0
    ? "This bundle has no drift reference."
    : data.drifting.length ? `Drifting: ${data.drifting.join(", ")}` : "No series is drifting.";
}

function renderLatency(data) {
  const body = document.querySelector("#latency tbody");
  body.innerHTML = "";
  const worst = Math.max(1, ...data.latency.map((s) => s.p99_ms || 0));
  for (const s of data.latency) {
    const row = document.createElement("tr");
    row.dataset.stage = s.stage;
    cell(row, s.stage);
    cell(row, String(s.count));
    cell(row, fmt(s.p50_ms, 2));
    cell(row, fmt(s.p90_ms, 2));
    cell(row, fmt(s.p99_ms, 2));
    bar(cell(row, ""), s.p99_ms || 0, worst);
    body.appendChild(row);
  }
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("/dashboard/data", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const data = await response.json();
    renderDrift(data);
    renderLatency(data);
    status.textContent = `model ${data.model_version} · worker ${data.process} · updated ${new Date().toISOString()}`;
    document.body.dataset.loaded = "true";
  } catch (error) {
    status.textContent = `could not load /dashboard/data: ${error}`;
  }
}

refresh();
setInterval(refresh, 5000);
