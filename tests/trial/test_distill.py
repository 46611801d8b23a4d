"""Knowledge distillation (train.distill) on real ECG: a trained teacher, its ONNX export, bad settings."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from _helpers import small_space

from atml.config import TrialConfig, space_from_dict
from atml.data import DataSpec
from atml.errors import SpaceError
from atml.models import build_model
from atml.train import TrainConfig, fit
from atml.trial import load_checkpoint, prepare_data, save_checkpoint
from atml.trial.distill import distill_loss, load_teacher, prepare

HP = {"width": 6, "depth": 2}


def _search(space: Path, url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atml", "search", "--space", str(space), "--storage", url,
                           "--workers", "1", "--no-progress"], capture_output=True, text=True, timeout=600)


def _txt_space(name: str, txt_sample: Path, epochs: int = 1, **data: object) -> dict:
    raw = small_space(name, n_trials=1, epochs=epochs)
    raw["data"] = {"path": str(txt_sample), "val_fraction": 0.34, "split_seed": 0, **data}
    raw["model"] = {"families": {"afnet": dict(HP)}}
    return raw


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, txt_sample):
    """A one-trial afnet study on the IESD text segments (2 epochs), made by atml search, and its
    network-input ONNX export."""
    tmp = tmp_path_factory.mktemp("teacher")
    space = tmp / "t.yaml"
    raw = _txt_space("teach", txt_sample, epochs=2)
    raw["model"] = {"families": {"afnet": {"width": 8, "depth": 3}}}
    space.write_text(yaml.safe_dump(raw))
    url = f"sqlite:///{tmp}/t.db"
    r = _search(space, url)
    assert r.returncode == 0, r.stderr[-2000:]
    onnx = tmp / "teacher.onnx"
    r = subprocess.run([sys.executable, "-m", "atml", "export", "--study", "teach", "--storage", url, "--out",
                        str(onnx), "--no-preprocessing"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return url, tmp / "teach" / "trials" / "00000" / "model.pt", onnx


@pytest.fixture(scope="module")
def txt_data(tmp_path_factory, txt_sample):
    spec = DataSpec(path=str(txt_sample), val_fraction=0.34, split_seed=0)
    return prepare_data(spec, tmp_path_factory.mktemp("cache"))


def test_loss_is_the_formula_and_alpha_zero_is_the_plain_loss():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    y = torch.randint(0, 2, (8,), generator=g)
    hard = torch.nn.functional.cross_entropy(s, y)
    p = torch.softmax(t / 3, 1)
    kl = (p * (torch.log(p) - torch.log_softmax(s / 3, 1))).sum(1).mean()
    assert torch.allclose(distill_loss(s, hard, t, 0.7, 3.0), 0.3 * hard + 0.7 * 9 * kl, atol=1e-6)
    assert distill_loss(s, hard, t, 0.0, 3.0) is hard
    assert torch.allclose(distill_loss(s, hard, s, 1.0, 2.0), torch.zeros(()), atol=1e-6)  # own targets: no KL
    ml = torch.randint(0, 2, (8, 2), generator=g).float()
    hard_ml = torch.nn.functional.binary_cross_entropy_with_logits(s, ml)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s / 3, torch.sigmoid(t / 3))
    assert torch.allclose(distill_loss(s, hard_ml, t, 0.5, 3.0, "multilabel"), 0.5 * hard_ml + 0.5 * 9 * bce)


def _fit_once(data, dist: dict | None) -> dict[str, torch.Tensor]:
    cfg = TrainConfig(epochs=1, batch_size=32, seed=5, distill=dist)
    torch.manual_seed(5)
    model = build_model("afnet", in_channels=data.n_leads, n_classes=2, **HP)
    hook = prepare(TrialConfig(train=cfg, family="afnet", hparams=HP), data)
    res = fit(model, data.x_train, data.y_train, data.x_val, data.y_val, cfg, distill=hook)
    return res.state_dict


def test_alpha_zero_trains_exactly_as_without_distillation(teacher, txt_data):
    _, pt, _ = teacher
    plain = _fit_once(txt_data, None)
    zero = _fit_once(txt_data, {"teacher": str(pt), "source": str(pt), "alpha": 0.0, "temperature": 3.0})
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    taught = _fit_once(txt_data, {"teacher": str(pt), "source": str(pt), "alpha": 0.7, "temperature": 3.0})
    assert any(not torch.equal(plain[k], taught[k]) for k in plain if plain[k].is_floating_point())


def test_onnx_teacher_gives_the_checkpoints_soft_targets(teacher, txt_data):
    _, pt, onnx = teacher
    a, b = load_teacher(str(pt)), load_teacher(str(onnx))
    assert b.meta["kind"] == "onnx" and b.meta["samples"] == a.meta["samples"] == txt_data.n_samples
    la, lb = a.logits(txt_data.x_train), b.logits(txt_data.x_train)
    assert la.shape == (len(txt_data.x_train), 2)
    assert torch.allclose(la, lb, atol=1e-4), float((la - lb).abs().max())


def test_student_space_distils_the_trained_teacher(teacher, txt_sample, tmp_path):
    url, pt, _ = teacher
    raw = _txt_space("student", txt_sample, epochs=1)
    raw["train"]["augment"] = 0.5  # the teacher then runs on each augmented batch
    raw["train"]["distill"] = {"teacher": str(pt), "alpha": 0.7,
                               "temperature": {"type": "float", "low": 2.0, "high": 4.0}}
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(raw))
    r = _search(space, url)
    assert r.returncode == 0, r.stderr[-2000:]
    t = optuna.load_study(study_name="student", storage=url).trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE
    d = t.user_attrs["distill"]
    assert d["teacher"] == str(pt) and d["alpha"] == 0.7 and d["kind"] == "pt" and d["members"] == 1
    assert d["temperature"] == t.params["train.distill.temperature"] and d["targets"].startswith("on each")
    _, ck = load_checkpoint(pt.parent.parent.parent.parent / "student" / t.user_attrs["checkpoint"])
    assert ck["distill"] == d
    out = tmp_path / "student.onnx"
    r = subprocess.run([sys.executable, "-m", "atml", "export", "--study", "student", "--storage", url, "--out",
                        str(out), "--artifacts", str(pt.parent.parent.parent.parent)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(Path(f"{out}.json").read_text())["fit"]["distilled_from"]["alpha"] == 0.7
    r = subprocess.run([sys.executable, "-m", "atml", "export", "--study", "student", "--storage", url, "--out",
                        str(tmp_path / "r.onnx"), "--artifacts", str(pt.parent.parent.parent.parent), "--refit"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "distilled" in r.stderr and not (tmp_path / "r.onnx").exists()


def test_a_study_trial_teacher_resolves_to_its_checkpoint(teacher, txt_sample):
    url, pt, _ = teacher
    raw = _txt_space("s2", txt_sample)
    raw["train"]["distill"] = {"teacher": "teach:0", "storage": url}
    space = space_from_dict(raw)
    assert space.distill.teacher == str(pt.resolve()) and space.distill.fixed == {"alpha": 0.5, "temperature": 4.0}
    assert space.raw["train"]["distill"]["teacher"] == str(pt.resolve())


def test_fold_models_teach_with_their_mean_logits(teacher, txt_data, tmp_path):
    _, pt, _ = teacher
    m, ck = load_checkpoint(pt)
    other = build_model("afnet", in_channels=1, n_classes=2, **ck["hparams"]).eval()
    folds = [{"state_dict": ck["state_dict"], "held_subjects": []},
             {"state_dict": other.state_dict(), "held_subjects": []}]
    path = save_checkpoint(tmp_path / "cv.pt", family="afnet", hparams=ck["hparams"], data=txt_data,
                           state_dict=ck["state_dict"], params=ck["params"], trial=0, study="cv", metrics={},
                           folds=folds)
    x = txt_data.x_val[:16]
    with torch.no_grad():
        want = (m(x) + other(x)) / 2
    got = load_teacher(str(path))
    assert got.meta["members"] == 2 and torch.allclose(got.logits(x), want, atol=1e-6)


def test_a_cross_validation_fold_is_taught_by_the_teachers_model_of_the_same_fold(teacher, txt_data, tmp_path):
    """A CV teacher's fold model that held out a student fold's subjects teaches that fold
    alone: no held-out subject reaches the student through its teacher."""
    from atml.trial.distill import Distiller

    _, pt, _ = teacher
    m, ck = load_checkpoint(pt)
    other = build_model("afnet", in_channels=1, n_classes=2, **ck["hparams"]).eval()
    folds = [{"state_dict": ck["state_dict"], "held_subjects": ["S1"]},
             {"state_dict": other.state_dict(), "held_subjects": ["S36", "S19"]}]
    path = save_checkpoint(tmp_path / "cvf.pt", family="afnet", hparams=ck["hparams"], data=txt_data,
                           state_dict=ck["state_dict"], params=ck["params"], trial=0, study="cv", metrics={},
                           folds=folds)
    hook = Distiller(load_teacher(str(path)), 0.5, 2.0, "binary", "cvf.pt")
    x = txt_data.x_val[:8]
    with torch.no_grad():
        assert torch.allclose(hook.for_fold(("S19", "S36")).teacher.logits(x), other(x), atol=1e-6)
        assert torch.allclose(hook.for_fold(("S1",)).teacher.logits(x), m(x), atol=1e-6)
    assert hook.for_fold(("S1", "S19")) is hook  # no such fold: the whole teacher, with a warning
    assert "held out the same subjects" in hook.record["cv_folds"]


def _three_class(tmp_path: Path, txt_data) -> Path:
    data = copy.copy(txt_data)
    data.classes = ("N", "AFIB", "other")
    model = build_model("afnet", in_channels=1, n_classes=3, **HP)
    return save_checkpoint(tmp_path / "three.pt", family="afnet", hparams=HP, data=data,
                           state_dict=model.state_dict(), params={}, trial=0, study="x", metrics={})


@pytest.mark.parametrize("setting, field", [
    ({"teacher": "missing.pt"}, "train.distill.teacher"),
    ({"teacher": "missing.onnx"}, "train.distill.teacher"),
    ({"teacher": "PT", "alpha": 1.5}, "train.distill.alpha"),
    ({"teacher": "PT", "temperature": 0}, "train.distill.temperature"),
    ({"teacher": "PT", "alpha": {"type": "float", "low": 0.5, "high": 1.2}}, "train.distill.alpha"),
    ({"teacher": "PT", "beta": 1}, "train.distill"),
])
def test_bad_settings_name_the_field(setting, field, teacher, txt_sample, tmp_path):
    _, pt, _ = teacher
    raw = _txt_space("bad", txt_sample)
    raw["train"]["distill"] = {k: (str(pt) if v == "PT" else v) for k, v in setting.items()}
    with pytest.raises(SpaceError, match=field.replace(".", r"\.")):
        space_from_dict(raw, base_dir=tmp_path)


def test_a_teacher_with_other_classes_or_input_fails_in_the_cli(teacher, txt_data, txt_sample, tmp_path):
    url, pt, onnx = teacher
    three = _three_class(tmp_path, txt_data)
    cases = [
        (_txt_space("bad1", txt_sample), str(three), "classes ['N', 'AFIB', 'other']"),
        (_txt_space("bad2", txt_sample, target_fs=125), str(pt), "1250 samples at 250 Hz"),
        (_txt_space("bad3", txt_sample, target_fs=125), str(onnx), "625 samples at 125 Hz"),
    ]
    db = tmp_path / "bad.db"
    for i, (raw, src, text) in enumerate(cases):
        raw["train"]["distill"] = {"teacher": src, "alpha": 0.5}
        space = tmp_path / f"bad{i}.yaml"
        space.write_text(yaml.safe_dump(raw))
        r = _search(space, f"sqlite:///{db}")
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "train.distill.teacher" in lines[0] and text in lines[0], r.stderr
    assert not db.exists()


def test_a_raw_input_onnx_teacher_is_refused(teacher, txt_sample, tmp_path):
    url, _, _ = teacher
    out = tmp_path / "raw.onnx"
    r = subprocess.run([sys.executable, "-m", "atml", "export", "--study", "teach", "--storage", url, "--out",
                        str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    raw = _txt_space("rawt", txt_sample)
    raw["train"]["distill"] = {"teacher": str(out)}
    with pytest.raises(SpaceError, match="train.distill.teacher: .*--no-preprocessing"):
        space_from_dict(raw)


def test_the_shipped_distillation_space_validates():
    from atml.config import load_space

    root = Path(__file__).resolve().parents[2]
    space = load_space(root / "search_spaces" / "afib_iesd_distill.yaml")
    assert space.distill is not None and space.distill.teacher.endswith("best.onnx")
    assert space.study.constraints.get("max_int8_kb") == 16


def test_a_cross_validated_student_is_taught_in_every_fold(teacher, txt_data, txt_sample, tmp_path):
    from atml.search.strategy import make_pruner
    from atml.trial import Objective

    _, pt, _ = teacher
    raw = _txt_space("cvs", txt_sample)
    raw["data"]["test_fraction"] = 0
    raw["validation"] = {"scheme": "subject_kfold", "folds": 3}
    raw["train"]["distill"] = {"teacher": str(pt), "alpha": 0.5, "temperature": 2.0}
    space = space_from_dict(raw)
    data = prepare_data(DataSpec(path=str(txt_sample), val_fraction=0.34, test_fraction=0.0), tmp_path / "c")
    study = optuna.create_study(direction="maximize", pruner=make_pruner(space.study, 1, folds=3))
    study.optimize(Objective(space, data, tmp_path), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs
    assert t.user_attrs["distill"]["targets"].startswith("on each") and len(t.user_attrs["folds"]) == 3
