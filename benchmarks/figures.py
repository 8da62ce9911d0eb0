"""The figures of the docs site, drawn from the committed accuracy result (no fit, no simulation).

    python benchmarks/figures.py [--results benchmarks/results/validate_accuracy.json] [--fig-dir docs/figures]

Reads the per-run rows of ``validate_accuracy.json`` (variants ``lomo``, ``lowo``: refits without
the held-out model / workload; ``default``: the 11 aggregate-only runs and the in-sample replay of
the 16 training runs, shipped fit) and writes

- ``pred_vs_obs.png``: predicted (median over the draws) against observed per-run mean TTFT, ITL
  and E2E, log-log, error bars the 90% interval of the predicted mean, one row per evaluation;
- ``interval_calibration.png``: per evaluation and metric, the fraction of runs whose 90% interval
  contains the observed mean (Clopper-Pearson 90% interval of that fraction), against 0.9.

The aggregate-only runs' ITL comes from client-tokenised counts and is not scored (as in
``accuracy_tables.py``): drawn hollow in ``pred_vs_obs.png``, left out of the calibration.
``--out``: also write the numbers each figure shows as JSON (``run_all.py`` keeps it as
``benchmarks/results/figures.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
METRICS = (("ttft", "TTFT"), ("itl", "ITL"), ("e2e", "E2E"))
#: (key, title, variant, suite) in the order drawn
EVALS = (
    ("lomo", "held out: model (leave-one-model-out refits)", "lomo", "lomo"),
    ("lowo", "held out: workload (leave-one-workload-out refits)", "lowo", "lowo"),
    ("aggregate", "held out: 11 aggregate-only runs (default fit)", "default", "aggregate"),
    ("in-sample", "in-sample: replay of the 16 training runs (default fit)", "default", "replay"),
)
SHORT = {
    "lomo": "held out:\nmodel",
    "lowo": "held out:\nworkload",
    "aggregate": "held out:\naggregate-only",
    "pooled": "held out:\npooled",
    "in-sample": "in-sample\n(replay)",
}
COLORS = {"ttft": "#1f77b4", "itl": "#2ca02c", "e2e": "#d62728"}
IN_COLOR, OUT_COLOR = "#1f77b4", "#d62728"


def load(path: Path) -> dict[str, list[dict]]:
    """Evaluation key -> its per-run rows."""
    variants = json.loads(path.read_text())["variants"]
    return {key: variants[variant]["result"][suite]["runs"] for key, _, variant, suite in EVALS}


def scored(row: dict, metric: str) -> bool:
    """Whether the metric of this run is scored (the client-tokenised ITL is not)."""
    return not (metric == "itl" and row.get("itl_definition") == "client")


def coverage(rows: list[dict], metric: str) -> dict | None:
    """Runs whose 90% interval of the mean holds the observed mean, with a Clopper-Pearson 90% interval."""
    flags = [bool(r[f"{metric}_mean_in90"]) for r in rows if scored(r, metric)]
    n, k = len(flags), sum(flags)
    if not n:
        return None
    lo = float(stats.beta.ppf(0.05, k, n - k + 1)) if k > 0 else 0.0
    hi = float(stats.beta.ppf(0.95, k + 1, n - k)) if k < n else 1.0
    return {"inside": k, "runs": n, "fraction": k / n, "ci90": [lo, hi]}


def _save(fig, path: Path, dpi: int = 100) -> None:
    """PNG with a 256-colour palette (a third of the size of the RGBA one; plots have few colours)."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    plt.close(fig)
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def _short_run(run: str) -> str:
    """Run name without its timestamp prefix (``20260217-155451-``)."""
    parts = run.split("-")
    return "-".join(parts[2:]) if len(parts) > 2 and parts[0].isdigit() and len(parts[0]) == 8 else run


def _tick(v: float, _pos=None) -> str:
    return f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"


