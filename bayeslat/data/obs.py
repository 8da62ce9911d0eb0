"""The :class:`ObsTable` (one row per observation: the model's design arrays) and what is done with
it: built from one run's reconstruction (:func:`build_obs`), concatenated, subsampled and split.

Every observation row is a weighted window of steps of one run (see
:mod:`bayeslat.data.reconstruct`): ``X[r, g, :] = sum_k w_k * f_k * [regime_k == g]`` with ``f_k``
the scaled beta features of step k (:func:`bayeslat.features.step_features`), computed exactly
from per-run cumulative sums per regime. TTFT rows add alpha features
(:func:`bayeslat.features.alpha_features` of prompt tokens and queue depth at arrival, and
whether the deployment runs multi-process workers).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bayeslat import features as F
from bayeslat.data import reconstruct as R
from bayeslat.data import windows as RW
from bayeslat.data.training_specs import training_specs_from_json, training_specs_json
from bayeslat.errors import SpecError

KINDS = ("step", "window", "ttft", "alpha")
_ARRAYS = ("kind", "y", "X", "A", "n_steps", "hw", "cls", "run", "request", "t_frac", "n_rows", "n_eff")
#: the binning of every row of a run into rows the likelihood sees (:func:`collapse`): time slices
#: of the run x quantile bins of the design within each slice, per row kind
BINS = (4, 8)


@dataclass(frozen=True)
class ObsTable:
    """One row per observation (DEVELOPING.md). ``t_frac``: position of the row in its run's
    timeline (0..1; used by :func:`time_split` and :func:`subsample`).

    A row may be the mean of several raw rows of one run and kind (:func:`collapse`): ``n_rows``
    raw rows, worth ``n_eff`` independent ones (their overlap in engine steps counted); both are 1
    for a raw row (the default)."""

    kind: np.ndarray
    y: np.ndarray
    X: np.ndarray
    A: np.ndarray
    n_steps: np.ndarray
    hw: np.ndarray
    cls: np.ndarray
    run: np.ndarray
    request: np.ndarray
    t_frac: np.ndarray
    hardware_levels: tuple
    class_levels: tuple
    meta: dict = field(default_factory=dict, compare=False)
    n_rows: np.ndarray | None = None
    n_eff: np.ndarray | None = None

    def __post_init__(self):
        n = np.shape(self.y)[0] if np.ndim(self.y) == 1 else 0
        for k, dt in (("n_rows", np.int64), ("n_eff", np.float64)):
            v = getattr(self, k)
            object.__setattr__(self, k, np.ones(n, dtype=dt) if v is None else np.asarray(v, dtype=dt))
        self.validate()

    def __len__(self) -> int:
        return len(self.y)

    def validate(self) -> ObsTable:
        n = np.shape(self.y)[0] if np.ndim(self.y) == 1 else -1
        if n < 0:
            raise SpecError(f"y must be 1-d, got shape {np.shape(self.y)}", field="y")
        shapes = {"X": (n, len(F.REGIMES), F.N_BETA), "A": (n, F.N_ALPHA)}
        for k, shp in shapes.items():
            if np.shape(getattr(self, k)) != shp:
                raise SpecError(f"expected shape {shp}, got {np.shape(getattr(self, k))}", field=k)
        for k in ("kind", "n_steps", "hw", "cls", "run", "request", "t_frac", "n_rows", "n_eff"):
            if np.shape(getattr(self, k)) != (n,):
                raise SpecError(f"expected shape ({n},), got {np.shape(getattr(self, k))}", field=k)
        for k in ("y", "X", "A", "n_steps", "t_frac", "n_eff"):
            if not np.all(np.isfinite(getattr(self, k))):
                raise SpecError("non-finite values", field=k)
        if n and (np.any(self.X < 0) or np.any(self.A < 0)):
            raise SpecError("features must be non-negative", field="X" if np.any(self.X < 0) else "A")
        if n and (np.min(self.n_rows) < 1 or np.any(self.n_eff < 1.0 - 1e-9) or np.any(self.n_eff > self.n_rows + 1e-9)):
            raise SpecError("a row must stand for n_rows >= 1 raw rows, worth 1 <= n_eff <= n_rows", field="n_rows/n_eff")
        if n and (np.min(self.kind) < 0 or np.max(self.kind) >= len(KINDS)):
            raise SpecError(f"kind must index {KINDS}", field="kind")
        if n and (np.min(self.hw) < 0 or np.max(self.hw) >= len(self.hardware_levels)):
            raise SpecError("hw index out of range of hardware_levels", field="hw")
        if n and (np.min(self.cls) < 0 or np.max(self.cls) >= len(self.class_levels)):
            raise SpecError("cls index out of range of class_levels", field="cls")
        return self

    def subset(self, idx) -> ObsTable:
        idx = np.asarray(idx)
        return replace(self, **{k: getattr(self, k)[idx] for k in _ARRAYS})

    def save(self, path) -> Path:
        path = Path(path)
        deps = self.meta.get("deployments", {})
        specs = training_specs_json(self.meta.get("specs") or {})
        np.savez_compressed(
            path,
            **{k: getattr(self, k) for k in _ARRAYS},
            hardware_levels=np.array(self.hardware_levels),
            class_levels=np.array(self.class_levels),
            deployment_runs=np.array(list(deps), dtype=str),
            deployment_keys=np.array(list(deps.values()), dtype=str),
            specs_json=np.array(specs or "", dtype=str),
        )
        return path if path.suffix == ".npz" else path.with_suffix(path.suffix + ".npz")

    @classmethod
    def load(cls, path) -> ObsTable:
        with np.load(path, allow_pickle=False) as z:
            need = [k for k in _ARRAYS if k not in ("n_rows", "n_eff")]  # (absent: raw rows)
            missing = [k for k in need + ["hardware_levels", "class_levels"] if k not in z.files]
            if missing:
                raise SpecError(f"missing array {missing[0]!r}", file=str(path), field=missing[0])
            d = {k: z[k] for k in _ARRAYS if k in z.files}
            deps = dict(zip(z["deployment_runs"].tolist(), z["deployment_keys"].tolist())) if "deployment_runs" in z.files else {}
            specs = training_specs_from_json(str(z["specs_json"]))[0] if "specs_json" in z.files and str(z["specs_json"]) else {}
            return cls(
                **d,
                hardware_levels=tuple(str(v) for v in z["hardware_levels"]),
                class_levels=tuple(str(v) for v in z["class_levels"]),
                meta={"deployments": deps, "specs": specs},
            )


def build_obs(
    recon: R.Reconstruction,
    ctx,
    hardware: str,
    model_class: str,
    *,
    trace_rows: pd.DataFrame | None = None,
    include_warmup: bool = False,
    hardware_levels=None,
    class_levels=None,
    bins: tuple[int, int] | None = None,
) -> ObsTable:
    """ObsTable of one run: decode windows, TTFT rows and (optionally) traced step rows
    (``trace_rows`` from :func:`bayeslat.data.windows.trace_step_windows`); with ``bins``
    (time slices, design bins), every row collapsed into bin means (:func:`collapse`)."""
    win = RW.observation_windows(recon, include_warmup=include_warmup)
    if trace_rows is not None and len(trace_rows):
        win = pd.concat([trace_rows, win], ignore_index=True)
    stats = recon.steps[list(F.STATS)].to_numpy(np.float64)
    feat, reg = F.step_features(stats, ctx)
    per = np.zeros((len(stats), len(F.REGIMES), F.N_BETA))
    per[np.arange(len(stats)), reg, :] = feat
    X = RW.window_sums(per, win["k0"], win["k1"], win["w0"], win["w1"])
    X = np.maximum(X, 0.0)  # cumulative-sum round-off
    kind = win["kind"].to_numpy(np.int64)
    A = np.zeros((len(win), F.N_ALPHA))
    tt = kind == R.KIND_TTFT
    A[tt] = F.alpha_features(win["prompt"].to_numpy()[tt], win["queue_depth"].to_numpy()[tt], F.multiproc(ctx))
    hl = tuple(hardware_levels or (hardware,))
    cl = tuple(class_levels or (model_class,))
    t_end = max(float(recon.steps["t_start_us"].iloc[-1]), 1.0)
    n = len(win)
    out = ObsTable(
        kind=kind,
        y=win["y_ms"].to_numpy(np.float64),
        X=X,
        A=A,
        n_steps=win["n_steps"].to_numpy(np.float64),
        hw=np.full(n, hl.index(hardware), dtype=np.int64),
        cls=np.full(n, cl.index(model_class), dtype=np.int64),
        run=np.full(n, recon.run, dtype=object).astype(str),
        request=win["request"].to_numpy(np.int64),
        t_frac=np.clip(win["t_us"].to_numpy(np.float64) / t_end, 0.0, 1.0),
        hardware_levels=hl,
        class_levels=cl,
        meta={"runs": [recon.run], "deployments": {recon.run: F.deployment_key(ctx, hardware)}},
    )
    if bins is None:
        return out
    return collapse(out, win[["k0", "k1", "w0", "w1"]].to_numpy(np.float64), *bins)


def concat(tables) -> ObsTable:
    """Concatenate ObsTables, re-indexing hw / cls onto the union of their levels."""
    tables = [t for t in tables if t is not None]
    if not tables:
        raise SpecError("nothing to concatenate", field="tables")
    hl, cl = [], []
    for t in tables:
        hl += [h for h in t.hardware_levels if h not in hl]
        cl += [c for c in t.class_levels if c not in cl]
    parts = {k: [] for k in _ARRAYS}
    for t in tables:
        for k in _ARRAYS:
            v = getattr(t, k)
            if k == "hw":
                v = np.array([hl.index(t.hardware_levels[i]) for i in v], dtype=np.int64)
            elif k == "cls":
                v = np.array([cl.index(t.class_levels[i]) for i in v], dtype=np.int64)
            parts[k].append(np.asarray(v))
    d = {k: np.concatenate(v) for k, v in parts.items()}
    d["run"] = d["run"].astype(str)
    meta = {
        "runs": [r for t in tables for r in t.meta.get("runs", [])],
        "deployments": {r: k for t in tables for r, k in t.meta.get("deployments", {}).items()},
        "specs": {r: v for t in tables for r, v in (t.meta.get("specs") or {}).items()},
    }
    return ObsTable(**d, hardware_levels=tuple(hl), class_levels=tuple(cl), meta=meta)


def subsample(obs: ObsTable, n_per_run_kind: int = 200, seed: int = 0, n_time_bins: int = 10) -> ObsTable:
    """At most ``n_per_run_kind`` rows per (run, kind), stratified evenly over ``n_time_bins``
    slices of the run's timeline (load changes over time: the stages of the profile)."""
    rng = np.random.default_rng(seed)
    keep = []
    tb = np.minimum((obs.t_frac * n_time_bins).astype(int), n_time_bins - 1)
    df = pd.DataFrame({"run": obs.run, "kind": obs.kind, "tb": tb, "i": np.arange(len(obs))})
    for _, g in df.groupby(["run", "kind"], sort=True):
        if len(g) <= n_per_run_kind:
            keep.append(g["i"].to_numpy())
            continue
        bins = {b: rng.permutation(x["i"].to_numpy()) for b, x in g.groupby("tb")}
        quota = n_per_run_kind
        chosen = []
        # round-robin over time bins so each slice contributes equally where it can
        pos = {b: 0 for b in bins}
        while quota > 0:
            progressed = False
            for b in sorted(bins):
                if quota == 0:
                    break
                if pos[b] < len(bins[b]):
                    chosen.append(bins[b][pos[b]])
                    pos[b] += 1
                    quota -= 1
                    progressed = True
            if not progressed:
                break
        keep.append(np.array(chosen))
    idx = np.sort(np.concatenate(keep)) if keep else np.array([], dtype=int)
    return obs.subset(idx)


