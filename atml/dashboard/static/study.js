/* Study page: polls the summary every 2 s and redraws what changed, without a reload. */
"use strict";
(() => {
  const { el, fmt, enc, getJSON, send } = atml;
  const data = atml.pageData();
  const api = `/api/studies/${enc(data.study)}`;
  const STATES = ["RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING"];
  const view = { sort: "number", order: "desc", offset: 0, limit: 25, states: new Set() };
  let version = null;

  const $ = (id) => document.getElementById(id);
  const trialLink = (n) => el("a", { href: `/studies/${enc(data.study)}/trials/${n}`, text: `#${n}` });

  function renderSummary(s) {
    $("total-trials").textContent = s.total;
    $("counts").replaceChildren(...STATES.filter((st) => s.counts[st]).map((st) =>
      el("span", { class: `chip st-${st}`, "data-state": st, text: `${st.toLowerCase()} ${s.counts[st]}` })));
    const badge = $("status-badge");
    const status = s.end_reason || (s.counts.RUNNING ? "running" : "idle");
    badge.textContent = status;
    badge.className = `badge ${s.end_reason ? "stopped" : s.counts.RUNNING ? "running" : "idle"}`;
    const b = s.budget;
    $("progress-bar").style.width = `${((b.fraction || 0) * 100).toFixed(1)}%`;
    $("progress-text").textContent = `${b.done}${b.n_trials ? ` / ${b.n_trials}` : ""} trials finished`;
    $("time-left").textContent = s.end_reason ? `ended: ${s.end_reason}`
      : b.seconds_left !== null && b.seconds_left !== undefined ? `${Math.round(b.seconds_left)} s left` : "";
    const best = $("best");
    if (s.best) {
      best.replaceChildren(
        el("div", { class: "big" }, el("a", { id: "best-link", href: `/studies/${enc(data.study)}/trials/${s.best.number}`, text: `#${s.best.number}` }),
          el("span", { id: "best-value", text: fmt(s.best.value) })),
        el("div", { class: "sub", text: Object.entries(s.best.params).map(([k, v]) => `${k}=${fmt(v, 3)}`).join(" ") }));
    } else {
      best.replaceChildren(el("div", { class: "empty", text: s.multi_objective ? "multi-objective: see the Pareto front" : "no completed trial yet" }));
    }
    const ws = s.workers.map((w) => el("li", {}, el("code", { text: w.worker }),
      w.device ? ` on ${w.device}` : "",
      w.running.length ? ` running ${w.running.map((n) => `#${n}`).join(", ")}` : "",
      w.heartbeat_age !== null ? ` · heartbeat ${w.heartbeat_age} s ago` : "",
      !w.running.length && w.last_seen ? ` · last trial ended ${new Date(w.last_seen).toLocaleTimeString()}` : ""));
    $("workers").replaceChildren(...(ws.length ? ws : [el("li", { class: "empty", text: "none in the last 10 minutes" })]));
    for (const kind of ["history", "intermediate", "parallel", "importance", "pareto"]) {
      $(`card-${kind}`).hidden = !s.plots.includes(kind);
    }
  }

  // One request per chart at a time; a chart asked for again meanwhile is redrawn once after.
  const drawing = new Map();
  function refreshPlot(kind) {
    if (drawing.has(kind)) { drawing.set(kind, true); return; }
    drawing.set(kind, false);
    atml.plot($(`plot-${kind}`), `${api}/plots/${kind}`)
      .catch((e) => $(`plot-${kind}`).replaceChildren(el("div", { class: "loading", text: `chart unavailable: ${e.message}` })))
      .finally(() => {
        const again = drawing.get(kind);
        drawing.delete(kind);
        if (again) refreshPlot(kind);
      });
  }

  function trialRow(t) {
    return el("tr", { class: `st-row-${t.state}` },
      el("td", { class: "num" }, trialLink(t.number)),
      el("td", {}, el("span", { class: `chip st-${t.state}`, text: t.state.toLowerCase() })),
      el("td", { class: "num", text: fmt(t.value) }),
      el("td", { class: "num", text: fmt(t.metrics.accuracy) }),
      el("td", { class: "num", text: fmt(t.metrics.auroc) }),
      el("td", { text: t.params["model.family"] ?? "" }),
      el("td", { class: "num", text: fmt(t.params["train.lr"], 3) }),
      el("td", { class: "num", text: fmt(t.n_params) }),
      el("td", { class: "num", text: fmt(t.onnx_kb) }),
      el("td", { class: "num", text: fmt(t.duration, 3) }),
      el("td", {}, el("code", { text: t.worker || "" })),
      el("td", { class: "reason", text: t.reason || "" }));
  }

  async function refreshTable() {
    const q = new URLSearchParams({ sort: view.sort, order: view.order, offset: view.offset, limit: view.limit });
    for (const st of view.states) q.append("state", st);
    const page = await getJSON(`${api}/trials?${q}`);
    if (page.total && view.offset >= page.total) {
      view.offset = Math.max(0, Math.floor((page.total - 1) / view.limit) * view.limit);
      return refreshTable();
    }
    $("trials-body").replaceChildren(...(page.items.length ? page.items.map(trialRow)
      : [el("tr", {}, el("td", { colspan: 12, class: "empty", text: "no trial matches" }))]));
    const last = Math.min(page.total, view.offset + page.items.length);
    $("page-info").textContent = page.total ? `${view.offset + 1}–${last} of ${page.total}` : "0 trials";
    $("prev").disabled = view.offset === 0;
    $("next").disabled = last >= page.total;
    for (const th of document.querySelectorAll("#trials-table th[data-sort]")) {
      th.classList.toggle("sorted-asc", th.dataset.sort === view.sort && view.order === "asc");
      th.classList.toggle("sorted-desc", th.dataset.sort === view.sort && view.order === "desc");
    }
  }

  async function refreshLists() {
    const [gate, avoid, notes] = await Promise.all([getJSON(`${api}/gate`), getJSON(`${api}/avoid`), getJSON(`${api}/notes`)]);
    $("gate-body").replaceChildren(...(gate.length ? gate.map((g) => el("tr", {},
      el("td", {}, el("code", { text: g.folder })),
      el("td", { class: "num" }, g.trial !== null ? trialLink(g.trial) : ""),
      el("td", { text: ["f1", "accuracy", "precision", "recall", "auroc"].filter((k) => k in g.metrics).map((k) => `${k} ${fmt(g.metrics[k], 3)}`).join(" ") }),
      el("td", {}, g.files.map((f) => [f.url ? el("a", { href: f.url, download: "", text: f.name }) : el("span", { class: "sub", title: "not in this artifact store", text: f.name }), " "]))))
      : [el("tr", {}, el("td", { colspan: 4, class: "empty", text: "no gate folder yet: no trial has passed the gate" }))]));
    $("avoid-body").replaceChildren(...(avoid.length ? avoid.map((a) => el("tr", {},
      el("td", { class: "num" }, a.trial !== null ? trialLink(a.trial) : ""),
      el("td", { text: a.reason || "" }),
      el("td", { class: "params", text: Object.entries(a.params).map(([k, v]) => `${k}=${fmt(v, 3)}`).join(" ") })))
      : [el("tr", {}, el("td", { colspan: 3, class: "empty", text: "the avoid list is empty" }))]));
    $("notes-list").replaceChildren(...(notes.length ? notes.map((n) => el("li", {},
      el("span", { class: "sub", text: `${n.time ? new Date(n.time).toLocaleString() : ""}${n.trial !== null ? ` · trial #${n.trial}` : ""}` }), " ", n.text))
      : [el("li", { class: "empty", text: "no note yet" })]));
  }

  let timer = null;
  async function poll() {
    clearTimeout(timer);
    try {
      const s = await getJSON(`${api}/summary?${version ? `since=${enc(version)}` : ""}`);
      renderSummary(s);
      if (s.changed || version === null) {
        version = s.version;
        s.plots.forEach(refreshPlot);  // not awaited: a slow chart never holds up the counters
        await Promise.all([refreshTable(), refreshLists()]);
      }
      atml.setLive(true, `live · ${atml.clock()}`);
    } catch (e) {
      atml.setLive(false, `offline: ${e.message}`);
    } finally {
      timer = setTimeout(poll, 2000);
    }
  }

  // table controls
  for (const th of document.querySelectorAll("#trials-table th[data-sort]")) {
    th.addEventListener("click", () => {
      if (view.sort === th.dataset.sort) view.order = view.order === "asc" ? "desc" : "asc";
      else {
        view.sort = th.dataset.sort;
        view.order = ["number", "value", "metric.accuracy", "metric.auroc"].includes(view.sort) ? "desc" : "asc";
      }
      view.offset = 0;
      refreshTable();
    });
  }
  for (const box of document.querySelectorAll("#state-filters input")) {
    box.addEventListener("change", () => {
      if (box.checked) view.states.add(box.value); else view.states.delete(box.value);
      view.offset = 0;
      refreshTable();
    });
  }
  $("page-size").addEventListener("change", (e) => { view.limit = Number(e.target.value); view.offset = 0; refreshTable(); });
  $("prev").addEventListener("click", () => { view.offset = Math.max(0, view.offset - view.limit); refreshTable(); });
  $("next").addEventListener("click", () => { view.offset += view.limit; refreshTable(); });

  // writing controls (the server refuses them without the token)
  atml.bindToken();
  const msg = (text) => { $("control-msg").textContent = text; };
  const act = async (fn, done) => {
    try { const out = await fn(); msg(done(out)); version = null; poll(); } catch (e) { msg(e.message); }
  };
  $("stop").addEventListener("click", () => {
    if (confirm(`Stop study ${data.study}? Workers finish their current trial, then exit.`)) {
      act(() => send("POST", `${api}/stop`), (o) => `stop requested: ${o.stop_reason}`);
    }
  });
  $("clear-avoid").addEventListener("click", () => {
    if (confirm("Clear the avoid list?")) act(() => send("DELETE", `${api}/avoid`), (o) => `cleared ${o.cleared} entries`);
  });
  $("note-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("note-text").value.trim();
    if (text) act(() => send("POST", `${api}/notes`, { text }), () => { $("note-text").value = ""; return "note added"; });
  });
  $("enqueue-form").addEventListener("submit", (e) => {
    e.preventDefault();
    let params;
    try { params = JSON.parse($("enqueue-params").value || "{}"); } catch (err) { msg(`not JSON: ${err.message}`); return; }
    act(() => send("POST", `${api}/enqueue`, { params }), (o) => `queued as trial #${o.number}`);
  });

  poll();
})();
