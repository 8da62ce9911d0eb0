"""``bayeslat export``: the target's TP degree is never assumed silently, BLIS flags alone on
stdout (``$(bayeslat export ...)``), and GPU datasheets found as package data."""

import json
import shlex

import numpy as np
import pytest

from bayeslat import cli
from bayeslat import config as S
from bayeslat import export as E
from bayeslat import features as F
from bayeslat import model as M

GROUP = "H100 SXM/dense"  # the shipped fit's dense rows: Llama-2-7B TP 1, CodeLlama-34B TP 2, Llama-2-70B TP 4


@pytest.fixture(scope="module")
def default():
    return M.load_default()


@pytest.fixture(scope="module")
def fit_path(default, tmp_path_factory):
    """The shipped fit without its pointwise log-likelihood (not read by export): a file that
    loads faster."""
    small = default.copy()
    del small["log_likelihood"]
    return str(M.save(small, tmp_path_factory.mktemp("fit") / "default.nc"))


def _export(capsys, path, *args):
    rc = cli.main(["export", path, "--group", GROUP, "--format", "blis", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _flags(out: str) -> dict:
    tok = shlex.split(out)
    assert tok[0::2] == ["--alpha-coeffs", "--beta-coeffs"] and len(tok) == 4, out
    return {"alpha": [float(x) for x in tok[1].split(",")], "beta": [float(x) for x in tok[3].split(",")]}


def test_blis_needs_the_target_tp_when_the_group_was_fit_at_tp_gt1(default, fit_path, capsys):
    """Before: --tp defaulted to 1 and the TP-sync (b4) and multi-process (a0) terms were dropped."""
    rc, out, err = _export(capsys, fit_path)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--tp" in err and "TP > 1" in err
    multi, n = E.multi_gpu_rows(default, GROUP)
    assert 0 < multi < n and f"{multi} of its {n} rows" in err


def test_blis_tp_from_tp_or_server(fit_path, capsys):
    rc4, out4, _ = _export(capsys, fit_path, "--tp", "4")
    rcs, outs, _ = _export(capsys, fit_path, "--server", "llama-2-70b-tp4")
    rc1, out1, _ = _export(capsys, fit_path, "--tp", "1")
    assert rc4 == rcs == rc1 == 0 and out4 == outs
    f1, f4 = _flags(out1), _flags(out4)
    # TP > 1 adds the TP-sync calls to b4 and the multi-process executor term to a0, nothing else
    assert f4["beta"][4] > f1["beta"][4] and f4["alpha"][0] > f1["alpha"][0]
    assert [b for i, b in enumerate(f4["beta"]) if i != 4] == [b for i, b in enumerate(f1["beta"]) if i != 4]
    rc, out, err = _export(capsys, fit_path, "--server", "llama-2-70b-tp4", "--tp", "2")
    assert rc == 2 and out == "" and "tensor_parallel" in err
    # --tp 0 is refused by the parser (tests/test_cli_errors.py: export-tp-zero)


def test_blis_stdout_holds_the_flags_alone(fit_path, capsys, tmp_path):
    """Before: '#' comment lines on stdout broke ``blis run ... $(bayeslat export ...)``."""
    rc, out, err = _export(capsys, fit_path, "--tp", "2")
    assert rc == 0
    assert "#" not in out and len(out.splitlines()) == 1
    _flags(out)
    # the comments go to stderr: group, target TP, the term notes
    assert "target TP 2" in err and "tp_comm" in err and "kv_offload" in err
    # --out holds what stdout would
    p = tmp_path / "flags.txt"
    rc, out_file, _ = _export(capsys, fit_path, "--tp", "2", "--out", str(p))
    assert rc == 0 and out_file == "" and p.read_text() == out


def test_blis_assumes_tp1_out_loud_when_every_fit_row_is_tp1(fit_path, tmp_path, capsys):
    tp1 = M.load(fit_path)
    X = tp1.constant_data["X"].values.copy()
    A = tp1.constant_data["A"].values.copy()
    X[..., [F.B["tp_comm"], F.B["tp_sync_overhead"]]] = 0.0
    A[:, F.ALPHA_NAMES.index("multiproc")] = 0.0
    tp1.constant_data["X"] = (tp1.constant_data["X"].dims, X)
    tp1.constant_data["A"] = (tp1.constant_data["A"].dims, A)
    p = M.save(tp1, tmp_path / "tp1.nc")
    rc = cli.main(["export", str(p), "--group", GROUP, "--format", "blis"])
    out, err = capsys.readouterr()
    assert rc == 0 and "assuming target TP 1" in err
    assert cli.main(["export", str(p), "--group", GROUP, "--format", "blis", "--tp", "1"]) == 0
    assert capsys.readouterr().out == out


def test_json_export_says_tp_does_not_apply(fit_path, capsys):
    assert cli.main(["export", fit_path, "--group", GROUP, "--tp", "2"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["format"] == E.FORMAT and "blis format only" in err


def test_missing_datasheet_is_said_on_stderr(fit_path, capsys):
    rc = cli.main(["export", fit_path, "--group", "MI300X/dense", "--format", "blis", "--tp", "1"])
    out, err = capsys.readouterr()
    assert rc == 0 and "#" not in out
    assert "assumption: no bundled datasheet for 'MI300X'" in err


def test_datasheet_is_read_from_the_package_spec_resolver(default, tmp_path, monkeypatch):
    """Export reads datasheets through the package's spec resolver (``bayeslat.config.specs_dir``,
    package data) like every spec read, so an installed wheel keeps the b3 rescale."""
    b = E.blis_coefficients(default, GROUP, tp=1)
    assert b["hbm_over_link"] == pytest.approx(3.35e12 / 900e9)
    # a spec directory whose H100 datasheet says half the NVLink bandwidth
    sheet = json.loads((S.specs_dir() / "hardware" / "h100-sxm.json").read_text())
    sheet["interconnect"]["nvlink_bandwidth_gb_s"] = 450
    (tmp_path / "hardware").mkdir()
    (tmp_path / "hardware" / "h100-sxm.json").write_text(json.dumps(sheet))
    monkeypatch.setattr(S.files, "specs_dir", lambda: tmp_path)
    b2 = E.blis_coefficients(default, GROUP, tp=1)
    assert b2["hbm_over_link"] == pytest.approx(3.35e12 / 450e9)
    assert b2["beta"][3] == pytest.approx(2 * b["beta"][3])
    assert b2["hbm_over_link_source"] == str(tmp_path / "hardware" / "h100-sxm.json") and b2["assumptions"] == []
    # no datasheet at all: b3 unscaled, and the assumption is in the result and the text
    (tmp_path / "hardware" / "h100-sxm.json").unlink()
    b0 = E.blis_coefficients(default, GROUP, tp=1)
    assert b0["hbm_over_link"] == 1.0 and b0["hbm_over_link_source"] is None
    assert any("no bundled datasheet" in a for a in b0["assumptions"])
    assert "# assumption: no bundled datasheet for 'H100 SXM'" in E.export(default, GROUP, "blis", tp=1)
    assert np.isclose(b0["beta"][3] * 3.35e12 / 900e9, b["beta"][3])
