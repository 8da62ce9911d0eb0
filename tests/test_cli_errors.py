"""Bad input on the command line: every verb answers with exit status 2 and one error line that
names the file (and line) and the field, never a traceback, and never ignores the input.

One table of cases, each run through ``bayeslat.cli.main``. Argparse's own usage errors (a value
the parser rejects) print the usage too; the contract there is the same single ``error:`` line
naming the option. Sampling is stubbed out: a ``fit`` case must fail before it starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from bayeslat import cli

ROOT = Path(__file__).resolve().parents[1]
EX = str(ROOT / "specs" / "examples" / "llama-2-7b-h100-codegen.yaml")
NC = str(ROOT / "models" / "default.nc")
TRACES = ROOT / "tests" / "data" / "traces"
EXP = str(TRACES / "experiment.yaml")
JOURNEY = str(TRACES / "journey.jsonl")

_SERVER = {"tensor_parallel": 1, "max_num_batched_tokens": 2048, "max_num_seqs": 128, "max_model_len": 4096, "kv_blocks": 7462}
_PROFILE = {
    "data": {
        "type": "shared_prefix",
        "shared_prefix": {
            "num_unique_system_prompts": 2,
            "num_users_per_system_prompt": 2,
            "system_prompt_len": 100,
            "question_len": 200,
            "output_len": 50,
        },
    },
    "load": {"type": "constant", "stages": [{"rate": 2, "duration": 5}]},
}


def _spec(**over):
    d = {
        "model": "llama-2-7b-hf",
        "hardware": "h100-sxm",
        "server": dict(_SERVER),
        "workload": {"inference_perf": _PROFILE, "seed": 0},
    }
    for k, v in over.items():
        if v is None:
            d.pop(k)
        elif k == "workload":
            d["workload"] = {**d["workload"], **v}
        else:
            d[k] = v
    return yaml.safe_dump(d)


BINARY = b"\x89HDF\r\n\x1a\n\x00\x00\xff\xfe" * 8


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """A directory of bad inputs (and one directory that is no input at all: itself)."""
    d = tmp_path_factory.mktemp("bad")
    files = {
        "bad.yaml": "model: [1, 2\nhardware: h100\n",
        "badjson.json": '{"hidden_size": 10,',
        "cfg_missing.json": '{"model_type": "llama"}',
        "hw_missing.json": '{"name": "X"}',
        "srv_type.yaml": "tensor_parallel: two\n",
        "junk.txt": "not a trace\nat all\n",
        "reqs.csv": "a,b\n1,2\n",
        "probe_text.csv": "arrival_time_us,input_tokens,output_tokens,ttft_ms,e2e_ms\n0,100,20,30,200\nabc,100,20,30,200\n",
        "probe_tokens.csv": "arrival_time_us,input_tokens,output_tokens,ttft_ms,e2e_ms\n0,100,20,30,200\n5,-7,20,30,200\n",
        "probe_ttft.csv": "arrival_time_us,input_tokens,output_tokens,ttft_ms,e2e_ms\n0,100,20,30,200\n5,100,20,fast,200\n",
        "notnc.nc": "hello\n",
        "exp_nomodel.yaml": "name: x\nserver: {tensor_parallel: 1}\n",
        "spec_nomodel.yaml": _spec(model=None),
        "spec_modelint.yaml": _spec(model=42),
        "spec_unkmodel.yaml": _spec(model="nosuchmodel"),
        "spec_unkhw.yaml": _spec(hardware="nosuchgpu"),
        "spec_srvtype.yaml": _spec(server={"tensor_parallel": "two"}),
        "spec_srvlist.yaml": _spec(server=[1, 2]),
        "spec_tp3.yaml": _spec(server={**_SERVER, "tensor_parallel": 3}),
        "spec_seed.yaml": _spec(workload={"seed": "abc"}),
        "spec_timeout.yaml": _spec(workload={"timeout_s": -1}),
        "spec_numreq.yaml": _spec(workload={"num_requests": -3}),
        "spec_wltype.yaml": _spec(workload={"inference_perf": {**_PROFILE, "data": {"type": "nonsense"}}}),
        "spec_reqs.yaml": _spec(workload={"inference_perf": None, "requests": "reqs.csv"}).replace(
            "  inference_perf: null\n", ""
        ),
        "spec_reqsbin.yaml": _spec(workload={"inference_perf": None, "requests": "bin.csv"}).replace(
            "  inference_perf: null\n", ""
        ),
    }
    for name, text in files.items():
        (d / name).write_text(text)
    for name in ("bin.json", "bin.yaml", "bin.csv"):
        (d / name).write_bytes(BINARY)
    import arviz as az

    az.from_dict(posterior={"a": np.zeros((1, 5))}).to_netcdf(str(d / "arviz.nc"))  # a netCDF, not a bayeslat fit
    ext = d / "ext_bad"
    (ext / "results").mkdir(parents=True)
    (ext / "exp-config.yaml").write_text("model: [1,\n")
    (ext / "profile.yaml").write_text(yaml.safe_dump(_PROFILE))
    (ext / "results" / "summary_lifecycle_metrics.json").write_text('{"successes": {"latency": {}}}')
    from bayeslat.data.ingest import ingest

    # ingested tables of a run whose experiment names a model bayeslat cannot resolve
    ingest(
        [JOURNEY],
        experiment={
            "name": "unk",
            "model": "nosuchmodel",
            "hardware": "H100 SXM",
            "server": {"tensor_parallel": 1},
            "workload": {},
            "source": "test",
        },
        out=d / "tables_unk",
    )
    return d


@pytest.fixture(autouse=True)
def no_sampling(monkeypatch):
    from bayeslat import model

    def boom(*a, **k):
        raise AssertionError("sampling started: the bad input was not refused first")

    monkeypatch.setattr(model, "fit", boom)


# (id, argv, what the error line must name). {d}: the bad-input directory.
FIT = ["fit", "--out", "{d}/never.nc"]
UPD = ["update", NC, "--spec", EX, "--out", "{d}/u.nc"]
CASES = [
    # specs
    ("specs-unknown-model-key", ["specs", "--model", "nosuchmodel", "--hardware", "h100-sxm"], ["nosuchmodel", "models key"]),
    ("specs-model-dir", ["specs", "--model", "{d}", "--hardware", "h100-sxm"], ["{d}", "no such file"]),
    (
        "specs-model-bad-json",
        ["specs", "--model", "{d}/badjson.json", "--hardware", "h100-sxm"],
        ["badjson.json:1", "config.json", "invalid JSON"],
    ),
    (
        "specs-model-missing-field",
        ["specs", "--model", "{d}/cfg_missing.json", "--hardware", "h100-sxm"],
        ["cfg_missing.json", "hidden_size", "missing"],
    ),
    ("specs-model-binary", ["specs", "--model", "{d}/bin.json", "--hardware", "h100-sxm"], ["bin.json", "binary"]),
    ("specs-unknown-hardware-key", ["specs", "--model", "llama-2-7b-hf", "--hardware", "nosuchgpu"], ["nosuchgpu", "hardware"]),
    (
        "specs-hardware-missing-field",
        ["specs", "--model", "llama-2-7b-hf", "--hardware", "{d}/hw_missing.json"],
        ["hw_missing.json", "compute.bf16_tensor_core"],
    ),
    (
        "specs-server-bad-yaml",
        ["specs", "--model", "llama-2-7b-hf", "--hardware", "h100-sxm", "--server", "{d}/bad.yaml"],
        ["bad.yaml:2", "invalid YAML"],
    ),
    (
        "specs-server-wrong-type",
        ["specs", "--model", "llama-2-7b-hf", "--hardware", "h100-sxm", "--server", "{d}/srv_type.yaml"],
        ["srv_type.yaml", "tensor_parallel", "integer"],
    ),
    ("specs-tp-zero", ["specs", "--model", "llama-2-7b-hf", "--hardware", "h100-sxm", "--tp", "0"], ["--tp"]),
    # ingest
    (
        "ingest-missing-file",
        ["ingest", "{d}/nosuch.jsonl", "--experiment", EXP, "--out", "{d}/o1"],
        ["nosuch.jsonl", "unreadable"],
    ),
    ("ingest-directory", ["ingest", "{d}", "--experiment", EXP, "--out", "{d}/o2"], ["{d}", "directory"]),
    ("ingest-unknown-format", ["ingest", "{d}/junk.txt", "--experiment", EXP, "--out", "{d}/o3"], ["junk.txt", "not an OTLP"]),
    (
        "ingest-experiment-bad-yaml",
        ["ingest", JOURNEY, "--experiment", "{d}/bad.yaml", "--out", "{d}/o4"],
        ["bad.yaml:2", "invalid YAML"],
    ),
    ("ingest-experiment-missing", ["ingest", JOURNEY, "--experiment", "{d}/nosuch.yaml", "--out", "{d}/o5"], ["nosuch.yaml"]),
    ("ingest-experiment-binary", ["ingest", JOURNEY, "--experiment", "{d}/bin.yaml", "--out", "{d}/o5"], ["bin.yaml", "binary"]),
    (
        "ingest-experiment-no-model",
        ["ingest", JOURNEY, "--experiment", "{d}/exp_nomodel.yaml", "--out", "{d}/o6"],
        ["exp_nomodel.yaml", "model"],
    ),
    ("ingest-out-is-file", ["ingest", JOURNEY, "--experiment", EXP, "--out", "{d}/junk.txt"], ["--out", "junk.txt"]),
    # fit: refused before sampling
    ("fit-draws-zero", FIT + ["--draws", "0"], ["--draws"]),
    ("fit-draws-negative", FIT + ["--draws", "-5"], ["--draws"]),
    ("fit-draws-not-int", FIT + ["--draws", "many"], ["--draws"]),
    ("fit-tune-negative", FIT + ["--tune", "-1"], ["--tune"]),
    ("fit-chains-zero", FIT + ["--chains", "0"], ["--chains"]),
    ("fit-rows-negative", FIT + ["--rows-per-run-kind", "-1"], ["--rows-per-run-kind"]),
    ("fit-bins-bad", FIT + ["--bins", "8by4"], ["--bins", "TxD"]),
    ("fit-bins-zero", FIT + ["--bins", "0x4"], ["--bins", ">= 1"]),
    ("fit-target-accept", FIT + ["--target-accept", "1.5"], ["--target-accept"]),
    ("fit-out-is-dir", ["fit", "--out", "{d}"], ["--out", "directory"]),
    ("fit-data-missing", FIT + ["--data", "{d}/nosuchdir"], ["nosuchdir", "data"]),
    ("fit-runs-match-nothing", FIT + ["--runs", "nothingmatches"], ["runs", "nothingmatches"]),
    ("fit-tables-unknown-model", FIT + ["--data", "{d}/tables_unk"], ["experiments.parquet", "model", "nosuchmodel"]),
    # diagnose / export: the fit file
    ("diagnose-missing", ["diagnose", "{d}/nosuch.nc"], ["nosuch.nc", "no such file"]),
    ("diagnose-directory", ["diagnose", "{d}"], ["{d}", "directory"]),
    ("diagnose-not-netcdf", ["diagnose", "{d}/notnc.nc"], ["notnc.nc", "not a netCDF"]),
    ("diagnose-netcdf-not-a-fit", ["diagnose", "{d}/arviz.nc"], ["arviz.nc", "format"]),
    ("export-not-netcdf", ["export", "{d}/notnc.nc"], ["notnc.nc", "not a netCDF"]),
    ("export-netcdf-not-a-fit", ["export", "{d}/arviz.nc"], ["arviz.nc", "format"]),
    ("export-bad-group", ["export", NC, "--group", "nonsense"], ["group"]),
    ("export-empty-group", ["export", NC, "--group", ""], ["group"]),
    ("export-group-too-many-parts", ["export", NC, "--group", "a/b/c/d"], ["group"]),
    ("export-unknown-class", ["export", NC, "--group", "H100 SXM/foo"], ["group", "foo"]),
    ("export-unknown-regime", ["export", NC, "--group", "H100 SXM/dense/nonsense"], ["group", "nonsense"]),
    ("export-tp-zero", ["export", NC, "--tp", "0"], ["--tp"]),
    ("export-out-dir", ["export", NC, "--tp", "1", "--out", "{d}"], ["--out", "directory"]),
    # predict: the SPEC and the fit
    ("predict-spec-missing", ["predict", "{d}/nosuch.yaml"], ["nosuch.yaml", "no such file"]),
    ("predict-spec-directory", ["predict", "{d}"], ["{d}", "directory"]),
    ("predict-spec-bad-yaml", ["predict", "{d}/bad.yaml"], ["bad.yaml:2", "invalid YAML"]),
    ("predict-spec-binary", ["predict", "{d}/bin.yaml"], ["bin.yaml", "binary"]),
    ("predict-spec-no-model", ["predict", "{d}/spec_nomodel.yaml"], ["spec_nomodel.yaml", "model", "missing"]),
    ("predict-spec-model-not-str", ["predict", "{d}/spec_modelint.yaml"], ["spec_modelint.yaml", "model", "42"]),
    ("predict-spec-unknown-model", ["predict", "{d}/spec_unkmodel.yaml"], ["spec_unkmodel.yaml", "model", "nosuchmodel"]),
    ("predict-spec-unknown-hardware", ["predict", "{d}/spec_unkhw.yaml"], ["spec_unkhw.yaml", "hardware", "nosuchgpu"]),
    ("predict-spec-server-wrong-type", ["predict", "{d}/spec_srvtype.yaml"], ["spec_srvtype.yaml", "server.tensor_parallel"]),
    ("predict-spec-server-list", ["predict", "{d}/spec_srvlist.yaml"], ["spec_srvlist.yaml", "server", "mapping"]),
    ("predict-spec-tp-indivisible", ["predict", "{d}/spec_tp3.yaml"], ["spec_tp3.yaml", "server.tensor_parallel", "divide"]),
    ("predict-spec-seed", ["predict", "{d}/spec_seed.yaml"], ["spec_seed.yaml", "workload.seed"]),
    ("predict-spec-timeout", ["predict", "{d}/spec_timeout.yaml"], ["spec_timeout.yaml", "workload.timeout_s"]),
    ("predict-spec-num-requests", ["predict", "{d}/spec_numreq.yaml"], ["spec_numreq.yaml", "workload.num_requests"]),
    ("predict-spec-data-type", ["predict", "{d}/spec_wltype.yaml"], ["spec_wltype.yaml", "workload.inference_perf.data.type"]),
    ("predict-requests-columns", ["predict", "{d}/spec_reqs.yaml"], ["reqs.csv", "arrival_time_us"]),
    ("predict-requests-binary", ["predict", "{d}/spec_reqsbin.yaml"], ["bin.csv", "CSV"]),
    ("predict-draws-zero", ["predict", EX, "--draws", "0"], ["--draws"]),
    ("predict-draws-negative", ["predict", EX, "--draws", "-3"], ["--draws"]),
    ("predict-model-not-netcdf", ["predict", EX, "--model", "{d}/notnc.nc"], ["notnc.nc", "not a netCDF"]),
    ("predict-model-directory", ["predict", EX, "--model", "{d}"], ["{d}", "directory"]),
    # validate
    ("validate-bad-suite", ["validate", "--suite", "nonsense"], ["--suite", "nonsense"]),
    ("validate-draws-zero", ["validate", "--draws", "0"], ["--draws"]),
    ("validate-runs-match-nothing", ["validate", "--runs", "nothingmatches"], ["runs", "nothingmatches"]),
    ("validate-cv-runs-match-nothing", ["validate", "--suite", "loro", "--runs", "nothingmatches"], ["runs", "nothingmatches"]),
    ("validate-external-suite-no-paths", ["validate", "--suite", "external"], ["--external"]),
    ("validate-external-bad-json", ["validate", "--external", "{d}/badjson.json"], ["badjson.json", "JSON"]),
    ("validate-external-binary", ["validate", "--external", "{d}/bin.json"], ["bin.json", "binary"]),
    ("validate-external-no-experiments", ["validate", "--external", "{d}/o_none"], ["o_none"]),
    (
        "validate-external-bad-exp-config",
        ["validate", "--external", "{d}/ext_bad", "--hardware", "H100"],
        ["exp-config.yaml:2", "invalid YAML"],
    ),
    ("validate-out-is-dir", ["validate", "--out", "{d}"], ["--out", "directory"]),
    ("validate-model-not-netcdf", ["validate", "--model", "{d}/notnc.nc"], ["notnc.nc", "not a netCDF"]),
    # check
    ("check-probe-no-files", ["check", EX, "--probe"], ["--probe"]),
    ("check-spec-missing", ["check", "{d}/nosuch.yaml"], ["nosuch.yaml", "no such file"]),
    ("check-spec-directory", ["check", "{d}"], ["{d}", "directory"]),
    ("check-spec-bad-yaml", ["check", "{d}/bad.yaml"], ["bad.yaml:2", "invalid YAML"]),
    ("check-spec-unknown-model", ["check", "{d}/spec_unkmodel.yaml"], ["spec_unkmodel.yaml", "model", "nosuchmodel"]),
    ("check-draws-zero", ["check", EX, "--draws", "0"], ["--draws"]),
    ("check-probe-text-arrival", ["check", EX, "--probe", "{d}/probe_text.csv"], ["probe_text.csv:3", "arrival_time_us"]),
    ("check-probe-negative-tokens", ["check", EX, "--probe", "{d}/probe_tokens.csv"], ["probe_tokens.csv:3", "input_tokens"]),
    ("check-probe-text-ttft", ["check", EX, "--probe", "{d}/probe_ttft.csv"], ["probe_ttft.csv:3", "ttft_ms"]),
    ("check-probe-ambiguous-run", ["check", EX, "--probe", "bundled:codegen:50"], ["bundled:codegen:50", "probe", "runs"]),
    ("check-probe-unknown-run", ["check", EX, "--probe", "bundled:nosuchrun"], ["bundled:nosuchrun", "probe"]),
    ("check-probe-binary", ["check", EX, "--probe", "{d}/bin.json"], ["bin.json", "probe"]),
    ("check-model-not-a-fit", ["check", EX, "--model", "{d}/arviz.nc"], ["arviz.nc", "format"]),
    # update
    (
        "update-model-missing",
        ["update", "{d}/nosuch.nc", "--probe", "{d}/reqs.csv", "--spec", EX, "--out", "{d}/u.nc"],
        ["nosuch.nc"],
    ),
    ("update-probe-missing", UPD + ["--probe", "{d}/nosuch.csv"], ["nosuch.csv", "no such file"]),
    ("update-probe-columns", UPD + ["--probe", "{d}/reqs.csv"], ["reqs.csv", "arrival_us", "missing column"]),
    ("update-probe-unknown-format", UPD + ["--probe", "{d}/junk.txt"], ["junk.txt"]),
    ("update-probe-binary", UPD + ["--probe", "{d}/bin.csv"], ["bin.csv", "probe"]),
    (
        "update-probe-bad-count",
        UPD + ["--probe", "bundled:llama-2-7b-tp1-codegen:abc"],
        ["bundled:llama-2-7b-tp1-codegen:abc", "first_n"],
    ),
    ("update-probe-unknown-run", UPD + ["--probe", "bundled:nosuchrun"], ["bundled:nosuchrun", "probe"]),
    ("update-probe-no-files", ["update", NC, "--spec", EX, "--out", "{d}/u.nc", "--probe"], ["--probe"]),
    (
        "update-spec-bad-yaml",
        ["update", NC, "--probe", "{d}/reqs.csv", "--spec", "{d}/bad.yaml", "--out", "{d}/u.nc"],
        ["bad.yaml:2", "invalid YAML"],
    ),
    ("update-out-is-dir", ["update", NC, "--probe", "{d}/reqs.csv", "--spec", EX, "--out", "{d}"], ["--out", "directory"]),
    ("update-bad-when", UPD + ["--probe", "{d}/reqs.csv", "--when", "never"], ["--when"]),
]


@pytest.mark.parametrize("argv, names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(bad, capsys, argv, names):
    (bad / "o_none").mkdir(exist_ok=True)
    argv = [a.format(d=bad) for a in argv]
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's usage error
        rc = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    assert rc == 2, (rc, err)
    errors = [line for line in err.splitlines() if line.startswith(f"bayeslat {argv[0]}: error: ")]
    assert len(errors) == 1, err
    for name in names:
        assert name.format(d=bad) in errors[0], (name, errors[0])


def test_validate_suites_match_the_parser():
    from bayeslat.evaluate import suites as validate

    assert cli.VALIDATE_SUITES == validate.SUITES


def test_fit_bins_default_matches_design():
    from bayeslat.data import design

    assert cli.FIT_BINS == design.BINS
    assert cli.bins_arg("4x8") == (4, 8) and cli.bins_arg("none") is None