def time_split(obs: ObsTable, frac: float = 0.7) -> tuple[ObsTable, ObsTable]:
    """(train, test): rows in the first ``frac`` of each run's timeline vs the rest."""
    tr = obs.t_frac < frac
    return obs.subset(np.flatnonzero(tr)), obs.subset(np.flatnonzero(~tr))


def _design_summary(X: np.ndarray, A: np.ndarray, n_steps: np.ndarray) -> np.ndarray:
    """One number per row that orders rows by their design: the first principal component of the
    standardised log per-step features (beta, per step of the row) and alpha features. Outcome-free,
    so that binning on it selects on the design only."""
    Z = np.concatenate([X.reshape(len(X), -1) / np.maximum(n_steps, 1.0)[:, None], A], axis=1)
    pos = Z > 0
    ref = np.where(pos.any(axis=0), (Z * pos).sum(axis=0) / np.maximum(pos.sum(axis=0), 1), 1.0)
    Z = np.log1p(Z / ref)
    sd = Z.std(axis=0)
    Z = (Z[:, sd > 1e-9] - Z[:, sd > 1e-9].mean(axis=0)) / sd[sd > 1e-9]
    if Z.shape[1] == 0 or len(Z) < 2:
        return np.zeros(len(X))
    return Z @ np.linalg.svd(Z, full_matrices=False)[2][0]


