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
_ARRAYS = ("kind", "y", "X", "A", "n_steps", "hw", "cls", "run", "request", "t_frac")


@dataclass(frozen=True)
class ObsTable:
    """One row per observation (DEVELOPING.md). ``t_frac``: position of the row in its run's
    timeline (0..1; used by :func:`time_split` and :func:`subsample`)."""

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

    def __post_init__(self):
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
        for k in ("kind", "n_steps", "hw", "cls", "run", "request", "t_frac"):
            if np.shape(getattr(self, k)) != (n,):
                raise SpecError(f"expected shape ({n},), got {np.shape(getattr(self, k))}", field=k)
        for k in ("y", "X", "A", "n_steps", "t_frac"):
            if not np.all(np.isfinite(getattr(self, k))):
                raise SpecError("non-finite values", field=k)
        if n and (np.any(self.X < 0) or np.any(self.A < 0)):
            raise SpecError("features must be non-negative", field="X" if np.any(self.X < 0) else "A")
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
            missing = [k for k in _ARRAYS + ("hardware_levels", "class_levels") if k not in z.files]
            if missing:
                raise SpecError(f"missing array {missing[0]!r}", file=str(path), field=missing[0])
            d = {k: z[k] for k in _ARRAYS}
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
) -> ObsTable:
    """ObsTable of one run: decode windows, TTFT rows and (optionally) traced step rows
    (``trace_rows`` from :func:`bayeslat.data.windows.trace_step_windows`)."""
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
    return ObsTable(
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
