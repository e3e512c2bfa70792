"""Log-ratio data shared by the sup-norm certificates of :mod:`jaxfeat.bounds` and
:mod:`jaxfeat.theory`.

All of it runs in float64 NumPy on the host: certificates compare differences of log-ratios with
thresholds, and a margin of a few hundred float64 ulps of the data's magnitude keeps rounding
from turning into a false certificate.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._target import Target

EPS64 = float(np.finfo(np.float64).eps)


class LogRatioData(NamedTuple):
    t: np.ndarray  # (T,) float64 grid
    y: np.ndarray  # (T, V) float64 log-probabilities (floored at the smallest float64)
    full: np.ndarray  # full-support tokens, most probable (max over t) first


def prepare(target: object) -> LogRatioData:
    if not isinstance(target, Target):
        raise ValueError(
            f"target must be a jaxfeat.Target, got {type(target).__name__}; wrap "
            "arrays with jaxfeat.Target(t, probs)."
        )
    p = np.asarray(target.probs, dtype=np.float64)
    t = np.asarray(target.t, dtype=np.float64)
    full = np.flatnonzero(np.all(p > 0, axis=0))
    full = full[np.argsort(-p[:, full].max(axis=0), kind="stable")]
    y = np.log(np.maximum(p, np.finfo(np.float64).tiny))
    return LogRatioData(t, y, full)


def margin(y: np.ndarray, delta: float) -> float:
    scale = float(np.max(np.abs(y))) if y.size else 0.0
    return 256 * EPS64 * (1.0 + scale + delta)


def alternating_moves(y: np.ndarray, tol: float) -> np.ndarray:
    """Hysteresis scan down axis 0 of (T, C): number of alternating moves larger than tol."""
    if y.shape[1] <= 8:  # few curves: a plain loop is faster than array operations
        return np.array(
            [max(len(alternating_chain(col, tol)) - 1, 0) for col in y.T.tolist()], dtype=np.int64
        )
    v0 = y[0]
    lo, hi, ext = v0.copy(), v0.copy(), v0.copy()
    direction = np.zeros(v0.shape, np.int8)
    moves = np.zeros(v0.shape, np.int64)
    for v in y[1:]:
        undecided = direction == 0
        lo = np.where(undecided, np.minimum(lo, v), lo)
        hi = np.where(undecided, np.maximum(hi, v), hi)
        start_up = undecided & (v - lo > tol)
        start_dn = undecided & (hi - v > tol)
        up, dn = direction == 1, direction == -1
        ext = np.where(up, np.maximum(ext, v), np.where(dn, np.minimum(ext, v), ext))
        flip = (up & (ext - v > tol)) | (dn & (v - ext > tol))
        direction = np.where(flip, -direction, direction)
        direction = np.where(start_up, 1, np.where(start_dn, -1, direction)).astype(np.int8)
        ext = np.where(flip | start_up | start_dn, v, ext)
        moves += flip | start_up | start_dn
    return moves


def alternating_chain(y, tol: float) -> np.ndarray:
    """Grid indices of the alternating chain found by the hysteresis scan of one curve."""
    y = y.tolist() if isinstance(y, np.ndarray) else y
    lo_i = hi_i = ext_i = 0
    direction = 0
    chain: list[int] = []
    for i in range(1, len(y)):
        v = y[i]
        if direction == 0:
            if v < y[lo_i]:
                lo_i = i
            if v > y[hi_i]:
                hi_i = i
            if v - y[lo_i] > tol:
                direction, chain, ext_i = 1, [lo_i], i
            elif y[hi_i] - v > tol:
                direction, chain, ext_i = -1, [hi_i], i
        elif direction * (v - y[ext_i]) > 0:
            ext_i = i
        elif direction * (y[ext_i] - v) > tol:
            chain.append(ext_i)
            direction, ext_i = -direction, i
    if direction:
        chain.append(ext_i)
    return np.asarray(chain, dtype=np.int64)
