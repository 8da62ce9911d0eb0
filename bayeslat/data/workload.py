"""Request streams for the simulator: replayed per-request data or generated from an
inference-perf profile.

A :class:`Workload` is a struct of equal-length arrays (one entry per request, sorted by arrival):

- ``arrival_us`` int64: arrival time at the server (us, relative to the run start)
- ``input_tokens`` int64: prompt length (tokens, including the shared prefix)
- ``output_tokens`` int64: tokens the server generates (>= 1)
- ``prefix_group`` int64: id of the shared-prefix group (-1: none)
- ``prefix_length`` int64: leading prompt tokens shared by every request of the group (cacheable)
- ``timeout_us`` int64: client timeout after arrival (-1: none)

Calibration against the bundled real runs (``bayeslat.data.datasets``, measured when this module was
written; see ``tests/test_workload.py``):

- **Arrivals.** inference-perf's ``load.type: constant`` did *not* produce evenly spaced arrivals
  in these runs: within every stage of all 16 runs the inter-arrival gaps have a coefficient of
  variation 0.98-1.02 (exponential: CV 1) and the stage holds exactly ``rate x duration``
  requests. So the default ``arrivals="poisson"`` draws exactly ``round(rate x duration)``
  requests per stage with exponential gaps of mean ``1/rate`` starting at the stage's nominal
  start; ``arrivals="constant"`` spaces them evenly instead.
- **Prompt length.** The real prompts are longer than ``system_prompt_len + question_len``: the
  mean excess is 23-49 tokens and grows with the length (re-tokenisation of the generated text
  plus the chat template). One constant pair fits all 16 runs (the mean prompt within 4 tokens):
  ``prompt = TEMPLATE_OVERHEAD + TEMPLATE_RATIO x (system_prompt_len + question_len)`` with
  ``TEMPLATE_OVERHEAD = 3.2`` and ``TEMPLATE_RATIO = 1.042`` (least squares over the 16 run means;
  a pure constant offset, 33.7 tokens, would be off by up to 15). The per-request spread is small
  (sd 5.5-9.7 tokens, ~0.9% of the prompt): ``TEMPLATE_REL_SD``.
- **Multi-turn chat.** All real runs have ``enable_multi_turn_chat: true``, yet the prompt length
  is uncorrelated with time (|corr| < 0.011) and its mean is the same in the first and last 1000
  requests: history is *not* appended, prompts stay ~constant. Generated requests therefore all
  have the calibrated length; the prefix-cache hit is the shared system prompt of the request's
  group (``num_unique_system_prompts`` groups, each request from a uniformly drawn user of
  ``num_unique_system_prompts x num_users_per_system_prompt``).
- **Outputs.** ``ignore_eos``: every request generates exactly ``output_len`` tokens.
- **Timeout.** The real client gave up after 300 s (``datasets.CLIENT_TIMEOUT_S``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bayeslat.data import datasets
from bayeslat.errors import SpecError

TEMPLATE_OVERHEAD = 3.2  # tokens
TEMPLATE_RATIO = 1.042  # real tokens per profile token
TEMPLATE_REL_SD = 0.009  # per-request relative sd of the prompt length
DEFAULT_TIMEOUT_S = 300.0

_FIELDS = ("arrival_us", "input_tokens", "output_tokens", "prefix_group", "prefix_length", "timeout_us")


@dataclass
class Workload:
    """A request stream (see the module docstring). Arrays are int64 and sorted by arrival."""

    arrival_us: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    prefix_group: np.ndarray
    prefix_length: np.ndarray
    timeout_us: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(np.asarray(self.arrival_us))
        for name in _FIELDS:
            v = np.asarray(getattr(self, name))
            v = np.full(n, int(v), dtype=np.int64) if v.ndim == 0 else np.ascontiguousarray(v, dtype=np.int64)
            if v.shape != (n,):
                raise SpecError(f"must have {n} entries, got shape {v.shape}", field=name)
            object.__setattr__(self, name, v)
        if n and (self.input_tokens < 1).any():
            raise SpecError("every request needs >= 1 prompt token", field="input_tokens")
        if n and (self.output_tokens < 1).any():
            raise SpecError("every request needs >= 1 output token", field="output_tokens")
        if n and (self.prefix_length < 0).any():
            raise SpecError("must be >= 0", field="prefix_length")
        self.prefix_length = np.where(self.prefix_group >= 0, np.minimum(self.prefix_length, self.input_tokens), 0)
        if n and (np.diff(self.arrival_us) < 0).any():
            order = np.argsort(self.arrival_us, kind="stable")
            for name in _FIELDS:
                setattr(self, name, getattr(self, name)[order])

    def __len__(self) -> int:
        return len(self.arrival_us)

    def head(self, n: int) -> Workload:
        return Workload(**{k: getattr(self, k)[:n] for k in _FIELDS}, info=dict(self.info))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({k: getattr(self, k) for k in _FIELDS})

    def summary(self) -> dict:
        n = len(self)
        span = (self.arrival_us[-1] - self.arrival_us[0]) / 1e6 if n > 1 else 0.0
        return {
            "requests": n,
            "span_s": span,
            "rate_per_s": (n - 1) / span if span > 0 else float("nan"),
            "input_mean": float(self.input_tokens.mean()) if n else 0.0,
            "output_mean": float(self.output_tokens.mean()) if n else 0.0,
            "prefix_groups": int(len(np.unique(self.prefix_group[self.prefix_group >= 0]))),
        }


def _timeout(n: int, timeout_s) -> np.ndarray:
    if timeout_s is None:
        return np.full(n, -1, dtype=np.int64)
    return np.full(n, int(round(float(timeout_s) * 1e6)), dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# (a) replayed per-request data
# ---------------------------------------------------------------------------------------------
def from_requests(
    df: pd.DataFrame,
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    profile: dict | None = None,
    prefix_length: int | None = None,
) -> Workload:
    """Workload from a per-request table with ``arrival_us``, ``input_tokens``, ``output_tokens``
    (e.g. ``datasets.requests(run)``: the repaired server output count; errored requests keep
    their arrival and imputed prompt and, like every request, get the client timeout ``timeout_s``).

    The per-request data has no prefix groups. If ``profile`` (an inference-perf profile dict, e.g.
    ``datasets.run_info(run)["profile"]``) is given, each request is assigned a group uniformly at
    random (fixed seed) among ``num_unique_system_prompts`` with the calibrated system
    prompt as ``prefix_length``; optional ``prefix_group`` / ``prefix_length`` columns win.
    """
    for c in ("arrival_us", "input_tokens", "output_tokens"):
        if c not in df.columns:
            raise SpecError(f"missing column (have {list(df.columns)})", field=c)
    n = len(df)
    grp = np.full(n, -1, dtype=np.int64)
    plen = np.zeros(n, dtype=np.int64)
    if "prefix_group" in df.columns:
        grp = df["prefix_group"].fillna(-1).to_numpy().astype(np.int64)
        plen = (
            df["prefix_length"].fillna(0).to_numpy().astype(np.int64)
            if "prefix_length" in df.columns
            else np.full(n, int(prefix_length or 0), dtype=np.int64)
        )
    elif profile is not None:
        # inference-perf shared_prefix cycles a fixed set of (system prompt x user) prompts, so a
        # repeated prompt is a prefix-cache hit on all its full blocks (real step traces: median
        # 2-3.5 prefill tokens per request). The per-request data has no prompt identity: equal
        # prompt length stands for the same prompt (as in bayeslat.data.reconstruct).
        _shared_prefix(profile)
        inp = df["input_tokens"].to_numpy().astype(np.int64)
        grp = inp.copy()
        plen = inp.copy() if prefix_length is None else np.full(n, int(prefix_length), dtype=np.int64)
    info = {"source": "requests"}
    if "has_error" in df.columns:
        info["n_error_recorded"] = int(df["has_error"].sum())
    return Workload(
        arrival_us=df["arrival_us"].to_numpy().astype(np.int64),
        input_tokens=df["input_tokens"].to_numpy().astype(np.int64),
        output_tokens=df["output_tokens"].to_numpy().astype(np.int64),
        prefix_group=grp,
        prefix_length=plen,
        timeout_us=_timeout(n, timeout_s),
        info=info,
    )


def from_run(run: str, *, timeout_s: float | None = None, with_prefix: bool = True) -> Workload:
    """Workload of a bundled real run (``datasets.requests(run)``) with its client timeout and,
    by default, prefix groups from its profile."""
    info = datasets.run_info(run)
    w = from_requests(
        datasets.requests(run),
        timeout_s=info.get("client_timeout_s", DEFAULT_TIMEOUT_S) if timeout_s is None else timeout_s,
        profile=info["profile"] if with_prefix else None,
    )
    w.info["run"] = info["run"]
    return w


# ---------------------------------------------------------------------------------------------
# (b) CSV / Parquet files
# ---------------------------------------------------------------------------------------------
def numeric_column(
    df: pd.DataFrame,
    column: str,
    path: str,
    *,
    field: str | None = None,
    missing_ok: bool = False,
    min_value: float | None = None,
    whole: bool = False,
) -> pd.Series:
    """``df[column]`` as numbers; SpecError naming ``path``, the row's line in a CSV (its position
    + 2: after the header) and ``field`` (default ``column``) at the first value that is not a
    number (an empty cell is one unless ``missing_ok``), below ``min_value``, or (``whole``) not a
    whole number."""
    v = pd.to_numeric(df[column], errors="coerce")
    checks = [((v.isna() & df[column].notna()) if missing_ok else v.isna(), "not a number")]
    if min_value is not None:
        checks.append((v < min_value, f"must be >= {min_value:g}"))
    if whole:
        checks.append((v.notna() & (v != np.floor(v)), "must be a whole number"))
    for bad, what in checks:
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise SpecError(f"{what}, got {df[column].iloc[i]!r}", file=path, line=i + 2, field=field or column)
    return v


def _from_table(df: pd.DataFrame, path: str, timeout_s) -> Workload:
    need = ("arrival_time_us", "input_tokens", "output_tokens")
    for c in need:
        if c not in df.columns:
            raise SpecError(
                f"missing column (need {', '.join(need)}; optional prefix_group, prefix_length, timeout_us)", file=path, field=c
            )
    for c in need:
        df[c] = numeric_column(df, c, path, min_value=1 if c != "arrival_time_us" else None)
    for c in ("prefix_group", "prefix_length", "timeout_us"):
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    n = len(df)
    grp = df["prefix_group"].fillna(-1).to_numpy().astype(np.int64) if "prefix_group" in df.columns else np.full(n, -1)
    plen = df["prefix_length"].fillna(0).to_numpy().astype(np.int64) if "prefix_length" in df.columns else np.zeros(n)
    if "timeout_us" in df.columns:
        tmo = df["timeout_us"].fillna(-1).to_numpy().astype(np.int64)
    else:
        tmo = _timeout(n, timeout_s)
    return Workload(
        arrival_us=df["arrival_time_us"].to_numpy().astype(np.int64),
        input_tokens=df["input_tokens"].to_numpy().astype(np.int64),
        output_tokens=df["output_tokens"].to_numpy().astype(np.int64),
        prefix_group=grp,
        prefix_length=plen,
        timeout_us=tmo,
        info={"source": path},
    )


def from_csv(path, *, timeout_s: float | None = None) -> Workload:
    """Workload from a CSV with columns ``arrival_time_us, input_tokens, output_tokens`` (optional
    ``prefix_group``, ``prefix_length``, ``timeout_us``); ``timeout_s`` applies when there is no
    ``timeout_us`` column (None: no timeout)."""
    p = Path(path)
    if not p.exists():
        raise SpecError("no such file", file=str(p))
    return _from_table(_read_frame(pd.read_csv, p, "CSV"), str(p), timeout_s)


def from_parquet(path, *, timeout_s: float | None = None) -> Workload:
    """Like :func:`from_csv` for a Parquet file."""
    p = Path(path)
    if not p.exists():
        raise SpecError("no such file", file=str(p))
    return _from_table(_read_frame(pd.read_parquet, p, "Parquet"), str(p), timeout_s)


def _read_frame(reader, p: Path, what: str) -> pd.DataFrame:
    """``reader(p)``; a file the reader cannot parse (binary, empty, a directory, a corrupt
    Parquet) is a SpecError naming it (pandas / pyarrow raise OSError or ValueError subclasses)."""
    try:
        return reader(p)
    except (OSError, ValueError) as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SpecError(f"not a readable {what} file ({msg})", file=str(p)) from None


def from_file(path, *, timeout_s: float | None = None) -> Workload:
    p = str(path)
    return from_parquet(path, timeout_s=timeout_s) if p.endswith((".parquet", ".pq")) else from_csv(path, timeout_s=timeout_s)


# ---------------------------------------------------------------------------------------------
# (c) generated from an inference-perf profile
# ---------------------------------------------------------------------------------------------
#: inference-perf data types generated from length distributions (no shared prefix)
DISTRIBUTION_TYPES = ("random", "synthetic")


def _data_type(profile: dict) -> str:
    data = profile.get("data", profile)
    given = str(data.get("type", "shared_prefix")) if isinstance(data, dict) else "shared_prefix"
    t = given.lower()
    if t in ("shared_prefix", *DISTRIBUTION_TYPES):
        return t
    raise SpecError(
        f"data type {given!r} is not generated (supported: shared_prefix, {', '.join(DISTRIBUTION_TYPES)}); "
        "replay such a run from its per-request data instead (workload: requests:)",
        field="data.type",
    )


def _distribution(data: dict, key: str) -> dict:
    d = data.get(key)
    if not isinstance(d, dict):
        raise SpecError("missing (need {min, max, mean, std})", field=f"data.{key}")
    out = {"min": 1.0, "max": float("inf"), "std": 0.0}
    for k, v in d.items():
        if k in ("min", "max", "mean", "std", "total_count", "variance"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise SpecError(f"must be a non-negative number, got {v!r}", field=f"data.{key}.{k}")
            out[k] = float(v)
    if "variance" in out and "std" not in d:
        out["std"] = float(np.sqrt(out["variance"]))
    if "mean" not in out:
        raise SpecError("missing", field=f"data.{key}.mean")
    if out["max"] < out["min"]:
        raise SpecError(f"max {out['max']:g} < min {out['min']:g}", field=f"data.{key}.max")
    return out


def _draw_lengths(rng, dist: dict, n: int) -> np.ndarray:
    """inference-perf's length generator: normal(mean, std), rounded, clipped to [min, max] (>= 1)."""
    v = np.round(dist["mean"] + dist["std"] * rng.standard_normal(n))
    return np.clip(v, max(dist["min"], 1.0), dist["max"]).astype(np.int64)


