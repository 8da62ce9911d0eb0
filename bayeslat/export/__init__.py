"""Export posterior coefficients of one group: bayeslat json / yaml, or BLIS trained-physics flags.

bayeslat format (``FORMAT``, read by :mod:`bayeslat.export.latency`): per regime and feature the
posterior mean, sd and 90% interval (q05, q95) of the coefficient in ms per scaled unit, the
feature definitions (name, unit, scale, doc), the spec version, the group (with the levels that
were not in the fit and were drawn from the population distribution) and the fit's attributes.

BLIS format (``fmt="blis"``): ``--alpha-coeffs a0,a1,a2 --beta-coeffs b0..b9`` in microseconds,
posterior means, BLIS index order (``shared/BLIS_BASIS.md``). Conversion: a coefficient ``c`` (ms
per scaled unit) times ``1000 / scale`` is microseconds per raw unit, which for our roofline
features (raw us, scale 1000) is ``c`` itself (a dimensionless efficiency, as in BLIS), and for
count features is us per layer / request / step. BLIS has one coefficient per term, ours vary by
regime: the exported value is the **load-weighted** average ``sum_r w_rf c_rf`` with ``w_rf`` the
share of feature f's total (scaled) value in the fit rows of this group that fell in regime r,
so the exported term reproduces feature f's total contribution on the fit data (uniform weights
if the group has no rows). Terms that do not map one to one are listed in ``BLIS_NOTES``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from bayeslat import features as F
from bayeslat.errors import SpecError

FORMAT = "bayeslat-coefficients/1"

# BLIS beta index -> our feature (None: no counterpart)
BLIS_BETA = ("prefill_compute", "decode_compute", "weight_load", "tp_comm", "layer_overhead", "request_overhead",
             "step_overhead", "moe_layer_overhead", "prefill_kv", "decode_kv")
BLIS_NOTES = (
    "tp_comm: ours divides all-reduce bytes by the interconnect (NVLink) bandwidth, BLIS's by HBM "
    "bandwidth; exported b3 = c_tp_comm * hbm_bw / link_bw of the group's GPU datasheet.",
    "weight_load: for MoE ours counts the experts touched by the step's tokens, BLIS all experts held "
    "per GPU; b2 is exported unchanged (BLIS's term is larger for small MoE batches).",
    "prefill_overhead (per prefill request; held at 0 by the default priors) has no BLIS term: folded "
    "into b5 (per request) with the fit rows' ratio of prefill requests to all requests.",
    "moe_dispatch (EP all-to-all) is dropped (BLIS's optional b10 defaults to b3 and only acts at DP>1).",
    "kv_offload is dropped: BLIS adds CPU<->GPU KV transfers in its tiered KV cache, not in the step.",
    "decode_kv: BLIS also counts the new token's KV write; the difference is one token per request.",
    "tp_sync_overhead (us per TP all-reduce call, 2 per layer at TP > 1) has no BLIS term: folded into "
    "b4 (per layer) as 2 x its coefficient for the TP degree given to the export (tp > 1).",
    "context_overhead (us per KV token held by the batch) has no BLIS term: folded into b9 (decode KV "
    "time) with the fit rows' ratio of KV tokens held to decode-KV roofline time, so it is exact for "
    "the group's average model, KV layout and prefill / decode mix only (prefill contexts count too).",
    "alpha: a0 = const + prompt term at the fit rows' mean prompt length + queue term at the mean queue "
    "depth (us), + the multiproc term (per request, multi-process executor) when the export's tp > 1; "
    "a1 = a2 = 0 because our step time already contains output processing (request_overhead).",
)


#: model classes of ``specs.ModelSpec.model_class``
MODEL_CLASSES = ("dense", "moe")


def _parse_group(group) -> tuple[str, str]:
    """(hardware, model_class) of 'hardware/model_class[/regime]' or a tuple; the class must be one
    the features know and the regime (exports cover every regime) one of ``features.REGIMES``."""
    if isinstance(group, str):
        parts = [p.strip() for p in group.split("/")]
        if len(parts) not in (2, 3) or not all(parts):
            raise SpecError(f"group must read 'hardware/model_class[/regime]', got {group!r}", field="group")
        if len(parts) == 3 and parts[2] not in F.REGIMES:
            raise SpecError(f"unknown regime {parts[2]!r} in group {group!r}; known: {', '.join(F.REGIMES)}", field="group")
        hw, cls = parts[0], parts[1]
    else:
        hw, cls = str(group[0]), str(group[1])
    if cls not in MODEL_CLASSES:
        raise SpecError(f"unknown model class {cls!r} in group {group!r}; known: {', '.join(MODEL_CLASSES)}", field="group")
    return hw, cls


def group_notes(idata, group) -> list[str]:
    """What an export of ``group`` rests on when the fit has not seen all of it: a hardware or
    class outside the fit gets its deviation drawn from the fitted population (exported as the
    posterior mean over those draws)."""
    hw, cls = _parse_group(group)
    post = idata.posterior
    hl = [str(v) for v in post.coords["hardware"].values]
    cl = [str(v) for v in post.coords["model_class"].values]
    notes = []
    if hw not in hl:
        notes.append(f"hardware {hw!r} was not in the fit (fitted: {', '.join(hl)}): its deviation is drawn from the "
                     "hardware population")
    if cls not in cl:
        notes.append(f"model class {cls!r} was not in the fit: its deviation is drawn from the class population")
    return notes


def _attrs(idata) -> dict:
    out = {}
    for k, v in idata.attrs.items():
        if isinstance(v, str) and v[:1] in "[{":
            try:
                out[k] = json.loads(v)
                continue
            except json.JSONDecodeError:
                pass
        out[k] = v.item() if hasattr(v, "item") else v
    return out


def _kinds(n: int) -> list:
    from bayeslat.model import KINDS

    return list(KINDS[:n]) if n <= len(KINDS) else [str(i) for i in range(n)]


def _summ(x: np.ndarray) -> dict:
    return {"mean": float(np.mean(x)), "sd": float(np.std(x, ddof=1)) if x.size > 1 else 0.0,
            "q05": float(np.quantile(x, 0.05)), "q95": float(np.quantile(x, 0.95))}


def coefficients(idata, group=("H100 SXM", "dense"), n: int | None = None, seed: int = 0) -> dict:
    """The bayeslat export as a dict (see module docstring)."""
    from bayeslat.model import coefficient_draws

    hw, cls = _parse_group(group)
    cd = coefficient_draws(idata, hw, cls, n=n, seed=seed, new_run=False)
    beta = {}
    for r, reg in enumerate(F.REGIMES):
        beta[reg] = {}
        for f, name in enumerate(F.BETA_NAMES):
            beta[reg][name] = dict(_summ(cd.beta[:, r, f]), unit=f"ms per {F.BETA_SCALE[f]:g} {F.BETA_UNITS[f]}")
    alpha = {name: dict(_summ(cd.alpha[:, a]), unit=f"ms per {F.ALPHA_SCALE[a]:g} {F.ALPHA_UNITS[a]}")
             for a, name in enumerate(F.ALPHA_NAMES)}
    return {
        "format": FORMAT,
        "spec_version": F.SPEC_VERSION,
        "group": {"hardware": hw, "model_class": cls, "new_levels": list(cd.new_levels), "draws": int(cd.beta.shape[0])},
        "beta": beta,
        "alpha": alpha,
        "noise": {"sigma_rel_step": _summ(cd.sigma_rel), "nu": _summ(np.asarray(cd.nu).reshape(len(cd.sigma_rel), -1)[:, 0]),
                  "nu_by_kind": {k: _summ(np.asarray(cd.nu).reshape(len(cd.sigma_rel), -1)[:, i])
                                 for i, k in enumerate(_kinds(np.asarray(cd.nu).reshape(len(cd.sigma_rel), -1).shape[1]))}},
        "features": {
            "beta": [{"name": n_, "unit": u, "scale": float(s), "doc": F.BETA_DOC[n_]}
                     for n_, u, s in zip(F.BETA_NAMES, F.BETA_UNITS, F.BETA_SCALE)],
            "alpha": [{"name": n_, "unit": u, "scale": float(s), "doc": F.ALPHA_DOC[n_]}
                      for n_, u, s in zip(F.ALPHA_NAMES, F.ALPHA_UNITS, F.ALPHA_SCALE)],
            "stats": list(F.STATS),
            "regimes": list(F.REGIMES),
        },
        "fit": _attrs(idata),
    }


def _group_rows(idata, hw: str, cls: str):
    if "constant_data" not in idata.groups():
        return None
    cdata = idata.constant_data
    hw_levels = [str(v) for v in idata.posterior.coords["hardware"].values]
    cls_levels = [str(v) for v in idata.posterior.coords["model_class"].values]
    X = cdata["X"].values
    A = cdata["A"].values
    if hw in hw_levels and cls in cls_levels:
        m = (cdata["hw"].values == hw_levels.index(hw)) & (cdata["cls"].values == cls_levels.index(cls))
        if m.any():
            return X[m], A[m]
    return X, A


def hardware_datasheet(hw: str):
    """The bundled datasheet (:class:`bayeslat.config.specs.HardwareSpec`) of a hardware level name, found
    as every spec is (:func:`bayeslat.config.specs.load_hardware`: package data, so an installed wheel
    finds it too), or None when no bundled datasheet has that name."""
    from bayeslat.config import specs as S
    key = S._hardware_key(hw)
    return None if key is None else S.load_hardware(key)


#: per-row features that are non-zero only at TP > 1 (beta) / with multi-process workers (alpha)
TP_BETA = ("tp_comm", "tp_sync_overhead")
TP_ALPHA = ("multiproc",)


def multi_gpu_rows(idata, group) -> tuple[int, int] | None:
    """(fit rows of the group at TP > 1, fit rows of the group), the rows as
    :func:`blis_coefficients` weights them (all rows for a group the fit has not seen); None when
    the fit keeps no rows. A row is at TP > 1 when a TP-only feature of it is non-zero."""
    hw, cls = _parse_group(group)
    rows = _group_rows(idata, hw, cls)
    if rows is None:
        return None
    X, A = rows
    multi = (X[..., [F.B[n] for n in TP_BETA]] != 0).any(axis=(1, 2)) \
        | (A[:, [F.ALPHA_NAMES.index(n) for n in TP_ALPHA]] != 0).any(axis=1)
    return int(multi.sum()), len(multi)


def blis_coefficients(idata, group=("H100 SXM", "dense"), hbm_over_link: float | None = None, tp: int = 1) -> dict:
    """BLIS trained-physics alpha (3) and beta (10) coefficients in microseconds (posterior means)."""
    from bayeslat.model import coefficient_draws

    hw, cls = _parse_group(group)
    cd = coefficient_draws(idata, hw, cls, new_run=False)
    c = cd.beta.mean(axis=0)  # (R, F) ms per scaled unit
    rows = _group_rows(idata, hw, cls)
    if rows is not None:
        load = rows[0].sum(axis=0)  # (R, F) scaled feature totals per regime
    else:
        load = np.ones_like(c)
    tot = load.sum(axis=0)
    w = np.where(tot > 0, load / np.where(tot > 0, tot, 1.0), 1.0 / len(F.REGIMES))
    c_feat = (w * c).sum(axis=0)  # (F,) ms per scaled unit
    us_per_raw = c_feat * 1000.0 / F.BETA_SCALE
    B = F.B
    betas = [float(us_per_raw[B[name]]) for name in BLIS_BETA]
    notes = list(BLIS_NOTES)
    assumptions = []
    source = "given"
    ratio = hbm_over_link
    if ratio is None:
        sheet = hardware_datasheet(hw)
        if sheet is None:
            ratio, source = 1.0, None
            assumptions.append(f"no bundled datasheet for {hw!r}: b3 (tp_comm) exported without the HBM/link "
                               "rescale (hbm_over_link = 1)")
        else:
            ratio, source = sheet.hbm_bandwidth / sheet.link_bandwidth, sheet.source
    betas[3] *= ratio
    # fold prefill_overhead (us per prefill request) into per-request overhead
    if rows is not None:
        X = rows[0].sum(axis=1)  # (n, F) scaled
        n_req = X[:, B["request_overhead"]].sum() * F.BETA_SCALE[B["request_overhead"]]
        n_pf = X[:, B["prefill_overhead"]].sum() * F.BETA_SCALE[B["prefill_overhead"]]
        frac = n_pf / n_req if n_req > 0 else 0.0
    else:
        frac = 0.0
    betas[5] += float(us_per_raw[B["prefill_overhead"]]) * frac
    # fold context_overhead (us per KV token held) into b9 (per us of decode-KV roofline time)
    if rows is not None:
        kv_us = X[:, B["decode_kv"]].sum() * F.BETA_SCALE[B["decode_kv"]]
        ctx_tok = X[:, B["context_overhead"]].sum() * F.BETA_SCALE[B["context_overhead"]]
        tok_per_kv_us = ctx_tok / kv_us if kv_us > 0 else 0.0
    else:
        tok_per_kv_us = 0.0
        if us_per_raw[B["context_overhead"]] > 0:
            assumptions.append("no fit rows for the group: context_overhead is not folded into b9")
    betas[9] += float(us_per_raw[B["context_overhead"]]) * tok_per_kv_us
    if tp > 1:
        betas[4] += 2.0 * float(us_per_raw[B["tp_sync_overhead"]])
    a = cd.alpha.mean(axis=0)  # ms per scaled unit
    ref = np.zeros(F.N_ALPHA)
    ref[0] = 1.0
    if rows is not None:
        A = rows[1]
        m = A[:, 0] > 0
        if m.any():
            ref = A[m].mean(axis=0)
    # the multi-process executor term is a property of the exported TP degree, not of the fit's mix
    ref[F.ALPHA_NAMES.index("multiproc")] = 1.0 if tp > 1 else 0.0
    a0 = float(a @ ref) * 1000.0
    return {"alpha": [a0, 0.0, 0.0], "beta": betas, "group": [hw, cls], "new_levels": list(cd.new_levels),
            "hbm_over_link": float(ratio), "hbm_over_link_source": source, "prefill_fraction": float(frac),
            "context_tokens_per_kv_us": float(tok_per_kv_us), "tp": int(tp),
            "reference_alpha_features": ref.tolist(), "notes": notes + assumptions, "assumptions": assumptions}


def export(idata, group=("H100 SXM", "dense"), fmt: str = "json", tp: int = 1) -> str:
    """Coefficients of one group as text: ``fmt`` is "json", "yaml" or "blis"."""
    if fmt == "json":
        return json.dumps(coefficients(idata, group), indent=2, default=str) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(json.loads(json.dumps(coefficients(idata, group), default=str)), sort_keys=False)
    if fmt == "blis":
        b = blis_coefficients(idata, group, tp=tp)
        lines = [f"# bayeslat -> BLIS trained-physics coefficients (us), group {b['group'][0]}/{b['group'][1]}, "
                 f"target TP {b['tp']}"
                 + (f", new levels drawn from the population: {b['new_levels']}" if b["new_levels"] else ""),
                 "# posterior means; regime coefficients averaged with feature-load weights of the fit rows"]
        lines += ["# " + n for n in b["notes"] if n not in b["assumptions"]]
        lines += ["# assumption: " + n for n in b["assumptions"]]
        fmtn = lambda xs: ",".join(f"{x:.6g}" for x in xs)  # noqa: E731
        lines.append(f"--alpha-coeffs {fmtn(b['alpha'])} --beta-coeffs {fmtn(b['beta'])}")
        return "\n".join(lines) + "\n"
    raise SpecError(f"unknown format {fmt!r} (json, yaml, blis)", field="format")


def read_export(path) -> dict:
    """Read a bayeslat json/yaml export; check its format tag."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        d = yaml.safe_load(text)
    else:
        try:
            d = json.loads(text)
        except json.JSONDecodeError:
            import yaml

            d = yaml.safe_load(text)
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise SpecError(f"expected format {FORMAT!r}", file=str(path), field="format")
    if d.get("spec_version") != F.SPEC_VERSION:
        raise SpecError(f"spec_version {d.get('spec_version')!r} != {F.SPEC_VERSION!r}", file=str(path), field="spec_version")
    return d


