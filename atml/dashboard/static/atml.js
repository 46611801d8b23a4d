/* Shared helpers of the atml dashboard pages. Text always goes in with textContent. */
"use strict";
const atml = (() => {
  const pageData = () => JSON.parse(document.getElementById("page-data")?.textContent || "{}");

  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error(`${r.status} ${body.detail || r.statusText}`);
    }
    return r.json();
  }

  const token = () => sessionStorage.getItem("atml-token") || "";
  function bindToken() {
    const input = document.getElementById("token");
    if (!input) return;
    input.value = token();
    input.addEventListener("change", () => sessionStorage.setItem("atml-token", input.value.trim()));
  }

  async function send(method, url, body) {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const out = await r.json().catch(() => ({}));
    if (!r.ok) {
      const d = Array.isArray(out.detail) ? out.detail.map((x) => x.msg).join("; ") : out.detail;
      throw new Error(`${r.status}: ${d || r.statusText}`);
    }
    return out;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fmt(v, digits = 4) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") {
      if (Number.isInteger(v)) return String(v);
      return Number(v.toPrecision(digits)).toString();
    }
    return String(v);
  }

  const enc = encodeURIComponent;

  function setLive(ok, text) {
    const live = document.getElementById("live");
    if (!live) return;
    live.className = ok ? "live on" : "live err";
    live.textContent = text;
  }

  async function plot(div, url) {
    const fig = await getJSON(url);
    div.querySelector(".loading")?.remove();
    await Plotly.react(div, fig.data, fig.layout, { responsive: true, displaylogo: false });
  }

  function clock() {
    return new Date().toLocaleTimeString();
  }

  return { pageData, getJSON, send, el, fmt, enc, setLive, plot, bindToken, clock };
})();