def effective_rows(spans: np.ndarray) -> float:
    """How many independent rows the mean of rows spanning engine steps is worth.

    ``spans`` (m, 4): each row's first and last step and the weights of those end steps
    (``k0, k1, w0, w1``: the row sums ``w0 t[k0] + t[k0+1] + ... + w1 t[k1]``). With independent
    step errors of variance v, row i has variance ``v sum_k w_ik^2`` and the sum of the rows
    ``v sum_k c_k^2`` with ``c_k = sum_i w_ik`` the step's coverage, so the mean of the m rows has
    the variance of one mean row divided by ``n_eff = m^2 mean_i(sum_k w_ik^2) / sum_k c_k^2``:
    m for disjoint rows, 1 for m copies of one row (decode windows of concurrent requests share
    most of their steps). Clipped to [1, m]."""
    sp = np.asarray(spans, dtype=np.float64).reshape(-1, 4)
    m = len(sp)
    if m <= 1:
        return float(max(m, 1))
    k0, k1 = sp[:, 0].astype(np.int64), sp[:, 1].astype(np.int64)
    w0, w1 = sp[:, 2], sp[:, 3]
    lo = int(k0.min())
    a, b = k0 - lo, k1 - lo
    L = int(b.max()) + 1
    c = np.zeros(L + 1)
    np.add.at(c, a, 1.0)
    np.add.at(c, b + 1, -1.0)
    c = np.cumsum(c)[:L]
    same = a == b
    np.add.at(c, a[~same], w0[~same] - 1.0)
    np.add.at(c, b[~same], w1[~same] - 1.0)
    np.add.at(c, a[same], w0[same] + w1[same] - 2.0)
    sq = np.where(same, (w0 + w1 - 1.0) ** 2, np.maximum(b - a - 1, 0) + w0**2 + w1**2)
    tot = float((c**2).sum())
    if tot <= 0:
        return 1.0
    return float(np.clip(m * m * sq.mean() / tot, 1.0, m))


