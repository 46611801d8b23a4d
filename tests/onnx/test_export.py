"""`atml export` / `atml evaluate` end to end: a real tiny search (conftest), real ONNX files, real ECG."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from atml.cli import main
from atml.data import DataSpec, load_dataset
from atml.errors import ExportError
from atml.models import build_model
from atml.onnx.convert import export_onnx, onnx_size_kb
from atml.onnx.export import export_trial, write_files
from atml.onnx.runtime import ort_session, softmax
from atml.onnx.sidecar import sidecar_path
from atml.trial import load_checkpoint

pytestmark = pytest.mark.slow

STUDY = "exp"  # the name of the conftest's study
METRICS = {"f1", "accuracy", "precision", "recall", "auroc"}


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def exported(study, atml_cmd_module) -> SimpleNamespace:
    assert study.name == STUDY
    out = study.root / "out"
    out.mkdir()
    r = _run([*atml_cmd_module, "export", "--storage", study.url, "--study", STUDY, "--out",
              str(out / "best.onnx"), "--int8"])
    assert r.returncode == 0, r.stderr[-2000:]
    return SimpleNamespace(stdout=r.stdout, stderr=r.stderr, model=out / "best.onnx",
                           int8=out / "best.int8.onnx", side=json.loads((out / "best.onnx.json").read_text()),
                           int8_side=json.loads((out / "best.int8.onnx.json").read_text()))


@pytest.fixture(scope="module")
def real_x(txt_sample, tmp_path_factory) -> np.ndarray:
    """z-scored real IESD segments (N, 1, 1250)."""
    ds = load_dataset(DataSpec(path=str(txt_sample)), tmp_path_factory.mktemp("cache"))
    return np.array(ds.x[:64], dtype=np.float32)  # a writable copy of the memmap


@pytest.fixture(scope="module")
def raw_x(txt_sample, tmp_path_factory) -> np.ndarray:
    """The same IESD segments as the source has them (not normalised): what the raw graph takes."""
    ds = load_dataset(DataSpec(path=str(txt_sample), normalize="none"), tmp_path_factory.mktemp("cache"))
    return np.array(ds.x[:64], dtype=np.float32)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("atml: error: ")
    return err[0]


# --------------------------------------------------------------------------- export


def test_export_prints_parity_and_passes_checker(exported):
    m = re.search(r"parity vs torch on (\d+) validation segments: max \|diff\| (\S+)", exported.stdout)
    assert m, exported.stdout
    assert int(m.group(1)) == exported.side["validation"]["segments"] and float(m.group(2)) < 1e-4
    assert exported.stderr.strip() == ""
    model = onnx.load(exported.model)
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (inp,), outs = model.graph.input, model.graph.output
    assert inp.name == "ecg" and [o.name for o in outs] == ["logits", "probabilities"]
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 1250]
    assert exported.model.stat().st_mode & 0o044, "files keep umask permissions"
    m = re.search(r"raw graph vs Python preprocessing \+ torch on (\d+) validation items: max \|probability diff\| "
                  r"(\S+)", exported.stdout)
    assert m and int(m.group(1)) == exported.side["validation"]["segments"] and float(m.group(2)) < 1e-4
    assert "input ecg [batch, 1, 1250] float32 raw @ 250 Hz, outputs logits [batch, 2], probabilities" \
        in exported.stdout and "preprocessing in the graph: z-score per lead" in exported.stdout


def test_dynamic_batch_matches_torch_on_real_segments(exported, study, real_x, raw_x):
    """The raw graph takes the segments as the source has them and normalises them itself."""
    import torch

    model, _ = load_checkpoint(study.checkpoint)
    session = ort_session(exported.model)
    for batch in (1, 7):
        logits, probs = session.run(None, {"ecg": raw_x[:batch]})
        with torch.no_grad():
            expected = model(torch.from_numpy(real_x[:batch])).numpy()
        assert logits.shape == probs.shape == (batch, 2)
        assert np.abs(logits - expected).max() < 1e-4
        assert np.abs(probs - softmax(expected.astype(np.float64))).max() < 1e-4


def test_sidecar_contents(exported, study):
    s, best = exported.side, study.best
    assert s["input"] == {"name": "ecg", "kind": "raw", "shape": ["batch", 1, 1250], "leads": 1, "samples": 1250,
                          "fs": 250, "lead_names": [], "dtype": "float32"}
    assert s["network"] == {"shape": ["batch", 1, 1250], "leads": 1, "samples": 1250, "fs": 250, "lead_names": [],
                            "size_bytes": s["network"]["size_bytes"], "size_kb": s["network"]["size_kb"]}
    # the raw graph's tensor names are shortened: with only a z-score in front it can be the smaller file
    assert s["network"]["size_bytes"] > 0 and 0 < s["preprocessing"]["graph"]["size_bytes"] < 2000
    assert s["output"]["name"] == "logits" and s["output"]["shape"] == ["batch", 2]
    assert s["probabilities"] == {"name": "probabilities", "shape": ["batch", 2],
                                  "meaning": "softmax of the logits: class probabilities"}
    assert s["preprocessing"]["in_graph"] is True and s["preprocessing"]["graph"]["normalize"] == "zscore"
    assert s["parity"]["raw"]["max_prob_diff"] < 1e-4 and s["parity"]["raw"]["training_match"] is None
    assert s["fs"] == 250 and s["preprocessing"]["normalize"] == "zscore"
    assert s["preprocessing"]["segment_length"] == 1250
    assert s["classes"] == ["non-AFIB", "AFIB"] and s["positive_class"] == "AFIB"
    assert s["positive_labels"] == ["AFIB"] and s["drop_labels"] == ["UNK"]
    assert set(s["metrics"]["float"]) >= METRICS and set(s["metrics"]["int8"]) >= METRICS
    # the ONNX model scores exactly what torch scored on the same validation split
    assert s["metrics"]["float"]["f1"] == pytest.approx(best.user_attrs["metrics"]["f1"])
    assert s["trial"]["number"] == best.number and s["trial"]["params"] == best.params
    assert s["study"] == STUDY and s["n_params"] == best.user_attrs["n_params"] and s["opset"] == 17
    blob = exported.model.read_bytes()
    assert s["size_bytes"] == len(blob) and s["size_kb"] == pytest.approx(len(blob) / 1024, abs=0.01)
    assert s["sha256"] == hashlib.sha256(blob).hexdigest()
    assert s["parity"]["max_abs_diff"] < 1e-4 and s["precision"] == "float32"
    q = exported.int8_side
    assert q["precision"] == "int8" and q["sha256"] == hashlib.sha256(exported.int8.read_bytes()).hexdigest()
    assert q["quantization"]["method"].startswith("onnxruntime static") and q["metrics"] == s["metrics"]
    assert s["fit"]["mode"] == "checkpoint" and s["validation"]["held_out"] is True


def _export_json(study, out: Path, *extra: str) -> dict:
    rc = main(["export", "--storage", study.url, "--study", STUDY, "--out", str(out), "--json", *extra])
    assert rc == 0
    return json.loads(sidecar_path(out).read_text())


def test_ensemble_export_is_one_verified_model_and_reproducible(study, exported, tmp_path, capsys):
    a = _export_json(study, tmp_path / "ens.onnx", "--ensemble", "2")
    b = _export_json(study, tmp_path / "again.onnx", "--ensemble", "2")
    capsys.readouterr()
    single = exported.side
    assert a["fit"]["mode"] == "ensemble" and a["fit"]["members"] == 2 and a["fit"]["subjects"] == "train"
    assert a["n_params"] == 2 * single["n_params"] and a["size_bytes"] > 1.8 * single["size_bytes"]
    assert a["parity"]["max_abs_diff"] < 1e-4 and a["validation"]["held_out"] is True
    # same study, trial and K: the same seeds, the same weights, byte for byte
    assert a["fit"]["seeds"] == b["fit"]["seeds"] and a["sha256"] == b["sha256"]
    # member 0 is the trial's checkpoint, member 1 a second seed: the mean differs from either
    x = np.random.default_rng(0).standard_normal((8, 1, 1250)).astype(np.float32)
    (ens,) = ort_session(tmp_path / "ens.onnx").run(["logits"], {"ecg": x})
    (one,) = ort_session(exported.model).run(["logits"], {"ecg": x})
    assert ens.shape == one.shape == (8, 2) and not np.allclose(ens, one, atol=1e-3)


def test_refit_trains_on_train_and_validation_subjects_only(study, exported, tmp_path, capsys):
    rc = main(["export", "--storage", study.url, "--study", STUDY, "--out", str(tmp_path / "refit.onnx"),
               "--refit"])
    out = capsys.readouterr().out
    assert rc == 0
    s = json.loads(sidecar_path(tmp_path / "refit.onnx").read_text())
    assert "refit: 1 member(s) trained on train+validation subjects" in out and "in-sample after refit" in out
    fit = s["fit"]
    assert fit["mode"] == "refit" and fit["epochs"] == study.best.user_attrs["best_epoch"] + 1
    assert s["validation"]["held_out"] is False
    # every training and validation segment (8 subjects x 16), never a test subject's
    assert s["test"]["segments"] > 0 and fit["segments"] == 8 * 16 - s["test"]["segments"]
    assert fit["segments"] > s["validation"]["segments"] + s["test"]["segments"]
    assert s["sha256"] != exported.side["sha256"] and s["parity"]["max_abs_diff"] < 1e-4


def test_int8_model_runs_scores_and_is_smaller(exported, raw_x):
    onnx.checker.check_model(onnx.load(exported.int8))
    session = ort_session(exported.int8)
    logits, probs = session.run(None, {"ecg": raw_x[:3]})
    assert logits.shape == probs.shape == (3, 2) and np.isfinite(logits).all()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert exported.int8.stat().st_size < exported.model.stat().st_size
    assert exported.int8_side["size_bytes"] == exported.int8.stat().st_size
    m = exported.int8_side["metrics"]["int8"]
    assert all(m[k] is None or 0.0 <= m[k] <= 1.0 for k in METRICS)
    assert "int8 ->" in exported.stdout and "int8 validation: f1" in exported.stdout


def test_onnx_size_kb_matches_export_and_is_fast(study, exported):
    model, ck = load_checkpoint(study.checkpoint)
    onnx_size_kb(model, 1, 1250)  # first call pays the exporter's one-off set-up
    t = time.perf_counter()
    kb = onnx_size_kb(model, 1, 1250)
    took = time.perf_counter() - t
    # Measured on the model as built (before training), it is the trained network's export size exactly.
    assert round(kb, 2) == exported.side["network"]["size_kb"]
    assert took < 1.5, f"onnx_size_kb took {took:.2f} s"
    model.train()
    onnx_size_kb(model, 1, 1250)
    assert model.training, "the model's mode is restored"


def test_trial_size_is_the_exported_size(study, exported):
    """The trial's ONNX KB (measured before training, shown in the summary and dashboard) is
    the exported network's float size, to the same two decimals; the raw graph adds its
    preprocessing to the file."""
    assert study.best.user_attrs["onnx_kb"] == exported.side["network"]["size_kb"]
    assert f"({exported.side['size_kb']:.1f} KB; network alone {exported.side['network']['size_kb']:.1f} KB" \
        in exported.stdout


def test_export_on_real_data_and_no_partial_files(study, txt_sample, tmp_path):
    out = tmp_path / "real.onnx"
    sidecar_path(out).mkdir()  # makes the last step (renaming into place) fail
    with pytest.raises(ExportError, match=r"cannot write .*real\.onnx\.json"):
        export_trial(study.url, STUDY, out, data_path=str(txt_sample))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real.onnx.json"], "no model, no temp files"
    sidecar_path(out).rmdir()
    res = export_trial(study.url, STUDY, out, data_path=str(txt_sample))
    s = res.sidecar
    assert s["validation"]["source"] == str(txt_sample) and s["parity"]["max_abs_diff"] < 1e-4
    assert s["validation"]["segments"] == s["parity"]["segments"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real.onnx", "real.onnx.json"]


# --------------------------------------------------------------------------- evaluate


def test_evaluate_json_on_real_ecg(exported, txt_sample, atml_cmd_module):
    r = _run([*atml_cmd_module, "evaluate", "--model", str(exported.model), "--data", str(txt_sample),
              "--json", "--runs", "50"])
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert d["segments"] == 344 and d["subjects"] == 3 and d["format"] == "iesd_txt"
    assert set(d["metrics"]) == METRICS
    (tn, fp), (fn, tp) = d["confusion"]["matrix"]
    assert tn + fp + fn + tp == 344 and fn + tp == 90  # 90 AFIB segments in the sample
    rows = d["per_subject"]
    assert [r["subject"] for r in rows] == ["S1", "S19", "S36"]
    assert sum(r["segments"] for r in rows) == 344 and sum(r["positives"] for r in rows) == 90
    lat = d["latency"]
    assert lat["batch"] == 1 and lat["threads"] == 1 and lat["runs"] == 50
    assert 0 < lat["p50_ms"] <= lat["p95_ms"] and lat["mean_ms"] > 0
    assert d["size_bytes"] == exported.model.stat().st_size and d["sha256_matches_sidecar"] is True


def test_evaluate_text_report_int8(exported, txt_sample, capsys):
    rc = main(["evaluate", "--model", str(exported.int8), "--data", str(txt_sample), "--batch-latency",
               "--runs", "30"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "344 segments, 3 subjects" in out and "(int8," in out
    assert re.search(r"test: +f1 [\d.]+ +accuracy [\d.]+ +precision [\d.]+ +recall [\d.]+ +auroc", out)
    assert "confusion (rows true, columns predicted)" in out
    for subj in ("S1", "S19", "S36"):
        assert re.search(rf"^ +{subj} +\d+ +\d+ ", out, re.M), out
    assert re.search(r"batch 1, 1 thread: mean [\d.]+ ms +p95 [\d.]+ ms", out)
    assert "batch 16" in out and "batch 128" in out


# --------------------------------------------------------------------------- bad inputs


def test_unknown_study_one_line_exit_2(study, atml_cmd_module, tmp_path):
    r = _run([*atml_cmd_module, "export", "--storage", study.url, "--study", "nope", "--out",
              str(tmp_path / "x.onnx")])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "study 'nope' not found" in lines[0] and STUDY in lines[0], r.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("extra", "expect"), [
    (["--trial", "99"], r"no trial #99 \(trials: 0\.\.2\)"),
    (["--trial", "PRUNED"], r"trial #\d+ of study 'exp' is PRUNED and has no checkpoint"),
    (["--artifacts", "EMPTY"], r"checkpoint of trial #\d+ not found on this machine: .*model\.pt"),
    (["--data", "MISSING"], r"data path .*missing-data of study 'exp' does not exist on this machine"),
    (["--ensemble", "0"], r"--ensemble must be >= 1 \(got 0\)"),
])
def test_export_bad_inputs(study, tmp_path, capsys, extra, expect):
    extra = [{"PRUNED": str(study.pruned), "EMPTY": str(tmp_path), "MISSING": str(tmp_path / "missing-data")}
             .get(a, a) for a in extra]
    rc = main(["export", "--storage", study.url, "--study", STUDY, "--out", str(tmp_path / "x.onnx"), *extra])
    assert rc == 2
    assert re.search(expect, _one_error_line(capsys))
    assert not (tmp_path / "x.onnx").exists()


def test_export_missing_storage(tmp_path, capsys):
    rc = main(["export", "--storage", f"sqlite:///{tmp_path}/none.db", "--study", STUDY, "--out",
               str(tmp_path / "x.onnx")])
    assert rc == 2 and "no such database file" in _one_error_line(capsys)


def _write_model(path: Path, blob: bytes, side: dict, **changes) -> Path:
    s = json.loads(json.dumps(side))
    for section, fields in changes.items():
        s[section].update(fields)
    write_files({sidecar_path(path): json.dumps(s).encode(), path: blob})
    return path


def test_evaluate_bad_inputs(exported, txt_sample, tmp_path, capsys):
    def err(model: Path) -> str:
        assert main(["evaluate", "--model", str(model), "--data", str(txt_sample)]) == 2
        return _one_error_line(capsys)

    assert f"model file not found: {tmp_path / 'gone.onnx'}" in err(tmp_path / "gone.onnx")

    lone = tmp_path / "lone.onnx"
    shutil.copy(exported.model, lone)
    assert f"sidecar {lone}.json not found" in err(lone)

    junk = _write_model(tmp_path / "junk.onnx", b"not an onnx model", exported.side)
    assert f"{junk}: not a valid ONNX model" in err(junk)

    twelve = export_onnx(build_model("afnet", in_channels=12, n_classes=2, width=4, depth=2), 12, 1250)
    m12 = _write_model(tmp_path / "m12.onnx", twelve, exported.side,
                       input={"leads": 12, "shape": ["batch", 12, 1250]})
    msg = err(m12)
    assert "segments [1, 1250]" in msg and "expects [batch, 12, 1250]" in msg

    long = export_onnx(build_model("afnet", in_channels=1, n_classes=2, width=4, depth=2), 1, 2500)
    m2500 = _write_model(tmp_path / "m2500.onnx", long, exported.side,
                         input={"samples": 2500, "shape": ["batch", 1, 2500]},
                         preprocessing={"segment_length": 2500})
    msg = err(m2500)
    assert "1250 samples, expected 2500" in msg and "expects [batch, 1, 2500]" in msg

    assert main(["evaluate", "--model", str(exported.model), "--data", str(tmp_path / "nothing")]) == 2
    assert "data path does not exist" in _one_error_line(capsys)

    # imperfect data: the message names the file and says nothing of the model's input shape
    bad = tmp_path / "imperfect"
    shutil.copytree(txt_sample, bad)
    files = sorted(bad.iterdir())
    files[0].write_bytes(b"\xff\xfe not text")
    (bad / "notes.txt").write_text("1.0\n")
    assert main(["evaluate", "--model", str(exported.model), "--data", str(bad)]) == 2
    msg = _one_error_line(capsys)
    assert files[0].name in msg and "not UTF-8" in msg and "expects [batch" not in msg
    (bad / "notes.txt").unlink()
    # --on-bad skip scores the rest and says what it skipped
    assert main(["evaluate", "--model", str(exported.model), "--data", str(bad), "--on-bad", "skip", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["skipped"] == 1 and out["segments"] == len(files) - 1


def test_evaluate_on_the_held_out_test_subjects(tmp_path, write_space, atml_cmd, txt_sample):
    """A study with a test split records its test subjects; evaluate scores exactly those."""
    import json as _json

    from _helpers import small_space as _small

    raw = _small("heldout", n_trials=1, epochs=1)
    raw["data"] = {"path": str(txt_sample), "val_fraction": 0.3, "test_fraction": 0.3, "split_seed": 0}
    p = write_space(raw)
    url = f"sqlite:///{tmp_path}/h.db"
    r = subprocess.run([*atml_cmd, "search", "--space", str(p), "--storage", url, "--workers", "1", "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "h.onnx"
    r = subprocess.run([*atml_cmd, "export", "--storage", url, "--study", "heldout", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    side = _json.loads(Path(f"{out}.json").read_text())
    test_subjects = side["test"]["subjects"]
    assert len(test_subjects) == 1 and test_subjects[0] not in side["validation"]["subjects"]
    r = subprocess.run([*atml_cmd, "evaluate", "--model", str(out), "--data", str(txt_sample), "--subjects", "test",
                        "--json", "--runs", "5"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    ev = _json.loads(r.stdout)
    assert ev["subjects"] == 1 and ev["segments"] == side["test"]["segments"]
    assert [row["subject"] for row in ev["per_subject"]] == test_subjects
    assert ev["validation_held_out"] is True
    # a refit on real segments: trained on every segment but the test subject's; evaluate then says the
    # validation figures it quotes from the sidecar are in-sample
    refit = tmp_path / "refit.onnx"
    r = subprocess.run([*atml_cmd, "export", "--storage", url, "--study", "heldout", "--out", str(refit), "--refit"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rs = _json.loads(Path(f"{refit}.json").read_text())
    assert rs["fit"]["segments"] == 344 - side["test"]["segments"] and rs["validation"]["held_out"] is False
    r = subprocess.run([*atml_cmd, "evaluate", "--model", str(refit), "--data", str(txt_sample), "--subjects", "test",
                        "--runs", "5"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "in-sample: the refit trained on it" in r.stdout and f"{side['test']['segments']} segments" in r.stdout
