"""Read API over studies written by real ``atml search`` runs (SQLite and PostgreSQL)."""

from __future__ import annotations

import optuna
import pytest

from atml.storage import open_storage


def _trials(searched):
    s = optuna.load_study(study_name=searched.study, storage=open_storage(searched.url))
    return s, s.get_trials(deepcopy=False)


def test_health_and_openapi(api):
    h = api.get("/api/health").json()
    assert h["status"] == "ok" and h["read_only"] is True
    spec = api.get("/openapi.json").json()
    paths = spec["paths"]
    for p in ("/api/studies", "/api/studies/{name}/summary", "/api/studies/{name}/trials",
              "/api/studies/{name}/trials/{number}", "/api/studies/{name}/plots/{kind}",
              "/api/studies/{name}/gate", "/api/studies/{name}/avoid", "/api/studies/{name}/enqueue"):
        assert p in paths, p
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert not any(p.startswith("/studies") or p == "/" for p in paths), "pages stay out of the API schema"


def test_studies_list(api, searched):
    rows = api.get("/api/studies").json()
    row = next(r for r in rows if r["name"] == searched.study)
    _, trials = _trials(searched)
    assert row["metric"] == "f1" and row["directions"] == ["maximize"]
    assert row["n_trials"] == len(trials) == 3 and row["budget"] == 3
    assert sum(row["counts"].values()) == 3 and "RUNNING" not in row["counts"]
    done = [t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert row["best_value"] == pytest.approx(max(done))
    assert row["last_activity"] and row["stop_reason"] == "n_trials reached (3)"


def test_summary(api, searched):
    s = api.get(f"/api/studies/{searched.study}/summary").json()
    study, trials = _trials(searched)
    assert s["total"] == 3 and s["budget"]["n_trials"] == 3 and s["budget"]["done"] == 3
    assert s["budget"]["fraction"] == 1.0
    assert s["best"]["value"] == pytest.approx(study.best_value)
    assert s["best"]["number"] in [t.number for t in trials if t.value == study.best_value and t.state.name == "COMPLETE"]
    assert s["stop_reason"] == "n_trials reached (3)" and s["metric"] == "f1"
    assert s["n_gate"] == 1 and s["n_avoid"] == 1
    assert {"history", "intermediate", "parallel", "importance"} <= set(s["plots"])
    # the worker that ran the trials finished them a moment ago: seen recently
    assert [w["worker"] for w in s["workers"]] == [trials[0].user_attrs["worker"]]
    assert s["workers"][0]["running"] == [] and s["workers"][0]["last_seen"]
    again = api.get(f"/api/studies/{searched.study}/summary", params={"since": s["version"]}).json()
    assert again["version"] == s["version"] and again["changed"] is False
    assert api.get(f"/api/studies/{searched.study}/summary", params={"since": "old"}).json()["changed"] is True


def test_trials_page_sort_filter(api, searched):
    base = f"/api/studies/{searched.study}/trials"
    _, trials = _trials(searched)
    page = api.get(base).json()
    assert page["total"] == 3 and [r["number"] for r in page["items"]] == [0, 1, 2]
    desc = api.get(base, params={"sort": "number", "order": "desc", "limit": 2}).json()
    assert [r["number"] for r in desc["items"]] == [2, 1] and desc["total"] == 3
    nxt = api.get(base, params={"sort": "number", "order": "desc", "limit": 2, "offset": 2}).json()
    assert [r["number"] for r in nxt["items"]] == [0]
    done = api.get(base, params={"state": "COMPLETE", "sort": "value", "order": "desc"}).json()
    want = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: (-t.value, -t.number))
    assert [r["number"] for r in done["items"]] == [t.number for t in want]
    assert all(r["state"] == "COMPLETE" for r in done["items"])
    both = api.get(base, params=[("state", "COMPLETE"), ("state", "PRUNED")]).json()
    assert both["total"] == sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    by_metric = api.get(base, params={"sort": "metric.auroc", "order": "asc"}).json()["items"]
    aurocs = [r["metrics"].get("auroc") for r in by_metric]
    present = [a for a in aurocs if a is not None]
    assert present == sorted(present) and aurocs[: len(present)] == present, "missing values sort last"
    row = page["items"][0]
    t0 = trials[0]
    assert row["params"] == t0.params and row["worker"] == t0.user_attrs["worker"]
    assert row["n_params"] == t0.user_attrs["n_params"] and row["epochs"] == len(t0.intermediate_values)
    assert api.get(base, params={"sort": "bogus"}).status_code == 422
    assert api.get(base, params={"limit": 0}).status_code == 422
    assert api.get(base, params={"state": "EXPLODED"}).status_code == 422