def _target_tp(args, idata, group) -> int:
    """The TP degree a BLIS export is for: ``--tp``, else ``--server``'s ``tensor_parallel``.
    Neither: TP 1 when every fit row of the group is at TP 1 (said on stderr), an error when any
    is at TP > 1 (b4 and a0 hold TP-dependent terms) or the fit keeps no rows to tell."""
    tp = getattr(args, "tp", None)
    server = getattr(args, "server", None)
    if server is not None:
        from bayeslat.config.specs import load_server

        s_tp = int(load_server(server).tensor_parallel)
        if tp is not None and tp != s_tp:
            raise SpecError(f"--tp {tp} disagrees with the server config's tensor_parallel {s_tp}", file=str(server),
                            field="tensor_parallel")
        return s_tp
    if tp is not None:
        return int(tp)
    hw, cls = _parse_group(group)
    rows = multi_gpu_rows(idata, group)
    if rows is None or rows[0] > 0:
        seen = "keeps no fit rows to tell the TP it was trained at" if rows is None else \
            f"has {rows[0]} of its {rows[1]} rows of group {hw}/{cls} at TP > 1"
        raise SpecError(f"the fit {seen}: the BLIS terms b4 (TP sync per layer) and a0 (multi-process executor) "
                        "depend on the target's TP degree; pass --tp N or --server CONFIG", file=str(args.model),
                        field="tp")
    print(f"bayeslat export: assuming target TP 1 (no --tp / --server; all {rows[1]} fit rows of group {hw}/{cls} "
          "are at TP 1)", file=sys.stderr)
    return 1


def cli_export(args) -> int:
    """``bayeslat export MODEL [--group H/C] [--format json|yaml|blis] [--tp N | --server CONFIG] [--out FILE]``.

    blis: stdout (or ``--out``) holds the flags alone, so ``blis run ... $(bayeslat export ...)``
    works; the comments (group, target TP, term notes, assumptions) go to stderr."""
    from bayeslat.model import load

    idata = load(args.model)
    group = "H100 SXM/dense" if args.group is None else args.group
    for note in group_notes(idata, group):
        print(f"bayeslat export: assumption: {note}", file=sys.stderr)
    if args.format == "blis":
        text = export(idata, group, "blis", tp=_target_tp(args, idata, group))
        lines = text.splitlines()
        sys.stderr.write("".join(ln + "\n" for ln in lines if ln.startswith("#")))
        text = "".join(ln + "\n" for ln in lines if not ln.startswith("#"))
    else:
        if getattr(args, "tp", None) is not None or getattr(args, "server", None) is not None:
            print(f"bayeslat export: --tp / --server change the blis format only; the {args.format} export holds "
                  "every feature's coefficients", file=sys.stderr)
        text = export(idata, group, args.format)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
