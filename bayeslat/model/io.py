"""Reading and writing fits: ``save`` / ``load`` (netCDF), the shipped default fit
(``DEFAULT_MODEL``) and the JSON-valued attrs of a fit (``attr_json``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bayeslat import features as F
from bayeslat.errors import SpecError
from bayeslat.model.priors import FORMAT


def save(idata, path) -> Path:
    """Write a fitted InferenceData to netCDF.

    Parent directories are created. The file is written next to ``path`` and moved over it, so a
    fit loaded from ``path`` (whose arrays may still be read lazily from it) can be saved back to
    it, and a failed write leaves the old file.

    Parameters
    ----------
    idata : arviz.InferenceData
        A fit (``bayeslat.fit``).
    path : str or Path
        The netCDF file to write.

    Returns
    -------
    Path
        The path written.

    Examples
    --------
    >>> import bayeslat
    >>> bayeslat.save(idata, "models/my.nc")  # doctest: +SKIP
    """
    path = Path(path)
    if idata.attrs.get("format") != FORMAT:
        raise SpecError(f"not a bayeslat fit (format {idata.attrs.get('format')!r})", file=str(path), field="format")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        idata.to_netcdf(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load(path):
    """Read a fit written by ``save``.

    Parameters
    ----------
    path : str or Path
        A netCDF file written by ``save`` (or ``bayeslat fit``).

    Returns
    -------
    arviz.InferenceData

    Raises
    ------
    SpecError
        Naming the file (and the field): a missing file, a directory, a file that is not netCDF,
        another format, or a fit of another feature spec version (refit it with this version).

    Examples
    --------
    >>> import bayeslat
    >>> idata = bayeslat.load("models/default.nc")  # doctest: +SKIP
    """
    import arviz as az

    path = Path(path)
    if not path.exists():
        raise SpecError("no such file", file=str(path))
    if path.is_dir():
        raise SpecError("is a directory, not a fitted netCDF file", file=str(path))
    try:
        idata = az.from_netcdf(str(path))
    except (OSError, ValueError) as e:  # what netCDF4 / h5py / xarray raise for a file that is no netCDF
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SpecError(f"not a netCDF file of a bayeslat fit ({msg})", file=str(path)) from None
    fmt = idata.attrs.get("format")
    if fmt != FORMAT:
        raise SpecError(f"expected format {FORMAT!r}, got {fmt!r}", file=str(path), field="format")
    sv = idata.attrs.get("spec_version")
    if sv != F.SPEC_VERSION:
        raise SpecError(
            f"fitted on features {sv!r}, this bayeslat computes {F.SPEC_VERSION!r}: refit it (bayeslat fit) with this version",
            file=str(path),
            field="spec_version",
        )
    return idata


DEFAULT_MODEL = Path(__file__).parent.parent / "data" / "models" / "default.nc"


def load_default():
    """The shipped default fit (``models/default.nc``: the bundled real runs)."""
    return load_or_default(None)


def load_or_default(path=None):
    """Load the fit at ``path``, or the shipped default when ``path`` is None; a missing file is
    a SpecError naming it."""
    mpath = Path(path) if path else DEFAULT_MODEL
    if not mpath.exists():
        raise SpecError(
            "fitted model not found" + ("" if path else " (no default fit shipped: run `bayeslat fit` and pass --model PATH)"),
            file=str(mpath),
        )
    return load(mpath)


def put_group(idata, name: str, ds) -> None:
    """Set group ``name`` of ``idata`` to the dataset ``ds``, replacing one already there. The
    package's own groups (spreads, hardware level, probe updates) are outside the InferenceData
    schema, whose warning about it is silenced here."""
    import warnings

    if name in idata.groups():
        del idata[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata.add_groups({name: ds})


def attr_json(idata, key, default=None):
    v = idata.attrs.get(key, None)
    if v is None:
        return default
    try:
        return json.loads(v) if isinstance(v, str) else v
    except json.JSONDecodeError:
        return v