def _shared_prefix(profile: dict) -> dict:
    data = profile.get("data", profile)
    sp = data.get("shared_prefix", data) if isinstance(data, dict) else None
    if not isinstance(sp, dict):
        raise SpecError("profile needs data.shared_prefix", field="data.shared_prefix")
    need = ("system_prompt_len", "question_len", "output_len")
    for k in need:
        if k not in sp:
            raise SpecError(f"missing key (need {', '.join(need)})", field=f"data.shared_prefix.{k}")
    return sp


def _stages(profile: dict) -> list[dict]:
    load = profile.get("load", profile)
    stages = load.get("stages") if isinstance(load, dict) else None
    if not stages:
        raise SpecError("profile needs load.stages [{rate, duration}, ...]", field="load.stages")
    for i, s in enumerate(stages):
        for k in ("rate", "duration"):
            if k not in s or float(s[k]) < 0:
                raise SpecError("missing or negative", field=f"load.stages[{i}].{k}")
    return stages


def calibrated_prompt(sp: dict, template=(TEMPLATE_OVERHEAD, TEMPLATE_RATIO)) -> float:
    """Mean real prompt length of a shared_prefix spec (see the module docstring)."""
    return template[0] + template[1] * (float(sp["system_prompt_len"]) + float(sp["question_len"]))


