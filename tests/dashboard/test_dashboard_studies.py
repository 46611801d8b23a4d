"""Study shapes a real search rarely produces in a short test: two objectives, model sizes,
running trials with heartbeats, empty studies, studies not made by atml."""

from __future__ import annotations

import optuna
import pytest
from dash_helpers import TestClient, make_study

from atml.dashboard import create_app
from atml.storage import open_storage, sqlite_path
from atml.storage.optuna_internals import trial_id


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    url = f"sqlite:///{folder / 'studies' / 'atml.db'}"
    make_study(url, "sized", n=8, sizes=True)
    make_study(url, "two", n=6, directions=("maximize", "minimize"))
    make_study(url, "busy", n=2, running=2)
    optuna.create_study(storage=open_storage(url), study_name="empty")
    plain = optuna.create_study(storage=open_storage(url), study_name="plain")
    plain.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=4)
    with TestClient(create_app(url, token="")) as c:
        yield c, url


def test_sizes_give_a_pareto_chart(shapes):
    c, _ = shapes
    s = c.get("/api/studies/sized/summary").json()
    assert s["has_size"] and "pareto" in s["plots"]
    fig = c.get("/api/studies/sized/plots/pareto").json()
    assert [t["name"] for t in fig["data"]] == ["trials", "Pareto front"]
    rows = c.get("/api/studies/sized/trials", params={"sort": "onnx_kb", "order": "asc"}).json()["items"]
    sizes = [r["onnx_kb"] for r in rows if r["onnx_kb"] is not None]
    assert sizes == sorted(sizes) and rows[-1]["onnx_kb"] is None


def test_two_objectives(shapes):
    c, _ = shapes
    s = c.get("/api/studies/two/summary").json()
    assert s["multi_objective"] and s["best"] is None and "pareto" in s["plots"]
    assert s["directions"] == ["maximize", "minimize"]
    fig = c.get("/api/studies/two/plots/pareto").json()
    assert fig["layout"]["title"]["text"] == "Pareto front" and len(fig["data"]) == 2
    assert c.get("/api/studies/two/plots/importance").status_code == 200
    row = c.get("/api/studies/two/trials/0").json()
    assert len(row["values"]) == 2
    assert c.get("/studies/two").status_code == 200


def test_running_trials_and_heartbeats(shapes):
    c, url = shapes
    storage = open_storage(url)
    sid = storage.get_study_id_from_name("busy")
    running = [t for t in storage.get_all_trials(sid) if t.state == optuna.trial.TrialState.RUNNING]
    storage.record_heartbeat(trial_id(running[0]))
    c.app.state.ctx.reader.invalidate("busy")
    s = c.get("/api/studies/busy/summary").json()
    assert s["counts"]["RUNNING"] == 2
    (w,) = [w for w in s["workers"] if w["running"]]
    assert sorted(w["running"]) == sorted(t.number for t in running)
    assert w["heartbeat_age"] is not None and w["heartbeat_age"] < 60
    assert c.get("/api/studies/busy/trials", params={"sort": "duration", "order": "desc"}).status_code == 200
    assert "running" in c.get("/studies/busy").text


def test_empty_study(shapes):
    c, _ = shapes
    s = c.get("/api/studies/empty/summary").json()
    assert s["total"] == 0 and s["best"] is None and s["workers"] == [] and s["budget"]["n_trials"] is None
    assert s["atml"] is False and s["metric"] == "objective"
    for kind in ("history", "intermediate", "parallel", "importance"):
        fig = c.get(f"/api/studies/empty/plots/{kind}").json()
        assert fig["data"] == [] and fig["layout"]["annotations"], kind
    assert c.get("/api/studies/empty/trials").json() == {"total": 0, "offset": 0, "limit": 50, "sort": "number",
                                                          "order": "asc", "states": [], "items": []}
    assert "no trial yet" in c.get("/studies/empty").text


def test_study_not_made_by_atml(shapes):
    c, _ = shapes
    s = c.get("/api/studies/plain/summary").json()
    assert s["directions"] == ["minimize"] and s["best"]["value"] == min(
        r["value"] for r in c.get("/api/studies/plain/trials").json()["items"])
    imp = c.get("/api/studies/plain/plots/importance").json()
    assert imp["data"] and imp["data"][0]["type"] == "bar"
    assert c.get("/api/studies/plain/trials/0/plots/confusion").json()["layout"]["annotations"]
    assert c.get("/studies/plain/trials/0").status_code == 200


def test_studies_page_lists_all(shapes):
    c, _ = shapes
    names = {r["name"] for r in c.get("/api/studies").json()}
    assert names == {"sized", "two", "busy", "empty", "plain"}
    html = c.get("/").text
    assert all(f'href="/studies/{n}"' in html for n in names)


def test_allowed_hosts(shapes):
    _, url = shapes
    with TestClient(create_app(url, allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://127.0.0.1:8080") as c:
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/health", headers={"Host": "evil.example:8080"}).status_code == 400


def test_app_over_a_storage_object(shapes):
    _, url = shapes
    with TestClient(create_app(open_storage(url), token="")) as c:
        assert c.get("/api/health").json()["storage"] == url
        assert c.app.state.ctx.artifacts == sqlite_path(url).parent.resolve(), "beside the SQLite file, as for a URL"
        assert {r["name"] for r in c.get("/api/studies").json()} >= {"sized", "two"}
    mem = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=mem, study_name="mem")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    with TestClient(create_app(mem, token="")) as c:
        assert c.get("/api/health").json()["storage"] == "InMemoryStorage"
        assert c.get("/api/studies/mem/summary").json()["total"] == 3
        assert c.get("/studies/mem").status_code == 200
