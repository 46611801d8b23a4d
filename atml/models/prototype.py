"""Comparator learning (``train.mode: comparator``): an encoder trained on pairs, classes from prototypes.

The encoder is a family model with its final classifier ``nn.Linear`` replaced by the
identity, so it maps a segment to the pooled features that linear layer read. Training
(:func:`atml.train.fit`) shows it pairs of segments, same class or not, and pulls the
normalised embeddings of a same-class pair together and pushes a different-class pair
apart (:func:`pair_loss`). A class's prototype is the mean normalised embedding of its
training segments (:func:`class_prototypes`), and a segment's logits are its cosine
similarity to each prototype times a fixed scale: :class:`PrototypeClassifier` is a plain
classifier (``(B, C, T) -> (B, n_classes)`` logits), so export, evaluation and the gate
see no difference. The prototypes and the scale are persistent buffers: they are in the
state dict (the checkpoint) and constants of the ONNX graph.

The pooled features of every family follow a ReLU, so they are non-negative and two
embeddings' cosine lies in [0, 1]: a different-class pair is pushed below ``MARGIN``,
not towards -1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["MARGIN", "SCALE", "PrototypeClassifier", "classifier_linear", "class_prototypes", "pair_loss",
           "pair_sources", "draw_partners"]

MARGIN = 0.5  # a different-class pair costs max(0, cos - MARGIN)
SCALE = 10.0  # logits = SCALE * cos: a binary logit gap of up to 2 * SCALE


def classifier_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """The final classifier ``nn.Linear`` of a family model, as (parent module, attribute name, layer).

    Every family's ``head`` is a :class:`atml.models.blocks.ClassifierHead` whose ``fc`` is that
    layer; otherwise the last ``nn.Linear`` registered in the model is taken."""
    head = getattr(model, "head", None)
    fc = getattr(head, "fc", None)
    if isinstance(head, nn.Module) and isinstance(fc, nn.Linear):
        return head, "fc", fc
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to replace")
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, getattr(parent, attr)


class PrototypeClassifier(nn.Module):
    """``encoder`` (a family model, its final linear layer replaced by the identity) -> cosine
    similarity to the class prototypes (buffer ``[n_classes, dim]``) times ``scale`` -> logits."""

    def __init__(self, model: nn.Module, n_classes: int, scale: float = SCALE) -> None:
        super().__init__()
        parent, attr, fc = classifier_linear(model)
        setattr(parent, attr, nn.Identity())
        self.encoder = model
        self.dim = int(fc.in_features)
        self.register_buffer("prototypes", torch.zeros(n_classes, self.dim))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings ``(B, dim)`` of ``(B, C, T)`` segments."""
        return nn.functional.normalize(self.encoder(x).float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)``: ``scale`` times the cosine similarity to each prototype."""
        protos = nn.functional.normalize(self.prototypes, dim=1)
        return self.scale * self.embed(x) @ protos.t()

    def pair_loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """:func:`pair_loss` of a batch whose second half are the first half's partners."""
        half = len(xb) // 2
        emb = self.embed(xb)
        return pair_loss(emb[:half], emb[half:], yb[:half] == yb[half:])

    @torch.no_grad()
    def set_prototypes(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> None:
        """Set the prototypes to :func:`class_prototypes` of segments ``x`` with labels ``y``
        (in eval mode, without gradients; the train/eval mode is restored)."""
        was = self.training
        self.eval()
        emb = [self.embed(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        self.train(was)
        if emb:
            self.prototypes.copy_(class_prototypes(torch.cat(emb), y, len(self.prototypes)))


def pair_sources(model: nn.Module, y: torch.Tensor,
                 subjects: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What :func:`draw_partners` draws from for ``model`` and training labels ``y``: the CPU
    labels and integer subject codes (None when ``subjects`` names fewer than two subjects).
    A ValueError unless ``model`` is a :class:`PrototypeClassifier`."""
    if not isinstance(model, PrototypeClassifier):
        raise ValueError(f"train.mode comparator trains a PrototypeClassifier, got {type(model).__name__}")
    codes = None
    if subjects is not None and len(subjects) == len(y) and len(np.unique(subjects)) > 1:
        codes = torch.from_numpy(np.unique(np.asarray(subjects), return_inverse=True)[1].astype(np.int64))
    return y.cpu(), codes


def class_prototypes(emb: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The mean of each class's unit embeddings, normalised ``[n_classes, dim]``; a class with
    no segment gets a zero prototype (cosine 0 to everything)."""
    sums = torch.zeros(n_classes, emb.shape[1], dtype=emb.dtype, device=emb.device)
    sums.index_add_(0, y.to(emb.device).long(), emb)
    return nn.functional.normalize(sums, dim=1)


def pair_loss(a: torch.Tensor, b: torch.Tensor, same: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """Mean contrastive loss of unit embeddings ``a``/``b``: ``1 - cos`` for a same-class pair,
    ``max(0, cos - margin)`` for a different-class one (``cosine_embedding_loss``)."""
    target = same.to(a.dtype) * 2 - 1
    return nn.functional.cosine_embedding_loss(a.float(), b.float(), target.float(), margin=margin)


def draw_partners(y: torch.Tensor, anchors: torch.Tensor, gen: torch.Generator,
                  subjects: torch.Tensor | None = None) -> torch.Tensor:
    """A partner row of ``y`` for each anchor row: from the anchor's class or (equally likely)
    another class that has segments, uniformly among that class's rows of other subjects where
    ``subjects`` (one integer code per row, 0..S-1) names any, else among all of its rows.

    Everything is drawn on the CPU from ``gen``: the same generator state gives the same pairs.
    ``y`` and ``subjects`` are CPU tensors; the partners come back on the CPU.
    """
    y = y.long()
    a = anchors.cpu().long()
    sub = torch.zeros_like(y) if subjects is None else subjects.long()
    n_sub = int(sub.max()) + 1 if len(sub) else 1
    present = torch.unique(y)
    n_cls = int(present.max()) + 1
    # Rows sorted by class, then subject: a class's rows of one subject are one block.
    order = torch.argsort(y * n_sub + sub, stable=True)
    per = torch.bincount(y * n_sub + sub, minlength=n_cls * n_sub).view(n_cls, n_sub)
    counts = per.sum(1)
    starts = torch.cumsum(counts, 0) - counts
    offset = torch.cumsum(per, 1) - per  # where subject s's block starts inside class t's rows
    ya, sa = y[a], sub[a]
    k = len(present)
    pos = torch.searchsorted(present, ya)  # the anchor's class among the present ones
    other = present[(pos + torch.randint(1, max(k, 2), (len(a),), generator=gen)) % k]
    same = torch.rand(len(a), generator=gen) < 0.5
    t = torch.where(same | (k < 2), ya, other)
    own = per[t, sa] if subjects is not None else torch.zeros_like(t)
    pool = counts[t] - own
    spread = pool > 0  # other subjects have this class: skip the anchor subject's block
    pool = torch.where(spread, pool, counts[t])
    r = (torch.rand(len(a), generator=gen) * pool).long().clamp(max=pool - 1)
    r = r + torch.where(spread & (r >= offset[t, sa]), own, torch.zeros_like(r))
    return order[starts[t] + r]