def _log_axes(ax, a: float, b: float) -> None:
    """Square log-log axes over [a, b], plain-number ticks (1-2-5 per decade where the range is short; 1000 = 1k)."""
    from matplotlib import ticker

    subs = (1.0,) if b / a > 40 else (1.0, 2.0, 5.0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(a, b)
    ax.set_ylim(a, b)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
        axis.set_major_formatter(ticker.FuncFormatter(_tick))
        axis.set_minor_formatter(ticker.NullFormatter())
    ax.set_aspect("equal")


def pred_vs_obs(evals: dict[str, list[dict]], path: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(len(EVALS), len(METRICS), figsize=(10, 12.5))
    shown: dict = {}
    for i, (key, title, _, _) in enumerate(EVALS):
        rows = evals[key]
        shown[key] = {}
        for j, (m, label) in enumerate(METRICS):
            ax = axes[i, j]
            lo_all, hi_all = [], []
            for r in rows:
                obs, pred = r[f"{m}_mean_obs"], r[f"{m}_mean_pred"]
                lo, hi = r[f"{m}_mean_lo90"], r[f"{m}_mean_hi90"]
                inside, ok = bool(r[f"{m}_mean_in90"]), scored(r, m)
                color = IN_COLOR if inside else OUT_COLOR
                ax.errorbar(
                    obs,
                    pred,
                    yerr=[[max(pred - lo, 0.0)], [max(hi - pred, 0.0)]],
                    fmt="none",
                    ecolor=color if ok else "0.6",
                    elinewidth=1,
                    capsize=2,
                    alpha=0.7,
                )
                ax.plot(
                    obs,
                    pred,
                    "^" if r["stress"] else "o",
                    ms=5.5,
                    mec=color if ok else "0.5",
                    mfc=color if ok else "none",
                    alpha=0.9,
                )
                lo_all += [obs, lo]
                hi_all += [obs, hi]
                shown[key].setdefault(_short_run(r["run"]), {})[m] = {
                    "obs": obs,
                    "pred": pred,
                    "lo90": lo,
                    "hi90": hi,
                    "inside": inside,
                    "scored": ok,
                }
            a, b = min(lo_all) / 1.5, max(hi_all) * 1.5
            ax.plot([a, b], [a, b], color="0.3", lw=0.8, ls="--", zorder=0)
            _log_axes(ax, a, b)
            ax.grid(True, which="major", color="0.9", lw=0.6)
            ax.set_xlabel(f"observed mean {label} (ms)", fontsize=9)
            ax.set_ylabel(f"predicted mean {label} (ms)", fontsize=9)
            ax.tick_params(labelsize=8)
            c = coverage(rows, m)
            sub = f"{c['inside']} / {c['runs']} inside" if c else "client ITL: not scored"
            ax.set_title(f"{label}, {key}: {sub}", fontsize=9.5)
        # the evaluation's name above its row
        axes[i, 1].annotate(
            title,
            xy=(0.5, 1.0),
            xycoords="axes fraction",
            xytext=(0, 22),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=11,
            fontweight="bold",
        )
    handles = [
        Line2D([], [], ls="", marker="o", color=IN_COLOR, label="90% interval holds the observed mean"),
        Line2D([], [], ls="", marker="o", color=OUT_COLOR, label="observed mean outside the 90% interval"),
        Line2D([], [], ls="", marker="^", color="0.3", label="stress run (overloaded reasoning)"),
        Line2D([], [], ls="", marker="o", mec="0.5", mfc="none", label="client-tokenised ITL (not scored)"),
        Line2D([], [], ls="--", color="0.3", lw=0.8, label="y = x"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle("Predicted (median over 40 draws, error bars: 90% interval) against observed per-run means", fontsize=12)
    fig.tight_layout(rect=(0, 0.035, 1, 0.975), h_pad=2.6, w_pad=1.0)
    _save(fig, path)
    return shown


def interval_calibration(evals: dict[str, list[dict]], path: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {k: evals[k] for k in ("lomo", "lowo", "aggregate")}
    groups["pooled"] = [r for k in ("lomo", "lowo", "aggregate") for r in evals[k]]
    groups["in-sample"] = evals["in-sample"]
    cov = {g: {m: coverage(rows, m) for m, _ in METRICS} for g, rows in groups.items()}
    order = ("e2e", "ttft", "itl")
    fig, ax = plt.subplots(figsize=(10, 5.6))
    width = 0.26
    for gi, g in enumerate(groups):
        for mi, m in enumerate(order):
            x = gi + (mi - 1) * width
            c = cov[g][m]
            if c is None:
                ax.text(x, 0.03, "n/a\n(client\nITL)", ha="center", va="bottom", fontsize=7, color="0.4")
                continue
            lo, hi = c["ci90"]
            ax.bar(x, c["fraction"], width * 0.92, color=COLORS[m], alpha=0.85 if g != "in-sample" else 0.45)
            ax.errorbar(
                x,
                c["fraction"],
                yerr=[[c["fraction"] - lo], [hi - c["fraction"]]],
                fmt="none",
                ecolor="0.2",
                elinewidth=1,
                capsize=3,
            )
            ax.text(x, hi + 0.015, f"{c['inside']}/{c['runs']}", ha="center", va="bottom", fontsize=7.5)
    ax.axhline(0.9, color="0.2", ls="--", lw=1, label="nominal 0.9")
    ax.axvline(len(groups) - 1.5, color="0.7", lw=0.8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([SHORT[g] + f"\n({len(rows)} runs)" for g, rows in groups.items()], fontsize=9)
    ax.set_ylim(0, 1.12)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0])
    ax.set_ylabel("fraction of runs whose 90% interval\nholds the observed mean", fontsize=9.5)
    ax.bar(0, 0, color=COLORS["e2e"], label="mean E2E")
    ax.bar(0, 0, color=COLORS["ttft"], label="mean TTFT")
    ax.bar(0, 0, color=COLORS["itl"], label="mean ITL")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), fontsize=9, ncol=4, frameon=False)
    ax.set_title(
        "Coverage of the 90% interval of the predicted per-run mean\n"
        "(labels: runs inside / runs; error bars: Clopper-Pearson 90% interval of the fraction)",
        fontsize=10.5,
    )
    ax.grid(True, axis="y", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    fig.tight_layout()
    _save(fig, path)
    return cov


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="benchmarks/results/validate_accuracy.json", help="validate_accuracy result")
    ap.add_argument("--fig-dir", default="docs/figures", help="where the PNGs go")
    ap.add_argument("--out", default=None, help="also write the numbers shown as JSON")
    a = ap.parse_args(argv)
    src = Path(a.results)
    evals = load(src if src.is_absolute() else ROOT / src)
    fig_dir = Path(a.fig_dir) if Path(a.fig_dir).is_absolute() else ROOT / a.fig_dir
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    shown = {}
    for name, draw in (("pred_vs_obs", pred_vs_obs), ("interval_calibration", interval_calibration)):
        path = fig_dir / f"{name}.png"
        shown[name] = draw(evals, path)
        written[name] = {
            "path": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            "bytes": path.stat().st_size,
        }
        print(f"wrote {written[name]['path']} ({written[name]['bytes'] / 1024:.0f} kB)")
    for g, c in shown["interval_calibration"].items():
        print(
            f"  {g:10s} "
            + "  ".join(
                f"{m.upper()} {c[m]['inside']}/{c[m]['runs']}" if c[m] else f"{m.upper()} n/a" for m in ("e2e", "ttft", "itl")
            )
        )
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"source": a.results, "figures": written, "shown": shown}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
