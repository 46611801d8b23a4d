"""Token rules and the writing endpoints (notes, stop, enqueue, clear avoid list)."""

from __future__ import annotations

import json

import optuna
from dash_helpers import TOKEN, TestClient, make_study

from atml.dashboard import create_app
from atml.storage import open_storage

AUTH = {"Authorization": f"Bearer {TOKEN}"}
WRITES = [
    ("post", "/api/studies/w/notes", {"text": "hello"}),
    ("post", "/api/studies/w/trials/0/notes", {"text": "hi"}),
    ("post", "/api/studies/w/stop", None),
    ("post", "/api/studies/w/enqueue", {"params": {"train.lr": 0.002}}),
    ("delete", "/api/studies/w/avoid", None),
]


def _call(client, method, url, body, headers=None):
    kw = {"headers": headers or {}}
    if body is not None:
        kw["json"] = body
    return getattr(client, method)(url, **kw) if method != "delete" else client.request("DELETE", url, **kw)


def test_read_only_without_token(sqlite_url, monkeypatch):
    monkeypatch.delenv("ATML_DASHBOARD_TOKEN", raising=False)
    make_study(sqlite_url, "w")
    with TestClient(create_app(sqlite_url)) as c:
        assert c.get("/api/health").json()["read_only"] is True
        for method, url, body in WRITES:
            for headers in (None, AUTH):
                r = _call(c, method, url, body, headers)
                assert r.status_code == 403 and "read-only" in r.json()["detail"], url


def test_token_401_403(writer):
    for method, url, body in WRITES:
        assert _call(writer, method, url, body).status_code == 401, url
        r = _call(writer, method, url, body, {"Authorization": "Basic dXNlcjpwYXNz"})
        assert r.status_code == 401 and r.headers.get("www-authenticate") == "Bearer"
        assert _call(writer, method, url, body, {"Authorization": "Bearer"}).status_code == 401
        assert _call(writer, method, url, body, {"Authorization": "Bearer wrong"}).status_code == 403
        assert _call(writer, method, url, body, {"Authorization": f"Bearer {TOKEN}x"}).status_code == 403
    study = writer.get("/api/studies/w/summary").json()
    assert study["stop_reason"] is None and study["n_notes"] == 0 and "WAITING" not in study["counts"]


