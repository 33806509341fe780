"""``asynclog export --to wandb``: a demo sweep written as an offline wandb run by wandb's own SDK, then read back
from its record log with wandb's own protobuf messages and checked against the runs' summaries and streams.

wandb 0.19 and later have no Python reader of the record log (its sync runs in the ``wandb-core`` binary), so the
framing is read here: LevelDB's log format (32 KiB blocks; records of a 7-byte header: CRC-32C, length, type)
after a 7-byte file header (``:W&B``, a magic, a version)."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys

import pytest

import asynclog

pytest.importorskip("wandb", reason="export --to wandb needs wandb, not in the test extra (it adds about a minute "
                                    "to CI's install): bash scripts/setup.sh --extras wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str) -> list:
    """Every record of a wandb run file, as wandb's own ``Record`` messages."""
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    out, parts, at = [], [], 7
    while at + 7 <= len(data):
        if BLOCK - at % BLOCK < 7:  # a block's last bytes, too few for a record header, are padding
            at += BLOCK - at % BLOCK
            continue
        _, length, kind = struct.unpack_from("<IHB", data, at)
        parts.append(data[at + 7 : at + 7 + length])
        at += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            out.append(record)
            parts = []
    return out


def history(run_folder: str) -> dict[int, dict]:
    """Each logged step's values, decoded from JSON, keyed by step. wandb stores a value that is a map (a
    histogram, a table) as one item per field, its ``nested_key`` the value's key and then the field's."""
    [path] = glob.glob(os.path.join(run_folder, "run-*.wandb"))
    steps = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            items: dict = {}
            for item in record.history.item:
                *outer, key = [item.key] if item.key else list(item.nested_key)
                place = items
                for name in outer:
                    place = place.setdefault(name, {})
                place[key] = json.loads(item.value_json)
            steps[items["_step"]] = items
    return steps


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A two-checkpoint demo sweep and the offline run ``export --to wandb`` printed."""
    sweep = tmp_path_factory.mktemp("sweep")
    subprocess.run([sys.executable, "-m", "asynclog", "demo", "--size", "tiny", "--level", "debug",
                    "--checkpoints", "2", "--out", str(sweep)], check=True, capture_output=True, timeout=300)
    done = subprocess.run([sys.executable, "-m", "asynclog", "export", str(sweep), "--to", "wandb", "-o",
                           str(tmp_path_factory.mktemp("wandb"))], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, WANDB_API_KEY="", WANDB_BASE_URL="http://127.0.0.1:9"))
    assert done.returncode == 0, done.stderr
    [folder] = done.stdout.split()
    return sorted(glob.glob(os.path.join(sweep, "*", "*.alog"))), folder


def test_the_offline_run_holds_each_checkpoints_scalars_at_its_step(exported):
    runs, folder = exported
    assert os.path.basename(folder).startswith("offline-run-")
    steps = history(folder)
    assert sorted(steps) == [0, 1]
    for step, run in enumerate(runs):
        summary = json.load(open(run.removesuffix(".alog") + "_summary.json"))
        assert steps[step]["core/deltaH1"] == pytest.approx(summary["core_results"]["deltaH1"])
        assert steps[step]["diagnostics/ESS"] == pytest.approx(summary["ground_truth"]["diagnostics"]["ESS"])


def test_the_offline_run_holds_token_histograms_and_sequence_tables(exported):
    runs, folder = exported
    first = history(folder)[0]
    with asynclog.open(runs[0]) as log:
        tokens, sequences = log.tokens("E_batch"), log.sequences("E_batch")
    entropy = first["tokens/E_batch/entropy"]
    assert entropy["_type"] == "histogram"
    assert sum(entropy["values"]) == tokens["rb_entropies"].notna().sum()
    table = first["sequences/E_batch"]
    assert table["_type"] == "table-file" and table["nrows"] == len(sequences)
    rows = json.load(open(os.path.join(folder, "files", table["path"])))
    assert rows["data"][0][rows["columns"].index("response_text")] == sequences["response_text"][0]
