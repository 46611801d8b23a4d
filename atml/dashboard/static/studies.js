/* Studies list: refreshes the table every 5 s. */
"use strict";
(() => {
  const { el, fmt, enc } = atml;
  function row(r) {
    const status = r.stop_reason || (r.counts.RUNNING ? "running" : "");
    return el("tr", {},
      el("td", {}, el("a", { href: `/studies/${enc(r.name)}`, text: r.name })),
      el("td", {}, `${r.metric} `, el("span", { class: "dir", text: r.directions.join(", ") })),
      el("td", { class: "num", text: r.budget ? `${r.n_trials} / ${r.budget}` : String(r.n_trials) }),
      el("td", {}, Object.keys(r.counts).sort().map((s) => el("span", { class: `chip st-${s}`, text: `${s.toLowerCase()} ${r.counts[s]}` }))),
      el("td", { class: "num", text: fmt(r.best_value) }),
      el("td", { text: r.last_activity ? new Date(r.last_activity).toLocaleString() : "–" }),
      el("td", { text: status }));
  }
  async function refresh() {
    try {
      const rows = await atml.getJSON("/api/studies");
      document.getElementById("studies-body").replaceChildren(...rows.map(row));
      document.getElementById("studies-table").hidden = rows.length === 0;
      const none = document.getElementById("no-studies");
      if (none) none.hidden = rows.length > 0;
      atml.setLive(true, `live · ${atml.clock()}`);
    } catch (e) {
      atml.setLive(false, `offline: ${e.message}`);
    }
    setTimeout(refresh, 5000);
  }
  refresh();
})();