def test_token_from_environment(sqlite_url, monkeypatch):
    make_study(sqlite_url, "w")
    monkeypatch.setenv("ATML_DASHBOARD_TOKEN", "from-env")
    with TestClient(create_app(sqlite_url)) as c:
        assert c.get("/api/health").json()["read_only"] is False
        assert c.post("/api/studies/w/stop", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_writes_on_unknown_study_404(writer):
    for method, url, body in WRITES:
        r = _call(writer, method, url.replace("/w/", "/nope/"), body, AUTH)
        assert r.status_code == 404, url
    assert writer.post("/api/studies/w/trials/77/notes", json={"text": "x"}, headers=AUTH).status_code == 404


def test_notes(writer):
    r = writer.post("/api/studies/w/notes", json={"text": "<b>tried wider nets</b>"}, headers=AUTH)
    assert r.status_code == 201 and r.json()["trial"] is None
    r = writer.post("/api/studies/w/trials/2/notes", json={"text": "looks overfit"}, headers=AUTH)
    assert r.status_code == 201 and r.json()["trial"] == 2
    assert writer.post("/api/studies/w/notes", json={"text": ""}, headers=AUTH).status_code == 422
    notes = writer.get("/api/studies/w/notes").json()
    assert [n["text"] for n in notes] == ["<b>tried wider nets</b>", "looks overfit"]
    assert [n["text"] for n in writer.get("/api/studies/w/notes", params={"trial": 2}).json()] == ["looks overfit"]
    assert writer.get("/api/studies/w/trials/2").json()["notes"][0]["text"] == "looks overfit"
    assert writer.get("/api/studies/w/summary").json()["n_notes"] == 2
    page = writer.get("/studies/w").text
    assert "&lt;b&gt;tried wider nets&lt;/b&gt;" in page and "<b>tried" not in page, "notes are escaped"


def test_stop(writer, sqlite_url):
    before = writer.get("/api/studies/w/summary").json()
    r = writer.post("/api/studies/w/stop", headers=AUTH)
    assert r.status_code == 200 and r.json()["stop_reason"] == "stopped from dashboard"
    study = optuna.load_study(study_name="w", storage=open_storage(sqlite_url))
    assert study.user_attrs["atml.stop_reason"] == "stopped from dashboard"
    after = writer.get("/api/studies/w/summary", params={"since": before["version"]}).json()
    assert after["changed"] is True and after["stop_reason"] == "stopped from dashboard"


def test_enqueue(writer, sqlite_url):
    r = writer.post("/api/studies/w/enqueue", json={"params": {"train.lr": 0.002, "model.family": "afnet",
                                                              "afnet.width": 5}, "note": "hand-picked"}, headers=AUTH)
    assert r.status_code == 201, r.text
    number = r.json()["number"]
    study = optuna.load_study(study_name="w", storage=open_storage(sqlite_url))
    t = study.trials[number]
    assert t.state == optuna.trial.TrialState.WAITING
    assert t.system_attrs["fixed_params"] == {"train.lr": 0.002, "model.family": "afnet", "afnet.width": 5}
    assert writer.get("/api/studies/w/summary").json()["counts"]["WAITING"] == 1
    assert writer.get(f"/api/studies/w/trials/{number}").json()["notes"][0]["text"] == "hand-picked"
    bad = [
        {"params": {}},
        {"params": {"train.nope": 1}},
        {"params": {"train.lr": 0.5}},
        {"params": {"train.lr": "fast"}},
        {"params": {"train.lr": True}},
        {"params": {"model.family": "transformer"}},
        {"params": {"model.family": "sepnet", "afnet.width": 5}},
        {"params": {"afnet.width": 4.5}},
        {"params": {"afnet.width": 5, "sepnet.depth": 2}},
        {"params": [1, 2]},
    ]
    for body in bad:
        r = writer.post("/api/studies/w/enqueue", json=body, headers=AUTH)
        assert r.status_code == 422, (body, r.status_code, r.text)
    assert len(optuna.load_study(study_name="w", storage=open_storage(sqlite_url)).trials) == len(study.trials)


def test_clear_avoid(writer, sqlite_url):
    study = optuna.load_study(study_name="w", storage=open_storage(sqlite_url))
    for n in (1, 2):
        study.set_user_attr(f"atml.avoid.{n}", json.dumps({"trial": n, "params": {"train.lr": 0.001},
                                                           "reason": "below", "metrics": {}}))
    study.set_user_attr("atml.avoid.9", None)
    writer.app.state.ctx.reader.invalidate("w")
    assert len(writer.get("/api/studies/w/avoid").json()) == 2
    r = writer.request("DELETE", "/api/studies/w/avoid", headers=AUTH)
    assert r.status_code == 200 and r.json()["cleared"] == 2
    attrs = optuna.load_study(study_name="w", storage=open_storage(sqlite_url)).user_attrs
    assert {k: v for k, v in attrs.items() if k.startswith("atml.avoid.")} == {
        "atml.avoid.1": None, "atml.avoid.2": None, "atml.avoid.9": None}
    assert writer.get("/api/studies/w/avoid").json() == []
    assert "the avoid list is empty" in writer.get("/studies/w").text


def test_enqueue_searched_preprocessing(writer, sqlite_url):
    study = make_study(sqlite_url, "pre", n=2)
    raw = json.loads(study.user_attrs["atml.space"])["raw"]
    raw["data"]["bandpass"] = {"type": "categorical", "choices": [None, [0.5, 40.0]]}
    raw["data"]["window"] = {"type": "categorical", "choices": [2.5, 5.0]}
    study.set_user_attr("atml.space", json.dumps({"source": "space.yaml", "raw": raw}))
    writer.app.state.ctx.reader.invalidate("pre")
    # list choices are stored in the study as JSON text, so that is what a queued trial names
    r = writer.post("/api/studies/pre/enqueue", json={"params": {"data.bandpass": "[0.5, 40.0]", "data.window": 5.0}},
                    headers=AUTH)
    assert r.status_code == 201, r.text
    for bad in ({"data.bandpass": [0.5, 40.0]}, {"data.bandpass": "[1, 30]"}, {"data.window": 7.5}):
        r = writer.post("/api/studies/pre/enqueue", json={"params": bad}, headers=AUTH)
        assert r.status_code == 422, (bad, r.text)
    assert r.json()["detail"].startswith("params.data.window: must be one of [2.5, 5.0]")


def test_enqueue_without_a_readable_space(writer, sqlite_url):
    """No stored space, or one this version rejects: the trials' distributions say what is known."""
    make_study(sqlite_url, "nospace", n=2, space=False)
    old = make_study(sqlite_url, "old", n=2)
    raw = json.loads(old.user_attrs["atml.space"])["raw"]
    old.set_user_attr("atml.space", json.dumps({"source": "space.yaml", "raw": {**raw, "retired_section": {}}}))
    for name in ("nospace", "old"):
        writer.app.state.ctx.reader.invalidate(name)
        ok = writer.post(f"/api/studies/{name}/enqueue", json={"params": {"afnet.width": 6}}, headers=AUTH)
        assert ok.status_code == 201, (name, ok.text)
        r = writer.post(f"/api/studies/{name}/enqueue", json={"params": {"afnet.width": 7}}, headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"] == "params.afnet.width: must be in [4, 6], got 7", r.text
