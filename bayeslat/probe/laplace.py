"""The numerical engine of a probe update: the Student-t log density of the rows, the
probe's importance weights of the posterior draws (:func:`probe_level_weights`), the log
posterior of a probe deployment's factors (:class:`_ProbePosterior`) and its Laplace
approximation (:func:`_laplace`).
"""

from __future__ import annotations

import numpy as np


def _dlogt(mu, y, sab, crel, nu):
    """d/dmu of the Student-t log density with location mu and scale sab + crel * mu."""
    s = sab + crel * mu
    r = (y - mu) / s
    return (nu + 1.0) * r * (1.0 + r * crel) / (nu * s * (1.0 + r * r / nu)) - crel / s


def _logt(mu, y, sab, crel, nu):
    s = sab + crel * mu
    return -(nu + 1.0) / 2.0 * np.log1p(((y - mu) / s) ** 2 / nu) - np.log(s)


# Degrees of freedom of the (multivariate Student-t) level likelihood of probe_level_weights. A
# probe's levels can be far off for reasons no draw explains: the saturated reasoning runs' TTFT
# rows carry waits before scheduling (log level +1 and more). Under a Gaussian those probes put
# all weight on a handful of draws (held-out 70B and Mixtral reasoning: effective sample size 1%
# and 0.1% of 2000; Mixtral reasoning's E2E interval shrank from 93% to 4% wide and missed).
PROBE_LEVEL_NU = 4.0
#: Pareto k above which the probe's importance weights are not trusted (Vehtari et al., "Pareto
#: smoothed importance sampling", 2024: above 0.7 the estimate's error no longer falls usefully with
#: the number of draws); ``reweight="auto"`` then keeps equal weights (the deployment factors alone)
PSIS_K_MAX = 0.7
# Prior probability that a probe of a deployment the fit was trained on is a new run of it (its
# run factor within the fit's between-run spread), against a changed deployment (a factor with
# the between-deployment spread: what the deployment key does not see, a new vLLM version, chunk
# size or driver). Even odds, set before measuring; the probe's evidence decides.
RUN_LEVEL_PRIOR = 0.5


def probe_level_weights(parts, y, kind_of_row, kinds, sig, tau, off, sab, crel, nu):
    """Importance weights of the posterior draws given the probe's *level* per row kind.

    For draw d and kind k, ``r = log(sum y / sum mu)`` with mu the draw's prediction of the probe
    rows (factors at 1). Linearised, ``r = a_step b + a_cpu a + e_k + noise``: the deployment
    factors (prior SDs ``sig``), the slice error ``e_k ~ N(off_k, tau_k)`` and the rows' sampling
    noise of the sum. The weight is the density at r of a multivariate Student-t with that
    covariance and :data:`PROBE_LEVEL_NU` degrees of freedom (the draw's marginal likelihood of the
    probe's levels, robust to a level no draw explains). Only levels, not the rows' pattern: a few
    hundred rows would otherwise pick the draws whose shape fits the probe's rows, which is where
    the model misfits (see :data:`POOLED_PROBE_KINDS`). Draws of an unseen GPU or class whose step
    time is 30% off are ruled out by a probe; a trained deployment's draws, all within a few % of
    each other, keep nearly equal weights. Returns the unnormalised log weights, (D,)
    (:func:`update_deployment` Pareto-smooths and normalises them)."""
    D, K = parts.shape[0], len(kinds)
    r, A, v = np.empty((D, K)), np.empty((D, K, 2)), np.empty((D, K))
    for j, kk in enumerate(kinds):
        m = kind_of_row == kk
        P = parts[:, :, m].sum(axis=2)  # (D, 3): fixed, load, CPU
        mu = np.maximum(P.sum(axis=1), 1e-300)
        r[:, j] = np.log(max(float(y[m].sum()), 1e-300)) - np.log(mu)
        A[:, j, 0], A[:, j, 1] = (P[:, 0] + P[:, 1]) / mu, P[:, 2] / mu
        sc = sab[:, m] + crel[:, m] * parts[:, :, m].sum(axis=1)
        nk = nu[:, m]
        vt = np.where(nk > 2.5, nk / np.maximum(nk - 2.0, 1e-9), 5.0)  # Student-t variance / scale^2
        v[:, j] = (sc**2 * vt).sum(axis=1) / mu**2
    S = np.einsum("dkp,dp,dlp->dkl", A, np.stack([sig[0] ** 2, sig[1] ** 2], axis=1), A)
    S = S + np.diag(np.asarray(tau, float) ** 2)[None] + v[:, :, None] * np.eye(K)[None]
    diff = r - np.asarray(off, float)[None, :]
    Q = np.einsum("dk,dkl,dl->d", diff, np.linalg.inv(S), diff)
    nu_l = PROBE_LEVEL_NU
    return -0.5 * np.linalg.slogdet(S)[1] + (-0.5 * Q if not np.isfinite(nu_l) else -0.5 * (nu_l + K) * np.log1p(Q / nu_l))


