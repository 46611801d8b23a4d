/* Trial page: draws the learning curves and confusion matrix; follows a running trial. */
"use strict";
(() => {
  const { enc, getJSON, send } = atml;
  const data = atml.pageData();
  const api = `/api/studies/${enc(data.study)}/trials/${data.number}`;
  let epochs = -1;

  async function draw() {
    for (const kind of ["curves", "confusion"]) {
      const div = document.getElementById(`plot-${kind}`);
      try { await atml.plot(div, `${api}/plots/${kind}`); } catch (e) { div.textContent = `chart unavailable: ${e.message}`; }
    }
  }

  async function follow() {
    try {
      const t = await getJSON(api);
      if (t.state !== data.state) { location.reload(); return; }  // finished: the server renders the final page
      if (t.epochs !== epochs) { epochs = t.epochs; await draw(); }
      atml.setLive(true, `live · ${atml.clock()}`);
    } catch (e) {
      atml.setLive(false, `offline: ${e.message}`);
    }
    setTimeout(follow, 2000);
  }

  atml.bindToken();
  document.getElementById("note-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = document.getElementById("note-text");
    const text = input.value.trim();
    if (!text) return;
    try {
      await send("POST", `${api}/notes`, { text });
      location.reload();
    } catch (err) {
      document.getElementById("control-msg").textContent = err.message;
    }
  });

  if (data.state === "RUNNING" || data.state === "WAITING") follow(); else draw();
})();
