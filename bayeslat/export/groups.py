"""Groups of a fit: a 'hardware/model_class[/regime]' name parsed, what an export of it rests on
when the fit has not seen it, and the fit rows of the group."""

from __future__ import annotations

from bayeslat import features as F
from bayeslat.errors import SpecError

#: model classes of ``bayeslat.config.ModelSpec.model_class``
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
        notes.append(
            f"hardware {hw!r} was not in the fit (fitted: {', '.join(hl)}): its deviation is drawn from the hardware population"
        )
    if cls not in cl:
        notes.append(f"model class {cls!r} was not in the fit: its deviation is drawn from the class population")
    return notes


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
