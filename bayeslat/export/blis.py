"""BLIS trained-physics coefficients of one group: our regime- and feature-wise posterior folded
into BLIS's alpha (3) and beta (10) terms in microseconds (see :mod:`bayeslat.export`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bayeslat import features as F
from bayeslat.config import hardware_key, load_hardware, load_server
from bayeslat.errors import SpecError
from bayeslat.export.groups import _group_rows, _parse_group
from bayeslat.model import coefficient_draws

# BLIS beta index -> our feature (None: no counterpart)
BLIS_BETA = (
    "prefill_compute",
    "decode_compute",
    "weight_load",
    "tp_comm",
    "layer_overhead",
    "request_overhead",
    "step_overhead",
    "moe_layer_overhead",
    "prefill_kv",
    "decode_kv",
)
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


def hardware_datasheet(hw: str):
    """The bundled datasheet (:class:`bayeslat.config.HardwareSpec`) of a hardware level name, found
    as every spec is (:func:`bayeslat.config.load_hardware`: package data, so an installed wheel
    finds it too), or None when no bundled datasheet has that name."""
    key = hardware_key(hw)
    return None if key is None else load_hardware(key)


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
    multi = (X[..., [F.B[n] for n in TP_BETA]] != 0).any(axis=(1, 2)) | (
        A[:, [F.ALPHA_NAMES.index(n) for n in TP_ALPHA]] != 0
    ).any(axis=1)
    return int(multi.sum()), len(multi)


def blis_coefficients(idata, group=("H100 SXM", "dense"), hbm_over_link: float | None = None, tp: int = 1) -> dict:
    """BLIS trained-physics alpha (3) and beta (10) coefficients in microseconds (posterior means)."""
    hw, cls = _parse_group(group)
    cd = coefficient_draws(idata, hw, cls, new_run=False, tensor_parallel=tp)
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
            assumptions.append(
                f"no bundled datasheet for {hw!r}: b3 (tp_comm) exported without the HBM/link rescale (hbm_over_link = 1)"
            )
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
    return {
        "alpha": [a0, 0.0, 0.0],
        "beta": betas,
        "group": [hw, cls],
        "new_levels": list(cd.new_levels),
        "hbm_over_link": float(ratio),
        "hbm_over_link_source": source,
        "prefill_fraction": float(frac),
        "context_tokens_per_kv_us": float(tok_per_kv_us),
        "tp": int(tp),
        "reference_alpha_features": ref.tolist(),
        "notes": notes + assumptions,
        "assumptions": assumptions,
    }


def target_tp(idata, group, tp: int | None = None, server=None, *, file: str | None = None) -> tuple[int, str | None]:
    """The TP degree a BLIS export is for, and the assumption made to get it (None: none made).

    ``tp``, else the ``tensor_parallel`` of ``server`` (a server config YAML, key or dict); with
    neither, TP 1 when every fit row of the group is at TP 1, and a SpecError when any is at TP > 1
    or the fit keeps no rows to tell (b4 and a0 hold TP-dependent terms). ``file`` is named in the
    errors (the fit's path)."""
    if server is not None:
        s_tp = int(load_server(server).tensor_parallel)
        if tp is not None and tp != s_tp:
            raise SpecError(
                f"--tp {tp} disagrees with the server config's tensor_parallel {s_tp}",
                file=str(server) if isinstance(server, (str, Path)) else None,
                field="tensor_parallel",
            )
        return s_tp, None
    if tp is not None:
        return int(tp), None
    hw, cls = _parse_group(group)
    rows = multi_gpu_rows(idata, group)
    if rows is None or rows[0] > 0:
        seen = (
            "keeps no fit rows to tell the TP it was trained at"
            if rows is None
            else f"has {rows[0]} of its {rows[1]} rows of group {hw}/{cls} at TP > 1"
        )
        raise SpecError(
            f"the fit {seen}: the BLIS terms b4 (TP sync per layer) and a0 (multi-process executor) "
            "depend on the target's TP degree; pass --tp N or --server CONFIG",
            file=file,
            field="tp",
        )
    return 1, f"assuming target TP 1 (no --tp / --server; all {rows[1]} fit rows of group {hw}/{cls} are at TP 1)"