def from_inference_perf(
    profile: dict,
    seed: int = 0,
    num_requests: int | None = None,
    tokens_template=(TEMPLATE_OVERHEAD, TEMPLATE_RATIO),
    *,
    rel_sd: float = TEMPLATE_REL_SD,
    arrivals: str = "poisson",
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> Workload:
    """Generate a request stream from an inference-perf profile (``{"data": {"shared_prefix":
    ...}, "load": {"stages": [...]}}``; the ``data``/``load`` level may be omitted).

    ``data.type: random`` / ``synthetic`` (``input_distribution`` / ``output_distribution``, each
    ``{min, max, mean, std}``) draw every request's prompt and output length as inference-perf
    does, normal(mean, std) rounded and clipped to [min, max], with no shared prefix and no chat
    template. (No real run of these types is bundled: the lengths are as specified, not
    calibrated.) Other data types (dataset-driven, e.g. shareGPT) raise a SpecError: replay them
    from per-request data.

    Each stage yields ``round(rate x duration)`` requests from its nominal start (``arrivals``:
    ``"poisson"`` exponential gaps, the behaviour measured in the real runs, or ``"constant"``
    evenly spaced). ``num_requests`` keeps the first n. Prompt = ``tokens_template[0] +
    tokens_template[1] x (system_prompt_len + question_len)`` with relative sd ``rel_sd`` across the
    ``num_unique_system_prompts x num_users_per_system_prompt`` distinct prompts; each prompt is
    reused by its user's requests and cacheable whole (``prefix_group`` = prompt id).
    """
    if arrivals not in ("poisson", "constant"):
        raise SpecError(f"must be 'poisson' or 'constant', got {arrivals!r}", field="arrivals")
    dtype = _data_type(profile)
    if dtype in DISTRIBUTION_TYPES:
        data = profile.get("data", profile)
        dists = {"input": _distribution(data, "input_distribution"), "output": _distribution(data, "output_distribution")}
    else:
        sp = _shared_prefix(profile)
    stages = _stages(profile)
    rng = np.random.default_rng(seed)
    times = []
    start = 0.0
    for s in stages:
        rate, dur = float(s["rate"]), float(s["duration"])
        k = int(round(rate * dur))
        if k > 0 and rate > 0:
            if arrivals == "poisson":
                gaps = rng.exponential(1.0 / rate, size=k)
                gaps[0] = rng.uniform(0.0, 1.0 / rate) if not times else gaps[0]
                t = start + np.cumsum(gaps)
            else:
                t = start + np.arange(k) / rate
            times.append(t)
        start += dur
    t_s = np.concatenate(times) if times else np.zeros(0)
    t_s = np.sort(t_s)
    if num_requests is not None:
        t_s = t_s[: int(num_requests)]
    n = len(t_s)
    arr = np.round((t_s - (t_s[0] if n else 0.0)) * 1e6).astype(np.int64)
    if dtype in DISTRIBUTION_TYPES:
        # random token prompts: lengths as drawn (no chat template, nothing shared to cache)
        prompt = _draw_lengths(rng, dists["input"], n)
        out = _draw_lengths(rng, dists["output"], n)
        info = {
            "source": "inference_perf",
            "data_type": dtype,
            "seed": seed,
            "arrivals": arrivals,
            "stages": stages,
            "distributions": dists,
        }
        return Workload(
            arrival_us=arr,
            input_tokens=prompt,
            output_tokens=out,
            prefix_group=np.full(n, -1, np.int64),
            prefix_length=np.zeros(n, np.int64),
            timeout_us=_timeout(n, timeout_s),
            info=info,
        )
    mean_prompt = calibrated_prompt(sp, tokens_template)
    n_groups = int(sp.get("num_unique_system_prompts", 1) or 1)
    n_users = n_groups * int(sp.get("num_users_per_system_prompt", 1) or 1)
    # every (system prompt x user) pair has one fixed prompt, reused by all its requests: the
    # whole prompt is cacheable once seen (real traces: median 2-3.5 prefill tokens per request)
    user_prompt = np.maximum(1, np.round(mean_prompt * (1.0 + rel_sd * rng.standard_normal(n_users)))).astype(np.int64)
    user = rng.integers(0, n_users, size=n)
    prompt = user_prompt[user]
    group = user.astype(np.int64)
    plen = prompt.copy()
    out = np.full(n, int(sp["output_len"]), dtype=np.int64)
    info = {
        "source": "inference_perf",
        "seed": seed,
        "arrivals": arrivals,
        "stages": stages,
        "shared_prefix": dict(sp),
        "mean_prompt": mean_prompt,
    }
    return Workload(
        arrival_us=arr,
        input_tokens=prompt,
        output_tokens=out,
        prefix_group=group,
        prefix_length=plen,
        timeout_us=_timeout(n, timeout_s),
        info=info,
    )
