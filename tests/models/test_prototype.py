"""PrototypeClassifier (train.mode: comparator): every family wraps, rebuilds from a checkpoint dict and pairs draw right."""

from __future__ import annotations

import pytest
import torch

from atml.models import PrototypeClassifier, build_model, family_names, model_from_checkpoint
from atml.models.prototype import draw_partners


@pytest.mark.parametrize("family", family_names())
def test_every_family_wraps_into_a_prototype_classifier(family):
    torch.manual_seed(0)
    fam = build_model(family, in_channels=2, n_classes=3)
    dim = fam.head.fc.in_features
    model = PrototypeClassifier(fam, 3).eval()
    assert model.dim == dim and isinstance(model.encoder.head.fc, torch.nn.Identity)
    model.prototypes.copy_(torch.nn.functional.normalize(torch.rand(3, dim), dim=1))
    x = torch.randn(4, 2, 500)
    with torch.no_grad():
        z = model(x)
        assert z.shape == (4, 3) and float(z.abs().max()) <= float(model.scale) + 1e-4
    sd = model.state_dict()
    assert {"prototypes", "scale"} <= set(sd)
    ck = {"family": family, "in_channels": 2, "n_classes": 3, "hparams": {}, "head": "prototype", "state_dict": sd}
    again = model_from_checkpoint(ck)
    with torch.no_grad():
        assert isinstance(again, PrototypeClassifier) and torch.allclose(again(x), z)


def test_a_class_held_by_one_subject_pairs_within_it_and_no_subjects_means_no_constraint():
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    sub = torch.tensor([0, 0, 1, 1, 1, 1])  # class 0 in both subjects, class 1 only in subject 1
    anchors = torch.arange(6).repeat(50)
    p = draw_partners(y, anchors, torch.Generator().manual_seed(0), sub)
    same_class = y[p] == y[anchors]
    cross = sub[p] != sub[anchors]
    assert bool(cross[y[p] == 0].all())  # class 0 partners always come from the other subject
    assert bool((sub[p][y[p] == 1] == 1).all())  # class 1 only exists in subject 1
    assert 0.4 < float(same_class.float().mean()) < 0.6
    free = draw_partners(y, anchors, torch.Generator().manual_seed(0))
    assert not bool((sub[free] != sub[anchors])[y[free] == 0].all())  # without subjects, same-subject pairs occur
