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

:mod:`~bayeslat.export.coefficients` writes and reads the bayeslat format, :mod:`~bayeslat.export.blis`
computes the BLIS terms, :mod:`~bayeslat.export.groups` parses a group and finds its fit rows.
"""

from __future__ import annotations

from bayeslat.export.blis import BLIS_BETA, BLIS_NOTES, TP_ALPHA, TP_BETA, blis_coefficients, hardware_datasheet, multi_gpu_rows
from bayeslat.export.coefficients import FORMAT, coefficients, export, read_export
from bayeslat.export.groups import MODEL_CLASSES, group_notes

__all__ = [
    "BLIS_BETA",
    "BLIS_NOTES",
    "FORMAT",
    "MODEL_CLASSES",
    "TP_ALPHA",
    "TP_BETA",
    "blis_coefficients",
    "coefficients",
    "export",
    "group_notes",
    "hardware_datasheet",
    "multi_gpu_rows",
    "read_export",
]
