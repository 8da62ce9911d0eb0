"""Experiment YAML -> one ``experiments`` row (independent of :mod:`bayeslat.config`).

Schema::

    name: 20260217-155451-llama-2-7b-tp1-codegen   # run id (optional; default: file stem / dir name)
    model: llama-2-7b-hf            # HuggingFace config.json path or spec key
    hardware: H100 SXM              # datasheet name or spec key
    server:                         # the ServerConfig dict (stored whole as JSON)
      tensor_parallel: 1
      max_num_batched_tokens: 2048
      max_num_seqs: 128
      max_model_len: 4096
      block_size: 16
      gpu_memory_utilization: 0.9
      kv_blocks: 7462               # optional
      cpu_offload_gb: 0             # optional
      prefix_caching: true
      chunked_prefill: true
      kv_block_bytes: 524288        # optional: bytes of one KV block (kv_steps bytes columns)
    workload: {...}                 # free dict, e.g. the inference-perf profile
                                    # (data.shared_prefix.output_len, server.ignore_eos, load.stages
                                    #  are used to repair replay output tokens)

The shared data's ``exp-config.yaml`` (top-level ``model``, ``tensor_parallelism``, ...) is accepted
too: keys are mapped into ``server`` and a ``profile.yaml`` next to it becomes ``workload``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bayeslat.errors import IngestError, read_yaml

from . import tables as T

_ALIASES = {"tensor_parallelism": "tensor_parallel", "tp": "tensor_parallel"}
_SERVER_KEYS = (
    "tensor_parallel",
    "max_num_batched_tokens",
    "max_num_seqs",
    "max_model_len",
    "block_size",
    "gpu_memory_utilization",
    "kv_blocks",
    "cpu_offload_gb",
    "prefix_caching",
    "chunked_prefill",
)


def _read_yaml(path: Path):
    """The YAML document in ``path``; an unreadable, binary or malformed file is an IngestError
    naming it (and the line, for malformed YAML)."""
    return read_yaml(path, IngestError, "cannot read experiment YAML: ")


def load_experiment(path: str | Path) -> dict:
    """Parse and normalise an experiment YAML; raises ``IngestError`` (file, field) when bad."""
    path = Path(path)
    d = _read_yaml(path)
    if not isinstance(d, dict):
        raise IngestError("experiment YAML is not a mapping", file=str(path))
    server = d.get("server")
    if server is None:  # exp-config.yaml style
        server = {_ALIASES.get(k, k): v for k, v in d.items() if _ALIASES.get(k, k) in _SERVER_KEYS}
    if not isinstance(server, dict):
        raise IngestError("server must be a mapping", file=str(path), field="server")
    server = {_ALIASES.get(k, k): v for k, v in server.items()}
    if "model" not in d:
        raise IngestError("missing key", file=str(path), field="model")
    workload = d.get("workload")
    if workload is None and (path.parent / "profile.yaml").exists():
        workload = _read_yaml(path.parent / "profile.yaml")
    name = d.get("name") or d.get("run") or (path.parent.name if path.name == "exp-config.yaml" else path.stem)
    return {
        "name": str(name),
        "model": str(d["model"]),
        "hardware": d.get("hardware"),
        "server": server,
        "workload": workload or {},
        "source": str(path),
    }


def experiments_row(exp: dict) -> pd.DataFrame:
    s = exp["server"]
    row = {
        "run": exp["name"],
        "model": exp["model"],
        "hardware": exp.get("hardware"),
        **{k: s.get(k) for k in _SERVER_KEYS},
        "server_json": json.dumps(s, sort_keys=True),
        "workload_json": json.dumps(exp.get("workload") or {}, sort_keys=True),
        "source": exp.get("source"),
    }
    return T.conform(pd.DataFrame([row]), "experiments")
