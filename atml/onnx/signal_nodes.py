"""Signal-processing steps of :mod:`atml.data` as ONNX nodes, each exact on a fixed length.

Used by :mod:`atml.onnx.preprocess_graph`, which composes them into the raw graph; the
module docstring there says why each form reproduces the Python step. Every function takes
a node list (:class:`Nodes`) and the name of a ``[M, 1, n]`` (or ``[B, C, n]``) tensor and
returns the name of its result. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from atml.data.transforms import bandpass_sos

__all__ = ["PREFIX", "FLAT_RELATIVE", "FLAT_ABSOLUTE", "IIR_BLOCK", "Nodes", "IirBlocks", "resample_taps",
           "resample_nodes", "iir_nodes", "bandpass_nodes", "zscore_nodes"]

PREFIX = "pre/"  # names of the preprocessing nodes and constants
# A lead whose preprocessed deviation is below this fraction of its raw RMS counts as flat.
FLAT_RELATIVE = 1e-5
FLAT_ABSOLUTE = 1e-8  # atml.data.preprocess.normalize's floor
_INT64_MIN = -(2**63)


class Nodes:
    """ONNX nodes and constants under one name prefix."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0
        self._known: dict[tuple[str, tuple[int, ...], bytes], str] = {}

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        """An initializer; equal constants (the many Slice and Pad arguments) are stored once."""
        from onnx import numpy_helper

        a = np.ascontiguousarray(value, dtype=dtype)
        key = (a.dtype.str, a.shape, a.tobytes())
        if key not in self._known:
            self._known[key] = name = f"{PREFIX}c{len(self.inits)}"
            self.inits.append(numpy_helper.from_array(a, name=name))
        return self._known[key]

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64)

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        self._n += 1
        name = out or f"{PREFIX}{op_type.lower()}{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def slice(self, x: str, start: int, end: int, step: int = 1, axis: int = 2) -> str:
        return self.op("Slice", x, self.ints(start), self.ints(end), self.ints(axis), self.ints(step))

    def reverse(self, x: str) -> str:
        return self.slice(x, -1, _INT64_MIN, -1)


def resample_taps(up: int, down: int) -> np.ndarray:
    """resample_poly's FIR as it applies it to float32 input (its default Kaiser window)."""
    from scipy.signal import firwin

    max_rate = max(up, down)
    h = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0)).astype(np.float32)
    h *= up
    return h


