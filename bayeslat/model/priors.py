"""The model's constants and priors: the fit format, the row kinds, the deployment-level modes,
the default priors and their validation (:func:`_merge_priors`)."""

from __future__ import annotations

import json

import numpy as np

from bayeslat import features as F
from bayeslat.errors import SpecError

FORMAT = "bayeslat-posterior/1"
KINDS = ("step", "window", "ttft", "alpha")
DEPLOYMENT_LEVELS = ("spread", "fit", "off")
ARD_PRIORS = ("betaprime", "horseshoe")
SYS_KINDS = KINDS[:2]  # kinds with a systematic relative noise term s_sys (multi-step rows)

DEFAULT_PRIORS = {
    # beta_pop[f] / beta_scale[f] ~ BetaPrime(shape_a, shape_b), beta_scale in ms per scaled unit; with
    # shape (1/2, 2) the prior median is 0.14 x beta_scale and the 95th percentile 1.9 x
    # (small medians: mass near zero prunes what the data do not support; the x^-1.5 tail leaves
    # well-identified terms unshrunk)
    # Scales are the physically plausible magnitudes (bambi-style tiers scaled to the units):
    # roofline terms are efficiency multipliers (1 = exactly the roofline time); layer / MoE-layer
    # overheads in ms per 100 layers (BLIS: ~3 ms); request overhead ms per 100 requests; the
    # step constant in ms; prefill overhead in ms per 10 prefilling requests; context overhead in
    # ms per 100k KV tokens held (2 ms = 20 ns per token).
    "beta_scale": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 0.5, 2.0, 0.5, 0.5, 2.0, 2.0],
    "alpha_scale": [2.0, 0.5, 0.5, 2.0],
    # alpha features with a LogNormal(log median, sd) prior instead of the sparsity prior:
    # {name: [median (ms per scaled unit), sd of the log]}. The intercept: vLLM's API server
    # always spends some ms between arrival and queueing (HTTP, tokenisation, scheduling);
    # 90% prior range 0.4-10 ms. The prompt tokens: every request's prompt is tokenised and
    # validated on the API server's CPU, a cost that is never absent; 2 ms per 1000 tokens
    # (2 us per token, a fast BPE tokenizer's ~0.5M tokens/s per core), 90% range 0.4-10 ms.
    # Under the sparsity prior its spike at 0 and the intercept formed a curved ridge on the
    # TTFT bins (correlation -0.87): tail ESS 160 in 6,000 draws; with this prior 648 in 4,000.
    "alpha_lognormal": {"const": [2.0, 1.0], "prompt_tokens": [2.0, 1.0]},
    # beta features with a LogNormal(log median, sd) physics prior instead of the sparsity prior
    # (same form). tp_sync_overhead: one TP all-reduce call of a decode-sized message costs a
    # few to ~20 us of latency (vLLM's custom all-reduce on NVLink), 1.0 ms per 100 calls = 10 us,
    # 90% prior range 4.4-23 us. Under the sparsity prior it was only separated from
    # layer_overhead by the one TP1 model: without it (leave-one-model-out) tp_sync went
    # 1.06 -> 3.89 and layer_overhead 5.9 -> 0.79, and the TP1 model's fixed step cost came out
    # 1.5x too small.
    # decode_kv: the decode-attention kernel's time per KV byte relative to the HBM roofline,
    # measured on H100 microbenchmarks of FlashAttention decode (shared/data/bench/mha/decode,
    # benchmarks/kernel_priors.py: slope 1.04-1.08 x roofline over 6 head layouts x TP 1/2/4, plus a
    # 20-80 us floor per call); LogNormal(log 1.05, 0.25) leaves room for other GPUs and
    # kernels. Under the sparsity prior decode_kv and context_overhead (both grow with the
    # decode contexts) traded off freely.
    # decode_compute: the decode GEMMs' time per FLOP beyond the weight-bound floor. Its column
    # grows with the batch like the request and context terms, so the bundled runs alone prune it
    # (posterior 0.004 under the sparsity prior), and every GPU with a lower FLOP / byte ridge
    # than the H100 then runs its large decode batches too fast. The real H100 kernels time it:
    # the decode-step kernel sums of 11 BF16 model specs x TP 1-8 x batch 1-256 x 3 contexts,
    # regressed on the step features (benchmarks/kernel_step_priors.py), give 0.13 (model-spec
    # bootstrap 0.04-0.23); sd 0.7 puts that range's lower end inside the prior's 90% interval
    # (0.04-0.41), which the H100 step rows then narrow.
    "beta_lognormal": {"tp_sync_overhead": [1.0, 0.5], "decode_kv": [1.05, 0.25], "decode_compute": [0.13, 0.7]},
    # beta features without a model-class deviation (shared by the classes of a hardware level).
    # context_overhead: a per-token software cost of the engine, not of the model's shapes; with
    # one MoE deployment its class deviation and decode_kv's were collinear (the MoE runs'
    # decode contexts drive both): R-hat 1.022, bulk ESS 50 in the default fit.
    "no_class_deviation": ["context_overhead"],
    # BetaPrime(1/2, b): the horseshoe's spike at zero (ARD pruning); b = 2 regularises the tail
    # (x^-3 instead of the horseshoe's x^-1.5, cf. the regularised horseshoe's slab) so weakly
    # identified terms do not send NUTS into a Cauchy tail.
    "shape_a": 0.5,
    "shape_b": 2.0,
    # the sparsity prior of the population coefficients (model.build._ard): "betaprime" (above) or
    # "horseshoe", the regularised horseshoe with global scale HalfCauchy(hs_tau0) (coefficients
    # in units of beta_scale / alpha_scale, so O(1)) and a Student-t(hs_slab_df) slab of scale
    # hs_slab_scale. Compared by leave-one-model-out and PSIS-LOO in
    # benchmarks/prior_comparison.py (docs/results.md).
    "ard_prior": "betaprime",
    "hs_tau0": 0.5,
    "hs_slab_scale": 2.0,
    "hs_slab_df": 4.0,
    # features the training data never exercise (all-zero columns, e.g. CPU offload or EP
    # dispatch when no run used them) keep a physics prior instead of the sparsity prior:
    # LogNormal(log(physics_prior_median), physics_prior_sd) -> they transfer as roofline time.
    "physics_prior_median": 1.0,
    "physics_prior_sd": 0.5,
    # medians of the log-normal priors of the multiplicative (log-scale) deviation scales
    "sigma_hw": 0.2,
    "sigma_cls": 0.3,
    "sigma_regime": 0.2,
    # regimes nested under model class (the mission's hardware -> class -> regime): each class's
    # regime factor deviates from the shared one by a zero-sum N(0, sigma_regime_cls) over the
    # classes. Off by default: benchmarks/prereg/s39_regime_by_class.md and docs/results.md
    "regime_by_class": False,
    "sigma_regime_cls": 0.1,
    "sigma_alpha_hw": 0.2,
    "sigma_alpha_cls": 0.3,
    "sigma_log_sd": 0.5,
    # run-level multiplicative deviation: sigma_run ~ HalfNormal(sigma_run). Tight on purpose:
    # with HalfNormal(0.1) the run factors absorbed the model-to-model differences (7B 0.79,
    # 70B 1.18; sigma_run 0.17) that the physics features explain to ~2%, which broke transfer.
    # Default 0 = off: measured, it made accuracy worse. In-sample E2E error 18.6% with it,
    # 1.6% without; on the 11 aggregate-only runs, 16% vs 2.0%. Honest intervals need another
    # source of run-level spread (the run-spread stage, model.spread).
    "sigma_run": 0.0,
    # deployment level (model x GPU x TP x dtype, features.deployment_key): one multiplicative
    # factor on the step time (beta part) and one on the CPU / queueing part (alpha) per
    # deployment, zero-sum within each (hardware, class) group so that it cannot absorb the
    # group's coefficients, only what makes one model of a class faster or slower than the
    # physics features say (kernel efficiency of its shapes). A new deployment draws its factors
    # from N(0, sigma_dep): the honest width of a prediction for a model / TP never run. Prior
    # medians from BLIS trained-physics' held-out errors across models (E2E ~7%, TTFT ~18%), not
    # from our runs; sigma_log_sd (0.5) lets the data move them.
    "sigma_dep": 0.07,
    "sigma_alpha_dep": 0.15,
    # How the deployment level enters (measured on leave-one-model-out, docs/method.md):
    # "fit": its factors are in the likelihood. They absorb the cross-model contrasts that
    #   identify the per-deployment constant features (weights, layers, TP sync): held-out median
    #   E2E error 27% (coverage 94%) vs 9.8% without.
    # "spread" (default): the coefficients are fit without it; sigma_dep / sigma_alpha_dep are
    #   estimated afterwards on a grid ("cut" / modular inference: no feedback into the
    #   coefficients; spread.estimate_deployment_spread) from held-out deployments (calibrate) or
    #   the fit's residuals, and scale the factor a new deployment draws. With no degree of
    #   freedom left after what the coefficients absorb, the prior above stands.
    # "off": no deployment spread (parameter uncertainty only).
    "deployment_level": "spread",
    # noise: s_abs[k] ~ HalfNormal(s_abs_frac * median(y_k)); s_rel[k] ~ HalfNormal(s_rel)
    "s_abs_frac": 0.5,
    "s_rel": 0.3,
    # s_sys[k] ~ HalfNormal(s_sys): relative error common to all steps of a row
    "s_sys": 0.05,
    # nu[kind] = 2 + nu_m2[kind], nu_m2 ~ Gamma(nu_alpha, nu_beta) (mean 10): the location is the mean (nu > 2).
    # Mean 10, not 20: the traced-step rows are near Gaussian but for rare slow steps; with the
    # prior mean at 20 one 12-step window of 70B general at +10% of its prediction (6 sigma of the
    # step noise) had Pareto k 0.84 (nu 13 [5, 27]); at mean 10: k 0.67-0.69, nu 9.8, coefficients
    # unchanged to 1%. Windows and TTFT rows sit at nu ~2.1 under either prior.
    "nu_alpha": 2.0,
    "nu_beta": 0.2,
    # beta features held at 0 (not fitted). step_overhead: a constant per step is not identified
    # next to layer_overhead (L), tp_sync_overhead (2L at TP > 1) and weight loading when the
    # training set has fewer deployments than per-deployment constants (the 4 bundled ones);
    # measured on the real data: bulk ESS 8-35 along that ridge for any prior shape. Fitting data
    # with more deployments can release it: priors={"exclude_features": []}.
    # prefill_overhead: with chunked prefill a step holds 1-2 prefilling requests at these budgets,
    # so the count is identified only by the mixed-vs-decode contrast, which the regime factor
    # already carries; next to context_overhead (prefill contexts) it was pruned anyway.
    "exclude_features": ["step_overhead", "prefill_overhead"],
}