class _ProbePosterior:
    """Log posterior of a probe deployment's log factors, its gradient and Hessian, for all draws.

    theta (D, 3 + K): log factors on the fixed and load parts of the step time and on the CPU
    time, then one log slice error per row kind of the probe. Row i:
    ``mu_i = exp(e_k(i)) * sum_p exp(theta_p) parts_p,i`` under the fit's Student-t likelihood;
    priors N(pmean, psd) (pmean: 0 for the factors, the probe calibration's offset for the slice errors)."""

    def __init__(self, parts, y, kind_of_row, kinds, sab, crel, nu, psd, pmean=None):
        self.parts, self.y, self.sab, self.crel, self.nu, self.psd = parts, y, sab, crel, nu, psd
        self.pmean = np.zeros_like(psd) if pmean is None else pmean
        self.E = (kind_of_row[None, :] == np.asarray(kinds)[:, None]).astype(float)  # (K, n)

    def _mu(self, theta):
        """(mu, exp(slice error) of each row), each (D, n)."""
        ee = np.exp(theta[:, 3:] @ self.E)
        return np.einsum("dp,dpn->dn", np.exp(theta[:, :3]), self.parts) * ee, ee

    def logp(self, theta):
        return _logt(self._mu(theta)[0], self.y, self.sab, self.crel, self.nu).sum(axis=1) - 0.5 * (
            ((theta - self.pmean) / self.psd) ** 2
        ).sum(axis=1)

    def grad_hess(self, theta):
        """Gradient (D, P) and Hessian (D, P, P): chain rule through mu_i, with the row-wise second
        derivative of the Student-t density by a central difference (exact to ~1e-8)."""
        mu, ee = self._mu(theta)
        args = (self.y, self.sab, self.crel, self.nu)
        l1 = _dlogt(mu, *args)
        h = 1e-5 * np.maximum(mu, 1e-9)
        l2 = (_dlogt(mu + h, *args) - _dlogt(mu - h, *args)) / (2 * h)
        # dmu/dtheta: G_p = exp(e) exp(theta_p) part_p for the three factors, mu * [kind] for slices
        G = np.concatenate(
            [np.exp(theta[:, :3])[:, :, None] * self.parts * ee[:, None, :], mu[:, None, :] * self.E[None, :, :]], axis=1
        )  # (D, P, n)
        g = np.einsum("dn,dpn->dp", l1, G) - (theta - self.pmean) / self.psd**2
        H = np.einsum("dn,dpn,dqn->dpq", l2, G, G)
        # second derivatives of mu: d2/dtheta_p^2 = G_p; d2/dtheta_p de_k = G_p [kind k]; d2/de_k^2 = mu [kind k]
        P, K = theta.shape[1], self.E.shape[0]
        lG = np.einsum("dn,dpn->dp", l1, G[:, :3])
        H[:, np.arange(3), np.arange(3)] += lG
        for k in range(K):
            c = np.einsum("dn,dpn->dp", l1 * self.E[k][None, :], G[:, :3])
            H[:, :3, 3 + k] += c
            H[:, 3 + k, :3] += c
            H[:, 3 + k, 3 + k] += np.einsum("dn,dn->d", l1 * self.E[k][None, :], mu)
        H[:, np.arange(P), np.arange(P)] -= 1.0 / self.psd**2
        return g, H


def _laplace(post_fn, pmean, psd, newton_steps):
    """Mode and Laplace approximation of a :class:`_ProbePosterior` for every draw at once:
    (theta (D, P), Cholesky factor of the covariance (D, P, P), gradient at the mode, log
    evidence (D,)). Damped Newton from the prior mean (always an ascent direction: the Hessian's
    eigenvalues are clipped below the prior's curvature). The log evidence is
    ``log p(y, theta*) + 1/2 log det(2 pi cov)`` with the Gaussian prior normalised (the
    likelihood's own constants are left out: they are the same under any prior of the factors)."""
    theta = pmean.copy()
    floor = 1.0 / (4.0 * psd.max()) ** 2
    f0 = post_fn.logp(theta)
    for _ in range(newton_steps):
        g, H = post_fn.grad_hess(theta)
        step = -np.linalg.solve(_neg_definite(H, floor), g[..., None])[..., 0]
        step *= np.minimum(1.0, 0.5 / np.maximum(np.abs(step).max(axis=1, keepdims=True), 1e-12))
        best, fbest = theta, f0
        for t in 2.0 ** -np.arange(10):
            cand = theta + t * step
            fc = post_fn.logp(cand)
            better = fc > fbest
            best = np.where(better[:, None], cand, best)
            fbest = np.where(better, fc, fbest)
        moved = np.abs(best - theta).max()
        theta, f0 = best, fbest
        if moved < 1e-6:
            break
    g, H = post_fn.grad_hess(theta)
    cov = np.linalg.inv(-_neg_definite(H, floor))
    L = np.linalg.cholesky(0.5 * (cov + np.swapaxes(cov, 1, 2)))
    logz = (
        post_fn.logp(theta)
        - np.log(np.broadcast_to(psd, theta.shape)).sum(axis=1)
        + np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
    )
    return theta, L, g, logz


def _neg_definite(H, floor):
    """H with its eigenvalues clipped to <= -floor (a Newton step that always ascends)."""
    w, V = np.linalg.eigh(H)
    w = np.minimum(w, -floor)
    return np.einsum("dij,dj,dkj->dik", V, w, V)