def collapse(
    obs: ObsTable, spans: np.ndarray | None = None, n_time_bins: int = BINS[0], n_design_bins: int = BINS[1]
) -> ObsTable:
    """Every row of ``obs`` in bin means: per (run, kind), ``n_time_bins`` slices of the run's
    timeline, each cut into ``n_design_bins`` quantile bins of the rows' design
    (:func:`_design_summary`: the features only, never y). A bin row is the mean of its rows' y,
    X, A, n_steps and t_frac, with ``n_rows`` their count and ``n_eff`` what they are worth
    (:func:`effective_rows` of their ``spans``, one (k0, k1, w0, w1) per row of ``obs``; None:
    independent rows, ``n_eff = n_rows``).

    The model's mean is linear in X and A within a run (one deployment, one run factor), so a bin's
    mean row has exactly the mean of its rows' expected values; its noise scale is a row's divided
    by sqrt(n_eff) (``bayeslat.model.build_model``). A bin of one row is that row."""
    if np.any(obs.n_rows != 1):
        raise SpecError("collapse takes raw rows (n_rows 1): these rows are bins already", field="n_rows")
    n = len(obs)
    if spans is not None and np.shape(spans) != (n, 4):
        raise SpecError(f"spans must be (rows, 4) = (k0, k1, w0, w1), got {np.shape(spans)}", field="spans")
    if n_time_bins < 1 or n_design_bins < 1:
        raise SpecError("bins must be >= 1", field="bins")
    tb = np.minimum((obs.t_frac * n_time_bins).astype(int), n_time_bins - 1)
    groups = []
    for run in np.unique(obs.run):
        for k in np.unique(obs.kind[obs.run == run]):
            idx = np.flatnonzero((obs.run == run) & (obs.kind == k))
            z = _design_summary(obs.X[idx], obs.A[idx], obs.n_steps[idx])
            for t in np.unique(tb[idx]):
                sel = idx[tb[idx] == t]
                order = sel[np.argsort(z[np.searchsorted(idx, sel)], kind="stable")]
                groups += [g for g in np.array_split(order, min(n_design_bins, len(order))) if len(g)]
    groups.sort(key=lambda g: int(g[0]))
    cols = {k: [] for k in _ARRAYS}
    for g in groups:
        m = len(g)
        for k in ("y", "X", "A", "n_steps", "t_frac"):
            cols[k].append(getattr(obs, k)[g].mean(axis=0))
        for k in ("kind", "hw", "cls", "run"):
            cols[k].append(getattr(obs, k)[g[0]])
        cols["request"].append(obs.request[g[0]] if m == 1 else -1)
        cols["n_rows"].append(m)
        cols["n_eff"].append(float(m) if spans is None else effective_rows(np.asarray(spans)[g]))
    d = {k: np.asarray(v) for k, v in cols.items()}
    d["run"] = d["run"].astype(str)
    for k, dt in (("kind", np.int64), ("hw", np.int64), ("cls", np.int64), ("request", np.int64), ("n_rows", np.int64)):
        d[k] = d[k].astype(dt)
    if not groups:
        d = {k: getattr(obs, k)[:0] for k in _ARRAYS}
    return ObsTable(**d, hardware_levels=obs.hardware_levels, class_levels=obs.class_levels, meta=dict(obs.meta))