def _merge_priors(priors: dict | None) -> dict:
    p = json.loads(json.dumps(DEFAULT_PRIORS))
    for k, v in (priors or {}).items():
        if k not in p:
            raise SpecError(f"unknown prior {k!r}; known: {sorted(p)}", field="priors")
        p[k] = v
    if p["ard_prior"] not in ARD_PRIORS:
        raise SpecError(f"ard_prior must be one of {ARD_PRIORS}, got {p['ard_prior']!r}", field="priors")
    for k in ("hs_tau0", "hs_slab_scale", "hs_slab_df"):
        if not float(p[k]) > 0:
            raise SpecError(f"{k} must be > 0, got {p[k]!r}", field="priors")
    if p["deployment_level"] not in DEPLOYMENT_LEVELS:
        raise SpecError(f"deployment_level must be one of {DEPLOYMENT_LEVELS}, got {p['deployment_level']!r}", field="priors")
    for key in ("exclude_features", "no_class_deviation"):
        unknown = sorted(set(p[key]) - set(F.BETA_NAMES))
        if unknown:
            raise SpecError(f"{key}: unknown beta features {unknown}; known: {list(F.BETA_NAMES)}", field="priors")
    for key, names in (("alpha_lognormal", F.ALPHA_NAMES), ("beta_lognormal", F.BETA_NAMES)):
        ln = p[key] or {}
        bad = sorted(set(ln) - set(names))
        if bad:
            raise SpecError(f"{key}: unknown features {bad}; known: {list(names)}", field="priors")
        for k, v in ln.items():
            if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) and x > 0 for x in v)):
                raise SpecError(f"{key}[{k!r}] must be [median > 0, sd > 0], got {v!r}", field="priors")
    for k, names in (("beta_scale", F.BETA_NAMES), ("alpha_scale", F.ALPHA_NAMES)):
        v = np.asarray(p[k], dtype=float)
        if v.ndim > 1 or (v.ndim == 1 and v.size not in (1, len(names))):
            raise SpecError(
                f"{k} must be one number or {len(names)} ({', '.join(names)}), got {v.size}: {p[k]!r}", field="priors"
            )
        p[k] = [float(x) for x in np.broadcast_to(v, (len(names),))]
    return p