def resample_nodes(g: Nodes, x: str, n: int, up: int, down: int) -> str:
    """resample_poly(x, up, down) along the last axis of x ``[M, 1, n]``."""
    h = resample_taps(up, down)
    half = (len(h) - 1) // 2
    if up > 1:  # zeros between the samples: [M, 1, n, 1] -> [M, 1, n, up] -> [M, 1, n * up]
        x = g.op("Unsqueeze", x, g.ints(3))
        x = g.op("Pad", x, g.ints(0, 0, 0, 0, 0, 0, 0, up - 1))
        x = g.op("Reshape", x, g.ints(-1, 1, n * up))
    n_out = -(-n * up // down)
    right = max(0, (n_out - 1) * down + len(h) - n * up - half)
    y = g.op("Conv", x, g.const(h[::-1].reshape(1, 1, -1)), pads=[half, right], strides=[down])
    got = (n * up + half + right - len(h)) // down + 1
    return y if got == n_out else g.slice(y, 0, n_out)


@dataclass(frozen=True)
class IirBlocks:
    """scipy's own sosfilt realisation of an IIR, cut into blocks of ``b`` samples.

    Probed from ``sosfilt`` itself (float64), so the state is exactly the one ``sosfilt_zi``
    describes: within a block, output = FIR of the block's samples (``h``) + ``o`` @ state
    at its start; the next block starts at state ``phi`` @ state + ``g`` @ samples.
    """

    h: np.ndarray  # (b,) the first b impulse-response samples
    o: np.ndarray  # (b, dim) state -> outputs of one block
    g: np.ndarray  # (dim, b) samples of one block -> state after it
    phi: np.ndarray  # (dim, dim) state -> state one block later
    zi: np.ndarray  # (dim,) sosfilt_zi: the state of a unit step, times x[0] at the start

    @classmethod
    def probe(cls, sos: np.ndarray, b: int) -> IirBlocks:
        from scipy.signal import sosfilt, sosfilt_zi

        ns = len(sos)
        dim = 2 * ns
        o, phi, g = np.zeros((b, dim)), np.zeros((dim, dim)), np.zeros((dim, b))
        for k in range(dim):
            state = np.zeros(dim)
            state[k] = 1.0
            y, zf = sosfilt(sos, np.zeros(b), zi=state.reshape(ns, 2))
            o[:, k], phi[:, k] = y, zf.ravel()
        for j in range(b):
            u = np.zeros(b)
            u[j] = 1.0
            _, zf = sosfilt(sos, u, zi=np.zeros((ns, 2)))
            g[:, j] = zf.ravel()
        impulse = np.zeros(b)
        impulse[0] = 1.0
        return cls(sosfilt(sos, impulse), o, g, phi, sosfilt_zi(sos).ravel())

    def balanced(self, sos: np.ndarray) -> IirBlocks:
        """The same blocks in the filter's balanced state coordinates.

        sosfilt's own states are badly scaled for float32 (state -> output condition ~1e5
        for 1-25 Hz at 250 Hz: ~1e-4 relative error); balanced states (equal controllability
        and observability Gramians) bring float32 to ~1e-6.
        """
        from scipy.linalg import cholesky, solve_discrete_lyapunov, svd

        one = IirBlocks.probe(sos, 1)  # the per-sample realisation: A, b, C
        a, b, c = one.phi, one.g[:, :1], one.o[:1, :]
        r = cholesky(solve_discrete_lyapunov(a, b @ b.T), lower=True)
        u, s2, _ = svd(r.T @ solve_discrete_lyapunov(a.T, c.T @ c) @ r)
        t = np.diag(s2 ** 0.25) @ u.T @ np.linalg.inv(r)
        ti = np.linalg.inv(t)
        return IirBlocks(self.h, self.o @ ti, t @ self.g, t @ self.phi @ ti, t @ self.zi)


IIR_BLOCK = 32  # samples per block of the IIR: constants ~17 x 32 floats, ~60 multiply-adds per sample


def iir_nodes(g: Nodes, x: str, n: int, k: dict[str, Any]) -> str:
    """sosfilt(sos, x, zi=zi * x[..., 0]) along the last axis of x ``[M, 1, n]``, by blocks.

    The states at the block starts follow s_b = phi s_(b-1) + g u_(b-1), s_0 = zi x[0]: a
    linear recurrence, solved by a prefix scan in log2(blocks) steps (no loop in the graph).
    """
    b, nb = IIR_BLOCK, -(-n // IIR_BLOCK)
    xp = x if nb * b == n else g.op("Pad", x, g.ints(0, 0, 0, 0, 0, nb * b - n))
    inner = g.op("Conv", g.op("Reshape", xp, g.ints(-1, 1, b)), k["h"], pads=[b - 1, 0])  # within each block
    inner = g.op("Reshape", inner, g.ints(-1, nb, b))
    v = g.op("MatMul", g.op("Reshape", xp, g.ints(-1, nb, b)), k["gT"])  # [M, nb, dim]: each block's input
    q = g.op("Mul", g.slice(x, 0, 1), k["zi"])  # [M, 1, dim]: the initial state
    if nb > 1:
        q = g.op("Concat", q, g.slice(v, 0, nb - 1, axis=1), axis=1)
    d = 1
    while d < nb:  # q_b <- q_b + phi^d q_(b-d): after the last step q_b is the state at block b
        shifted = g.op("Pad", q, g.ints(0, d, 0, 0, -d, 0))  # q moved d blocks later (a negative pad crops)
        q = g.op("Add", q, g.op("MatMul", shifted, k[f"phi{d}"]))
        d *= 2
    y = g.op("Add", inner, g.op("MatMul", q, k["oT"]))
    y = g.op("Reshape", y, g.ints(-1, 1, nb * b))
    return y if nb * b == n else g.slice(y, 0, n)


def bandpass_nodes(g: Nodes, x: str, n: int, fs: int, band: tuple[float | None, float | None], edge: int) -> str:
    """sosfiltfilt(bandpass_sos(fs, band), x) along the last axis of x ``[M, 1, n]``."""
    n_ext = n + 2 * edge
    sos = bandpass_sos(fs, band)
    blk = IirBlocks.probe(sos, IIR_BLOCK).balanced(sos)
    k = {"h": g.const(blk.h[::-1].reshape(1, 1, -1)), "gT": g.const(blk.g.T), "oT": g.const(blk.o.T),
         "zi": g.const(blk.zi.reshape(1, -1))}
    d, k["phi1"] = 1, g.const(blk.phi.T)
    while 2 * d < -(-n_ext // IIR_BLOCK):  # phi^2d = (phi^d)^2, squared in the graph (folded at load)
        k[f"phi{2 * d}"] = g.op("MatMul", k[f"phi{d}"], k[f"phi{d}"])
        d *= 2
    two = g.const(2.0)
    # odd extension, as scipy's odd_ext: 2 x[0] - x[edge:0:-1], x, 2 x[-1] - x[-2:-edge-2:-1]
    left = g.op("Sub", g.op("Mul", two, g.slice(x, 0, 1)), g.slice(x, edge, 0, -1))
    right = g.op("Sub", g.op("Mul", two, g.slice(x, n - 1, n)), g.slice(x, n - 2, n - edge - 2, -1))
    ext = g.op("Concat", left, x, right, axis=2)
    y = iir_nodes(g, ext, n_ext, k)  # forward, from zi * ext[0]
    z = iir_nodes(g, g.reverse(y), n_ext, k)  # backward, from zi * y[-1]
    return g.slice(z, n_ext - 1 - edge, edge - 1, -1)  # reversed back, the extension cut off


def zscore_nodes(g: Nodes, x: str, raw: str) -> str:
    """normalize(x, "zscore") over the last axis; ``raw`` the same leads before preprocessing."""
    mean = g.op("ReduceMean", x, axes=[2], keepdims=1)
    d = g.op("Sub", x, mean)
    std = g.op("Sqrt", g.op("ReduceMean", g.op("Mul", d, d), axes=[2], keepdims=1))
    raw_rms = g.op("Sqrt", g.op("ReduceMean", g.op("Mul", raw, raw), axes=[2], keepdims=1))
    floor = g.op("Max", g.op("Mul", raw_rms, g.const(FLAT_RELATIVE)), g.const(FLAT_ABSOLUTE))
    safe = g.op("Where", g.op("Less", std, floor), g.const(1.0), std)
    return g.op("Div", d, safe)