def test_trial_detail(api, searched):
    study, trials = _trials(searched)
    best = study.best_trial
    d = api.get(f"/api/studies/{searched.study}/trials/{best.number}").json()
    assert d["state"] == "COMPLETE" and d["value"] == pytest.approx(best.value)
    assert d["metrics"]["f1"] == pytest.approx(best.user_attrs["metrics"]["f1"])
    m = best.user_attrs["metrics"]
    assert d["confusion"] == {k: int(m[k]) for k in ("tn", "fp", "fn", "tp")}
    assert [v for _, v in d["intermediate_values"]] == pytest.approx(list(best.intermediate_values.values()))
    assert len(d["history"]) == len(best.user_attrs["history"])
    assert d["checkpoint"] == best.user_attrs["checkpoint"]
    assert d["checkpoint_url"].endswith(best.user_attrs["checkpoint"])
    assert api.get(d["checkpoint_url"]).content[:2] == b"PK", "torch checkpoints are zip files"
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    for t in pruned:
        p = api.get(f"/api/studies/{searched.study}/trials/{t.number}").json()
        assert p["reason"].startswith("pruned by median")
    avoided = trials[-1].number
    a = api.get(f"/api/studies/{searched.study}/trials/{avoided}").json()
    assert a["avoided"] is True and "avoid list: f1 below avoid_below 0.9" in a["reason"]


@pytest.mark.parametrize("kind", ["history", "intermediate", "parallel", "importance", "pareto"])
def test_study_plots(api, searched, kind):
    r = api.get(f"/api/studies/{searched.study}/plots/{kind}")
    assert r.status_code == 200
    fig = r.json()
    assert isinstance(fig["data"], list) and isinstance(fig["layout"], dict)
    if kind in ("history", "intermediate"):
        assert fig["data"], f"{kind} has traces"


def test_trial_plots(api, searched):
    study, _ = _trials(searched)
    n = study.best_trial.number
    curves = api.get(f"/api/studies/{searched.study}/trials/{n}/plots/curves").json()
    assert {t["name"] for t in curves["data"]} >= {"train_loss", "val_loss", "f1"}
    conf = api.get(f"/api/studies/{searched.study}/trials/{n}/plots/confusion").json()
    assert conf["data"][0]["type"] == "heatmap"


def test_gate_and_avoid(api, searched):
    gate = api.get(f"/api/studies/{searched.study}/gate").json()
    assert len(gate) == 1, "the removed folder (null attr) is not listed"
    files = {f["name"]: f for f in gate[0]["files"]}
    assert files["missing.bin"]["url"] is None
    onnx = api.get(files["model.onnx"]["url"])
    assert onnx.status_code == 200 and onnx.content == b"onnx-bytes-for-test"
    avoid = api.get(f"/api/studies/{searched.study}/avoid").json()
    assert len(avoid) == 1 and avoid[0]["reason"] == "f1 below avoid_below 0.9" and avoid[0]["params"]


@pytest.mark.parametrize("path", [
    "gate/../../secret.txt", "gate/%2e%2e/%2e%2e/secret.txt", "..%2fsecret.txt", "logs/worker-0.log",
    "%2fetc%2fpasswd", "trials/../../../../../../etc/passwd", "gate/%00/model.onnx", "cache", "gate",
    "x" * 5000,
])
def test_downloads_stay_in_the_artifact_store(api, searched, path):
    r = api.get(f"/api/studies/{searched.study}/files/{path}")
    assert r.status_code == 404, (path, r.status_code, r.text[:200])


def test_unknown_ids_404(api, searched):
    s = searched.study
    for url in ("/api/studies/nope/summary", "/api/studies/nope/trials", "/api/studies/nope/trials/0",
                "/api/studies/nope/plots/history", "/api/studies/nope/gate", "/api/studies/nope/avoid",
                "/api/studies/nope/notes", "/api/studies/nope/files/gate/x", f"/api/studies/{s}/trials/99",
                f"/api/studies/{s}/trials/-1", f"/api/studies/{s}/trials/99999999999999999999999",
                f"/api/studies/{s}/trials/99/plots/curves", "/api/studies/%00/summary",
                "/studies/nope", f"/studies/{s}/trials/99", f"/studies/{s}/trials/abc"):
        r = api.get(url)
        assert r.status_code == 404, (url, r.status_code, r.text[:200])
    assert "not found" in api.get("/studies/nope").text


def test_pages_render(api, searched):
    s = searched.study
    home = api.get("/")
    assert home.status_code == 200 and f'href="/studies/{s}"' in home.text
    page = api.get(f"/studies/{s}")
    assert page.status_code == 200
    for marker in ('id="total-trials"', 'id="plot-history"', 'id="trials-body"', 'id="gate-body"',
                   "model.onnx", 'id="avoid-body"', "f1 below avoid_below 0.9", "/vendor/plotly.min.js"):
        assert marker in page.text, marker
    trial = api.get(f"/studies/{s}/trials/0")
    assert trial.status_code == 200 and "Parameters" in trial.text
    js = api.get("/vendor/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000 and b"plotly" in js.content[:2000].lower()
    assert api.get("/static/study.js").status_code == 200
