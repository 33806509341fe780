"""DetailedLogger: each level writes what it promises, with the right values, and nothing it does not.

Batches are shaped like the real probe's (E: B=256, G=1; U: B=64, G=8; T=200, prompts left-padded) and
every expected value is computed here, with numpy, from the batch itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections import Counter

import numpy as np
import pytest
import torch

import asynclog
from asynclog import DetailedLogger

PROMPT_WIDTH, T = 64, 200
CORE = {"bars_dot": 1.2345e-4, "deltaH1": 6.789e-5, "learning_rate": 1e-5, "B_E": 256, "B_U": 64, "G": 8,
        "mb_size_prompts": 4, "weighting_mode": "uniform"}
GROUND_TRUTH = {"H_orig": 2.34567, "H_upd": 2.34638, "deltaH_true": 7.1e-4, "H_orig_tok": 0.0456,
                "H_upd_tok": 0.0457, "deltaH_true_tok": 1e-4,
                "diagnostics": {"ESS": 234.56, "w_max": 1.234, "w_min": 0.456, "w_sum_global": 512.0,
                                "is_mode": "snis_rb", "rl_grad_accum": 1}}
PHASES = ["phase0_sampling", "phase1_sum_X", "phase2_sum_Y", "phase3_delta_h1", "phase5_importance"]
LEVEL_STREAMS = {
    "minimal": set(),
    "standard": set(),
    "detailed": {"sequences/E_batch", "sequences/U_batch", "importance/E_batch"},
    "debug": {"sequences/E_batch", "sequences/U_batch", "importance/E_batch", "tokens/E_batch", "tokens/U_batch"},
}
DEBUG_TENSORS = {f"{batch}/{key}" for batch in ("E_batch", "U_batch") for key in ("sequences", "attention_masks",
                                                                                  "advantages")} | {
    "U_batch/rewards", "E_batch/S_orig", "E_batch/S_upd", "E_batch/RB_orig", "E_batch/RB_upd", "E_batch/logw",
    "E_batch/importance_weights"}


def make_batch(B: int, G: int, seed: int, rewards: bool, gen_max: int = T - PROMPT_WIDTH, texts: bool = True,
               packed: bool = False):
    """A batch dict as the probe builds it (prompts left-padded, or ``packed`` at the row's start), and the
    per-sequence dict of its sampler."""
    g = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(8, PROMPT_WIDTH + 1, (B,), generator=g)
    gen_lens = torch.randint(1, gen_max + 1, (B, G), generator=g)
    pos = torch.arange(PROMPT_WIDTH + gen_max)
    if packed:
        mask = pos < (prompt_lens[:, None] + gen_lens)[..., None]
    else:
        mask = (pos >= PROMPT_WIDTH - prompt_lens[:, None, None]) & (pos < PROMPT_WIDTH + gen_lens[..., None])
    sequences = torch.randint(3, 50_000, mask.shape, generator=g) * mask
    batch = {"sequences": sequences, "attention_masks": mask.long(), "prompt_lens": prompt_lens.tolist(),
             "max_lengths": gen_lens.max(1).values.tolist(), "num_prompts": B, "num_responses_per_prompt": G}
    if rewards:
        batch["rewards"] = torch.rand(B, G, generator=g)
        batch["advantages"] = batch["rewards"] - batch["rewards"].mean(1, keepdim=True)
    else:
        batch["advantages"] = torch.zeros(B, G)
    if texts:
        batch["_debug_info"] = {"prompt_texts": [f"prompt {b}: solve x + {b} = 11" for b in range(B)],
                                "response_texts": [[f"answer {b}.{r}" for r in range(G)] for b in range(B)],
                                "dataset_indices": [1000 + 3 * b for b in range(B)]}
    token_logprobs = -torch.rand(B, G, gen_max, generator=g) * 5
    token_entropies = torch.rand(B, G, gen_max, generator=g) * 3
    keep = pos[:gen_max] < gen_lens[..., None]
    sequences_data = {"sequence_logprob": (token_logprobs * keep).sum(-1),
                      "rb_entropy": (token_entropies * keep).sum(-1),
                      "token_logprobs": token_logprobs, "token_entropies": token_entropies}
    return batch, sequences_data


@pytest.fixture(scope="module")
def batches():
    E, E_seq = make_batch(256, 1, seed=1, rewards=False)
    U, U_seq = make_batch(64, 8, seed=2, rewards=True)
    g = torch.Generator().manual_seed(3)
    S_orig = -torch.rand(256, 1, generator=g) * 50
    importance = {"S_orig": S_orig, "S_upd": S_orig + torch.randn(256, 1, generator=g) * 0.05,
                  "RB_orig": torch.rand(256, 1, generator=g) * 3, "RB_upd": torch.rand(256, 1, generator=g) * 3}
    return {"E": (E, E_seq), "U": (U, U_seq), "importance": importance}


def config_for(out, level: str, **switches) -> dict:
    return {"checkpoint": {"checkpoint_path": "/ckpts/run1/step_60"}, "batch_config": {"B_E": 256, "B_U": 64, "G": 8},
            "detailed_logging": {"enabled": True, "level": level, "output_directory": str(out), "log_tokens": True,
                                 "log_raw_tensors": True, **switches},
            "asynclog": {"staging_bytes": 16 << 20}}


def run_like_the_probe(logger: DetailedLogger, config: dict, batches: dict) -> str:
    """The plan's integration points, in the probe's order."""
    logger.log_run_start("/ckpts/run1/step_60", config)
    logger.log_phase_start("phase0_sampling")
    logger.log_phase_end("phase0_sampling")
    logger.log_batch_data("E_batch", *batches["E"])
    logger.log_batch_data("U_batch", *batches["U"])
    for name in PHASES[1:4]:
        logger.log_phase_start(name)
        logger.log_phase_end(name, {"note": name})
    logger.log_phase_start("phase5_importance")
    imp = batches["importance"]
    logger.log_importance_sampling_details(imp["S_orig"], imp["S_upd"], imp["RB_orig"], imp["RB_upd"])
    logger.log_phase_end("phase5_importance")
    logger.log_ground_truth_results(GROUND_TRUTH)
    logger.log_core_results(CORE)
    return logger.finalize_log({**CORE, **GROUND_TRUTH, "timing": {"phase1_sum_X": 8.92}})


# --- expected values, computed independently ---------------------------------------------------------------
def rows_of(batch: dict):
    """(prompt ids, response ids, mask) per sequence n = b * G + g, with numpy."""
    seqs, masks = batch["sequences"].numpy(), batch["attention_masks"].numpy().astype(bool)
    B, G, _ = seqs.shape
    out = []
    for b in range(B):
        for g in range(G):
            real = seqs[b, g][masks[b, g]]
            plen = batch["prompt_lens"][b]
            out.append((real[:plen], real[plen:], masks[b, g]))
    return out


def expected_statistics(batch: dict) -> dict:
    rows = rows_of(batch)
    B, G, Tp = batch["sequences"].shape
    lengths = np.array([len(p) + len(r) for p, r, _ in rows], dtype=float)
    gens = np.array([len(r) for _, r, _ in rows], dtype=float)
    stats = {"num_prompts": B, "num_sequences": B * G, "G": G, "padded_length": Tp,
             "avg_prompt_length": np.mean(batch["prompt_lens"]), "avg_generation_length": gens.mean(),
             "avg_sequence_length": lengths.mean(), "max_sequence_length": int(lengths.max()),
             "max_generation_length": int(gens.max()),
             "sequence_length_distribution": list(np.percentile(lengths, [10, 25, 50, 75, 90])),
             "generation_length_distribution": list(np.percentile(gens, [10, 25, 50, 75, 90])),
             "std_generation_length": np.std(gens), "min_generation_length": int(gens.min()),
             "generation_length_percentiles": list(np.percentile(gens, [10, 25, 50, 75, 90]))}
    for key, name in (("advantages", "advantages"), ("rewards", "reward")):
        if key in batch:
            values = batch[key].double().numpy()
            stats.update({f"avg_{name}": values.mean(), f"{name}_std": np.std(values, ddof=1),
                          f"std_{name}": np.std(values), f"min_{name}": values.min(), f"max_{name}": values.max()})
    return stats


def approx(value):
    return pytest.approx(value, rel=1e-6, abs=1e-9)


def read_summary(path: str) -> dict:
    with open(path.removesuffix(".alog") + "_summary.json") as f:
        return json.load(f)


# --- every level ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ["minimal", "standard", "detailed", "debug"])
def test_each_level_writes_what_it_promises_and_nothing_more(tmp_path, batches, level):
    config = config_for(tmp_path, level)
    path = run_like_the_probe(DetailedLogger(config), config, batches)
    with asynclog.open(path) as log:
        assert log.complete
        check_metadata(log, config)
        check_always_logged(log)
        names = {e["name"] for e in log.events()}
        promised = {"phase_start", "phase_end", "core_results", "final_results"}
        if level != "minimal":
            promised |= {"batch_statistics", "ground_truth"}
        if level in ("detailed", "debug"):
            promised |= {"importance_sampling_details"}
            check_statistics(log, batches)
            assert next(log.events(name="ground_truth"))["data"] == GROUND_TRUTH
        assert names == promised
        assert set(log.stream_names()) == LEVEL_STREAMS[level]
        if level in ("detailed", "debug"):
            check_sequences(log, batches)
            check_importance(log, batches)
        if level == "debug":
            check_tokens(log, batches)
            check_raw_tensors(log, batches)
        assert set(log.tensor_names()) == (DEBUG_TENSORS if level == "debug" else set())
    summary = read_summary(path)
    assert summary["complete"] is True and summary["level"] == level
    assert ("batch_statistics" in summary) == ("ground_truth" in summary) == (level != "minimal")


def check_metadata(log, config: dict) -> None:
    meta = log.header["metadata"]["run_metadata"]
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert meta["config_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert meta["checkpoint_path"] == "/ckpts/run1/step_60"
    assert meta["asynclog_version"] == asynclog.__version__
    assert meta["timestamp"].endswith("Z")
    env = meta["environment"]
    assert env["python_version"] == platform.python_version()
    assert env["torch_version"] == str(torch.__version__)
    assert env["cuda_version"] == torch.version.cuda
    assert env["host_memory_gb"] > 0
    assert log.header["metadata"]["probe_config"] == config


def check_always_logged(log) -> None:
    assert next(log.events(name="core_results"))["data"] == CORE
    ends = [e["data"] for e in log.events(name="phase_end")]
    assert [e["phase"] for e in ends] == PHASES
    assert all(e["duration"] >= 0 for e in ends)
    assert ends[1]["results"] == {"note": "phase1_sum_X"}
    timing = next(log.events(name="final_results"))["data"]["timing"]
    assert set(timing) == {"total_time", "phase1_sum_X", *(f"{p}_time" for p in PHASES)}
    assert timing["phase1_sum_X"] == 8.92  # the probe's own figure, as the user's logger keeps it
    assert timing["total_time"] >= sum(timing[f"{p}_time"] for p in PHASES)


def check_statistics(log, batches) -> None:
    events = {e["data"]["batch"]: e["data"] for e in log.events(name="batch_statistics")}
    for key, name in (("E", "E_batch"), ("U", "U_batch")):
        got, want = events[name], expected_statistics(batches[key][0])
        assert set(got) == set(want) | {"batch", "length_percentiles", "prompt_lens_meaning", "lengths_from"}
        assert got["lengths_from"] == "attention_masks"
        for stat, value in want.items():
            assert got[stat] == approx(value), stat


def check_sequences(log, batches) -> None:
    for key, name in (("E", "E_batch"), ("U", "U_batch")):
        batch, seq = batches[key]
        B, G, _ = batch["sequences"].shape
        rows = list(log.rows(f"sequences/{name}"))
        assert len(rows) == B * G
        info = batch["_debug_info"]
        for n, (row, (prompt, response, _)) in enumerate(zip(rows, rows_of(batch))):
            b, g = divmod(n, G)
            assert (row["sequence_id"], row["prompt_id"], row["response_id"]) == (n, b, g)
            assert row["dataset_index"] == info["dataset_indices"][b]
            assert row["prompt_text"] == info["prompt_texts"][b]
            assert row["response_text"] == info["response_texts"][b][g]
            assert (row["prompt_length"], row["generation_length"]) == (len(prompt), len(response))
            assert row["sequence_logprob"] == approx(seq["sequence_logprob"][b, g].item())
            assert row["rb_entropy"] == approx(seq["rb_entropy"][b, g].item())
            assert row["advantage"] == approx(batch["advantages"][b, g].item())
            assert row["reward"] == (approx(batch["rewards"][b, g].item()) if "rewards" in batch else None)
            assert "importance_weight" not in row  # not given with this batch


def check_importance(log, batches) -> None:
    imp = {k: v.double().reshape(-1).numpy() for k, v in batches["importance"].items()}
    rows = list(log.rows("importance/E_batch"))
    assert [r["sequence_id"] for r in rows] == list(range(256))
    logw = imp["S_upd"] - imp["S_orig"]
    for column in ("S_orig", "S_upd", "RB_orig", "RB_upd"):
        assert [r[column] for r in rows] == approx(list(imp[column]))
    assert [r["logw"] for r in rows] == approx(list(logw))
    assert [r["importance_weight"] for r in rows] == approx(list(np.exp(logw - logw.max())))  # the user's weights
    assert [r["exp_logw"] for r in rows] == approx(list(np.exp(logw)))


def check_tokens(log, batches) -> None:
    """Token rows cover the response region: first response token to the row's end, padding masked."""
    for key, name in (("E", "E_batch"), ("U", "U_batch")):
        batch, seq = batches[key]
        B, G, _ = batch["sequences"].shape
        chunks = list(log.stream(f"tokens/{name}"))
        assert all(chunk.rows <= 64 for chunk in chunks)  # written in chunks, not as one blob
        rows = [row for chunk in chunks for row in chunk.iter_rows()]
        assert len(rows) == B * G
        for n, (row, (prompt, response, mask)) in enumerate(zip(rows, rows_of(batch))):
            b, g = divmod(n, G)
            begin = np.flatnonzero(mask)[len(prompt)]  # where the first response token sits
            region = batch["sequences"][b, g, begin:].numpy()
            assert row["sequence_id"] == n
            assert np.array_equal(row["tokens"].numpy(), region)
            assert np.array_equal(row["tokens"].numpy()[: len(response)], response)
            assert np.array_equal(row["attention_mask"].numpy(), mask[begin:].astype(np.uint8))
            for column, given in (("token_logprobs", seq["token_logprobs"]), ("rb_entropies", seq["token_entropies"])):
                values = np.zeros(len(region), dtype=np.float32)  # the j-th generated value at position j
                kept = min(len(region), given.shape[-1])
                values[:kept] = given[b, g, :kept].numpy()
                assert np.array_equal(row[column].numpy(), values), column
            assert "token_texts" not in row  # no tokenizer given


def check_raw_tensors(log, batches) -> None:
    imp = batches["importance"]
    for key in ("S_orig", "S_upd", "RB_orig", "RB_upd"):
        assert torch.equal(log.tensor(f"E_batch/{key}"), imp[key])
    logw = (imp["S_upd"].double() - imp["S_orig"].double()).reshape(-1)
    assert torch.allclose(log.tensor("E_batch/logw"), logw)
    assert torch.allclose(log.tensor("E_batch/importance_weights"), torch.exp(logw - logw.max()))
    for key in ("E", "U"):
        batch = batches[key][0]
        for name, value in batch.items():  # every tensor of the batch, prompts included
            if isinstance(value, torch.Tensor):
                assert torch.equal(log.tensor(f"{key}_batch/{name}"), value), name


# --- switches ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level, switches, streams, tensors", [
    ("debug", {"log_tokens": False}, LEVEL_STREAMS["detailed"], DEBUG_TENSORS),
    ("debug", {"log_raw_tensors": False}, LEVEL_STREAMS["debug"], set()),
    ("debug", {"log_sequences": False}, {"tokens/E_batch", "tokens/U_batch"}, DEBUG_TENSORS),
    ("detailed", {"log_sequences": False}, set(), set()),
    ("standard", {"log_sequences": True, "log_tokens": True, "log_raw_tensors": True}, set(), set()),
])
def test_switches_turn_parts_off_but_never_on_above_the_level(tmp_path, batches, level, switches, streams, tensors):
    config = config_for(tmp_path, level, **switches)
    path = run_like_the_probe(DetailedLogger(config), config, batches)
    with asynclog.open(path) as log:
        assert set(log.stream_names()) == streams
        assert set(log.tensor_names()) == tensors


def test_token_rows_follow_a_packed_layout_too(tmp_path):
    """Prompts at the row's start, responses right after: each row's region starts at its own offset."""
    E, E_seq = make_batch(40, 1, seed=9, rewards=False, packed=True)
    U, U_seq = make_batch(10, 4, seed=10, rewards=True, packed=True)
    config = config_for(tmp_path, "debug")
    logger = DetailedLogger(config)
    logger.log_run_start("step_1", config)
    logger.log_batch_data("E_batch", E, E_seq)
    logger.log_batch_data("U_batch", U, U_seq)
    with asynclog.open(logger.finalize_log({})) as log:
        check_tokens(log, {"E": (E, E_seq), "U": (U, U_seq)})
        check_statistics(log, {"E": (E, E_seq), "U": (U, U_seq)})


# --- texts -------------------------------------------------------------------------------------------------
class WordTokenizer:
    """A real (if tiny) tokenizer: id i is the word "w<i>"."""

    def decode(self, ids) -> str:
        return " ".join(f"w{int(i)}" for i in ids)


def test_texts_come_from_the_tokenizer_when_the_batch_has_none(tmp_path):
    batch, seq = make_batch(4, 2, seed=5, rewards=True, gen_max=20, texts=False)
    config = config_for(tmp_path, "debug")
    logger = DetailedLogger(config, tokenizer=WordTokenizer())
    logger.log_run_start("step_1", config)
    logger.log_batch_data("U_batch", batch, seq)
    path = logger.finalize_log({})
    with asynclog.open(path) as log:
        sequences, tokens = list(log.rows("sequences/U_batch")), list(log.rows("tokens/U_batch"))
    for (prompt, response, _), row, token_row in zip(rows_of(batch), sequences, tokens):
        assert row["prompt_text"] == " ".join(f"w{i}" for i in prompt)
        assert row["response_text"] == " ".join(f"w{i}" for i in response)
        assert token_row["token_texts"] == [f"w{i}" for i in token_row["tokens"].tolist()]
        assert token_row["token_texts"][: len(response)] == [f"w{i}" for i in response]


class CountingTokenizer(WordTokenizer):
    """A WordTokenizer that counts how often each id is decoded alone (``batch_decode`` of single ids, the way
    token texts are decoded)."""

    def __init__(self):
        self.decoded: Counter = Counter()

    def batch_decode(self, sequences) -> list[str]:
        self.decoded.update(ids[0] for ids in sequences if len(ids) == 1)
        return [self.decode(ids) for ids in sequences]


def logged_ids(log, *batches: str) -> set[int]:
    return {i for name in batches for row in log.rows(f"tokens/{name}") for i in row["tokens"].tolist()}


def vocabulary(log) -> tuple[list[int], list[str]]:
    """The ids and texts of the run's ``vocab`` table, whose rows each hold a list of ids and their texts."""
    rows = list(log.rows("vocab"))
    return [i for row in rows for i in row["token_id"]], [text for row in rows for text in row["text"]]


def stored_columns(log, stream: str) -> set[str]:
    return {column["name"] for chunk in log.stream(stream) for column in chunk.meta["columns"]}


def test_token_texts_are_stored_once_per_id_and_joined_when_read(tmp_path, batches):
    tokenizer = CountingTokenizer()
    config = config_for(tmp_path, "debug")
    path = run_like_the_probe(DetailedLogger(config, tokenizer=tokenizer), config, batches)
    with asynclog.open(path) as log:
        for name in ("E_batch", "U_batch"):
            assert "token_texts" not in stored_columns(log, f"tokens/{name}")  # no string per token on disk
            for row in log.rows(f"tokens/{name}"):
                assert row["token_texts"] == [f"w{i}" for i in row["tokens"].tolist()]
        ids, texts = vocabulary(log)
        assert len(ids) == len(set(ids))  # each id once, though E and U share most of them
        assert set(ids) == logged_ids(log, "E_batch", "U_batch")
        assert texts == [f"w{i}" for i in ids]
    assert set(tokenizer.decoded.values()) == {1}


def test_a_sweep_writes_each_runs_vocabulary_and_decodes_each_id_once(tmp_path):
    tokenizer = CountingTokenizer()
    config = config_for(tmp_path, "debug", max_files=0)
    logger = DetailedLogger(config, tokenizer=tokenizer)
    paths = []
    for step, seed in ((1, 21), (2, 22)):
        batch, seq = make_batch(16, 4, seed=seed, rewards=True, gen_max=40)
        logger.log_run_start(f"step_{step}", config)
        logger.log_batch_data("U_batch", batch, seq)
        paths.append(logger.finalize_log({}))
    seen = []
    for path in paths:  # each file alone holds the texts of the ids it logged
        with asynclog.open(path) as log:
            ids, _ = vocabulary(log)
            assert sorted(ids) == sorted(logged_ids(log, "U_batch"))
            assert all(row["token_texts"] == [f"w{i}" for i in row["tokens"].tolist()]
                       for row in log.rows("tokens/U_batch"))
            seen.append(set(ids))
    assert seen[0] & seen[1]  # the runs share ids: the second run stored them again, decoded them not again
    assert set(tokenizer.decoded) == seen[0] | seen[1] and set(tokenizer.decoded.values()) == {1}


def test_the_probes_own_result_objects_are_read_by_attribute(tmp_path):
    """A probe passing its BatchedSequences / LogprobResults objects as they are gets their texts and values."""
    batch, seq = make_batch(3, 2, seed=6, rewards=True, gen_max=10, texts=False)

    class LogprobResults:  # the probe's container, with its field names
        def __init__(self):
            self.sequence_logprobs = seq["sequence_logprob"].tolist()
            self.responses_text = [[f"r{b}{g}" for g in range(2)] for b in range(3)]

    config = config_for(tmp_path, "detailed")
    logger = DetailedLogger(config)
    logger.log_run_start("step_1", config)
    logger.log_batch_data("U_batch", batch, LogprobResults())
    with asynclog.open(logger.finalize_log({})) as log:
        rows = list(log.rows("sequences/U_batch"))
    assert [r["response_text"] for r in rows] == [f"r{b}{g}" for b in range(3) for g in range(2)]
    assert [r["sequence_logprob"] for r in rows] == approx(seq["sequence_logprob"].reshape(-1).tolist())
    assert all(r["prompt_text"] is None for r in rows)


def test_a_misspelt_sequences_key_is_an_error_naming_it(tmp_path):
    batch, seq = make_batch(2, 1, seed=7, rewards=False, gen_max=5)
    config = config_for(tmp_path, "detailed")
    logger = DetailedLogger(config)
    logger.log_run_start("step_1", config)
    with pytest.raises(asynclog.LogInputError, match="sequence_logprobz"):
        logger.log_batch_data("E_batch", batch, {"sequence_logprobz": seq["sequence_logprob"]})
    with pytest.raises(asynclog.LogInputError, match="attention_masks"):
        logger.log_batch_data("E_batch", {k: v for k, v in batch.items() if k != "attention_masks"})
    logger.finalize_log({})


# --- memory ------------------------------------------------------------------------------------------------
def test_a_debug_batch_of_2048_by_150_is_held_one_chunk_at_a_time(tmp_path):
    batch, seq = make_batch(2048, 1, seed=8, rewards=False, gen_max=150, texts=False)
    payload = sum(t.numel() * t.element_size() for t in (batch["sequences"], seq["token_logprobs"],
                                                          seq["token_entropies"]))
    config = config_for(tmp_path, "debug")
    logger = DetailedLogger(config)
    logger.log_run_start("step_1", config)
    tracemalloc.start()
    try:
        logger.log_batch_data("E_batch", batch, seq)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    path = logger.finalize_log({})
    with asynclog.open(path) as log:
        assert sum(chunk.rows for chunk in log.stream("tokens/E_batch")) == 2048
    assert peak < payload / 8, f"peak {peak} bytes while logging a {payload}-byte batch"


# --- summary, lifecycle, crash -----------------------------------------------------------------------------
def test_finalize_writes_the_summary_with_timing_and_logging_cost(tmp_path, batches):
    config = config_for(tmp_path, "standard")
    logger = DetailedLogger(config)
    path = run_like_the_probe(logger, config, batches)
    summary = read_summary(path)
    assert summary == logger.last_summary
    assert summary["log_path"] == path and summary["complete"] is True and summary["reason"] is None
    # what the probe logged, completed from its final results
    assert summary["core_results"] == {**CORE, "deltaH_true": GROUND_TRUTH["deltaH_true"]}
    assert summary["ground_truth"] == {**GROUND_TRUTH, "ESS": GROUND_TRUTH["diagnostics"]["ESS"]}
    assert summary["timing"]["phase1_sum_X"] == 8.92  # the probe's own figure; the one measured here beside it
    assert set(summary["timing"]) == {"total_time", "phase1_sum_X", *(f"{p}_time" for p in PHASES)}
    cost = summary["logging_cost"]
    for key in ("calls", "producer_seconds", "producer_p50_us", "producer_p99_us", "bytes_in", "bytes_on_disk",
                "compression_ratio", "dropped_records", "dropped_tensors", "dropped_chunks", "queue_high_water",
                "probe_seconds", "fraction_of_run", "start_seconds", "close_seconds"):
        assert key in cost, key
    assert cost["calls"] > 0 and cost["bytes_on_disk"] == os.path.getsize(path)
    assert 0 < cost["producer_seconds"] <= cost["probe_seconds"]
    assert cost["start_seconds"] + cost["close_seconds"] <= cost["probe_seconds"]


def test_core_results_come_from_final_results_when_the_probe_logs_none(tmp_path):
    config = config_for(tmp_path, "minimal")
    logger = DetailedLogger(config)
    logger.log_run_start("step_1", config)
    path = logger.finalize_log({**CORE, "timing": {"phase1_sum_X": 1.5}, "extra": [1, 2]})
    with asynclog.open(path) as log:
        assert next(log.events(name="core_results"))["data"] == CORE
    assert read_summary(path)["timing"]["phase1_sum_X"] == 1.5


def test_one_logger_serves_a_sweep_and_closes_an_unfinished_run_incomplete(tmp_path):
    config = config_for(tmp_path, "minimal")
    logger = DetailedLogger(config)
    first = logger.log_run_start("step_10", config)
    second = logger.log_run_start("step_20", config)  # step_10 never finalized
    assert logger.finalize_log(CORE) == second
    assert read_summary(first)["complete"] is False
    assert "before finalize_log" in read_summary(first)["reason"]
    with asynclog.open(first) as log:
        assert not log.complete
    assert read_summary(second)["complete"] is True
    assert logger.finalize_log(CORE) is None  # nothing open: a no-op


def test_max_files_keeps_the_newest_runs(tmp_path):
    config = config_for(tmp_path, "minimal", max_files=2)
    logger = DetailedLogger(config)
    paths = []
    for step in range(4):
        paths.append(logger.log_run_start(f"step_{step}", config))
        logger.finalize_log(CORE)
        os.utime(paths[-1], (1000 + step, 1000 + step))  # distinct ages, whatever the clock's resolution
    assert [os.path.exists(p) for p in paths] == [False, False, True, True]
    assert not os.path.exists(paths[0].removesuffix(".alog") + "_summary.json")


class Records(logging.Handler):
    """Keeps every record a logger emits."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def about_retention(self) -> list[logging.LogRecord]:
        return [r for r in self.records if "max_files" in r.getMessage()]


def probe_logger(name: str) -> tuple[logging.Logger, Records]:
    base, records = logging.getLogger(f"test_probe.{name}"), Records()
    base.setLevel(logging.DEBUG)
    base.propagate = False
    base.addHandler(records)
    return base, records


def test_retention_warns_once_naming_what_it_removed_then_says_it_in_a_line(tmp_path):
    config = config_for(tmp_path, "minimal", max_files=2)
    base, records = probe_logger("retention")
    logger = DetailedLogger(config, base)
    paths = []
    for step in range(4):
        paths.append(logger.log_run_start(f"step_{step}", config))
        logger.finalize_log(CORE)
        os.utime(paths[-1], (1000 + step, 1000 + step))  # distinct ages, whatever the clock's resolution
        if step < 2:
            assert records.about_retention() == []  # nothing removed: nothing said
    first, later = records.about_retention()
    assert first.levelno == logging.WARNING and later.levelno == logging.INFO
    text = first.getMessage()
    assert f"max_files: 2 keeps the newest 2 runs under {tmp_path}" in text
    stem = os.path.basename(paths[0]).removesuffix(".alog")
    assert all(name in text for name in (stem + ".alog", stem + "_summary.json", stem + "_config.yaml"))
    assert os.path.basename(paths[1]) in later.getMessage() and stem not in later.getMessage()
    assert not os.path.exists(paths[0]) and not os.path.exists(paths[1])


def test_retention_names_at_most_twelve_files_and_counts_the_rest(tmp_path):
    keep_all = config_for(tmp_path, "minimal", max_files=0)
    writer = DetailedLogger(keep_all)
    for step in range(6):
        writer.log_run_start(f"step_{step}", keep_all)
        writer.finalize_log(CORE)
    base, records = probe_logger("many_removed")
    config = config_for(tmp_path, "minimal", max_files=1)
    logger = DetailedLogger(config, base)
    logger.log_run_start("step_6", config)
    logger.finalize_log(CORE)
    [warning] = records.about_retention()
    assert "removed 18 file(s)" in warning.getMessage() and warning.getMessage().count(".alog") <= 12
    assert "and 6 more" in warning.getMessage()


def test_retention_that_removes_nothing_logs_nothing(tmp_path):
    config = config_for(tmp_path, "minimal", max_files=5)
    base, records = probe_logger("no_retention")
    logger = DetailedLogger(config, base)
    for step in range(3):
        logger.log_run_start(f"step_{step}", config)
        logger.finalize_log(CORE)
    assert records.about_retention() == [] and all(r.levelno < logging.WARNING for r in records.records)


def test_runs_are_named_by_the_checkpoint_folder_not_its_model_folder(tmp_path):
    config = config_for(tmp_path / "logs", "minimal", max_files=0)
    logger = DetailedLogger(config)
    names = []
    for step in (60, 120):
        names.append(os.path.basename(logger.log_run_start(tmp_path / "checkpoints" / f"step_{step}" / "model")))
        logger.finalize_log(CORE)
    assert [n.split("_", 3)[-1] for n in names] == ["step_60.alog", "step_120.alog"]


@pytest.mark.parametrize("rule, name", [("last", "model.alog"), (r"step_(\d+)", "60.alog"), ("auto", "step_60.alog")])
def test_checkpoint_name_setting_names_the_files(tmp_path, rule, name):
    config = config_for(tmp_path / "logs", "minimal", checkpoint_name=rule)
    logger = DetailedLogger(config)
    path = logger.log_run_start(tmp_path / "checkpoints" / "step_60" / "model")
    logger.finalize_log(CORE)
    assert os.path.basename(path).split("_", 3)[-1] == name
    with asynclog.open(path) as log:
        assert log.header["metadata"]["detailed_logging"]["checkpoint_name"] == rule


def test_compress_false_writes_raw_frames(tmp_path, batches):
    config = config_for(tmp_path, "detailed", compress=False)
    path = run_like_the_probe(DetailedLogger(config), config, batches)
    with asynclog.open(path) as log:
        assert log.header["config"]["compression"] == "raw"
        assert {header.filter for header, _ in log.frames()} == {0}


def test_config_sidecar_holds_the_exact_config(tmp_path):
    import yaml

    config = config_for(tmp_path, "minimal")
    logger = DetailedLogger(config)
    path = logger.log_run_start("step_1", config)
    logger.finalize_log({})
    with open(path.removesuffix(".alog") + "_config.yaml") as f:
        assert yaml.safe_load(f) == config


PROBE_SCRIPT = """
import os, sys, time, torch
import asynclog
from asynclog import DetailedLogger
config = {"detailed_logging": {"enabled": True, "level": "standard", "output_directory": sys.argv[1]}}
logger = DetailedLogger(config)
print(logger.log_run_start("/ckpts/step_60", config), flush=True)
logger.log_core_results({"bars_dot": 0.5, "deltaH1": 0.25})
logger.log_phase_start("phase5_importance")
# A round trip through the same writer: once another run's open is answered, the writer has everything
# handed over before it (a kill a moment after a flush could otherwise beat the sender thread).
asynclog.start(os.path.join(sys.argv[1], "barrier"), name="barrier", config=logger.engine_config)
print("ready", flush=True)
if sys.argv[2] == "hang":
    time.sleep(120)
"""


def _start_probe(tmp_path, mode: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", PROBE_SCRIPT, str(tmp_path), mode], stdout=subprocess.PIPE,
                            text=True)
    path = proc.stdout.readline().strip()
    assert proc.stdout.readline().strip() == "ready"
    return proc, path


def _wait_for(path: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_kill_9_before_finalize_leaves_a_summary_marked_incomplete(tmp_path):
    proc, path = _start_probe(tmp_path, "hang")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    summary_path = path.removesuffix(".alog") + "_summary.json"
    _wait_for(summary_path)
    summary = read_summary(path)
    assert summary["complete"] is False
    assert "probe process ended" in summary["reason"]
    assert summary["run_metadata"]["checkpoint_path"] == "/ckpts/step_60"
    with asynclog.open(path) as log:
        assert not log.complete
        assert next(log.events(name="core_results"))["data"] == {"bars_dot": 0.5, "deltaH1": 0.25}
        assert [e["data"]["phase"] for e in log.events(name="phase_start")] == ["phase5_importance"]


def test_exiting_without_finalize_closes_the_run_incomplete(tmp_path):
    proc, path = _start_probe(tmp_path, "exit")
    assert proc.wait() == 0
    summary = read_summary(path)
    assert summary["complete"] is False and "exited before finalize_log" in summary["reason"]
    assert summary["core_results"] == {"bars_dot": 0.5, "deltaH1": 0.25}


def test_disabled_logger_returns_at_once_and_starts_no_writer(tmp_path, batches):
    script = textwrap.dedent("""
        import json, os, sys, psutil, torch
        from asynclog import DetailedLogger
        out = sys.argv[1]
        g = torch.Generator().manual_seed(0)
        batch = {"sequences": torch.ones(4, 2, 10, dtype=torch.long), "attention_masks": torch.ones(4, 2, 10),
                 "prompt_lens": [3, 3, 3, 3], "advantages": torch.zeros(4, 2)}
        for config in ({"detailed_logging": {"enabled": False, "level": "debug", "output_directory": out}},
                       {"detailed_logging": {"level": "debug", "output_directory": out}}, {}):
            logger = DetailedLogger(config)
            returns = [logger.log_run_start("step_1", config), logger.log_phase_start("p"),
                       logger.log_phase_end("p", {"a": 1}), logger.log_batch_data("E_batch", batch),
                       logger.log_core_results({"bars_dot": 1.0}), logger.log_ground_truth_results({"H": 1.0}),
                       logger.log_importance_sampling_details(torch.zeros(4), torch.zeros(4), torch.zeros(4),
                                                              torch.zeros(4)),
                       logger.finalize_log({"bars_dot": 1.0})]
            assert returns == [None] * 8, returns
        print(json.dumps({"children": len(psutil.Process().children(recursive=True)), "out": os.path.exists(out)}))
    """)
    out = tmp_path / "logs"
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == {"children": 0, "out": False}


# --- config errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("section, key", [
    ({"enabled": True, "levle": "debug"}, "levle"),
    ({"level": "verbose"}, "level"),
    ({"level": 3}, "level"),
    ({"max_files": "ten"}, "max_files"),
    ({"max_files": -1}, "max_files"),
    ({"compress": "yes"}, "compress"),
    ({"log_tokens": 1}, "log_tokens"),
    ({"output_directory": ["a"]}, "output_directory"),
    ({"filename_template": "probe_{run_id}.json"}, "filename_template"),
    ({"checkpoint_name": "step_(\\d+"}, "checkpoint_name"),
    ({"checkpoint_name": 60}, "checkpoint_name"),
])
def test_config_errors_name_the_key(section, key):
    with pytest.raises(asynclog.ConfigError, match=key) as info:
        DetailedLogger({"detailed_logging": section})
    assert "detailed_logging" in str(info.value)


def test_engine_section_errors_name_the_key_and_the_file(tmp_path):
    path = tmp_path / "probe.yaml"
    path.write_text("detailed_logging:\n  enabled: true\nasynclog:\n  stagign_bytes: 1024\n")
    with pytest.raises(asynclog.ConfigError, match="stagign_bytes") as info:
        DetailedLogger(str(path))
    assert str(path) in str(info.value)
    with pytest.raises(asynclog.ConfigError, match="detailed_logging"):
        DetailedLogger({"detailed_logging": "debug"})


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.mark.parametrize("level", ["minimal", "standard", "detailed", "debug"])
def test_shipped_configs_load_at_their_level(level):
    path = os.path.join(CONFIGS, f"{level}.yaml")
    logger = DetailedLogger(path)
    assert logger.enabled and logger.level == level and logger.engine_config.level == level
    assert asynclog.Config.from_yaml(path).staging_bytes == logger.engine_config.staging_bytes


def test_the_staging_pool_fits_the_level_unless_the_config_sets_one():
    def pool(level: str, engine: dict | None = None, flat: bool = False) -> int:
        probe = {"enabled": True, "level": level}
        config = {**(engine or {}), "level": level} if flat else {"detailed_logging": probe}
        if engine is not None and not flat:
            config["asynclog"] = engine
        return DetailedLogger(config).engine_config.staging_bytes

    core = asynclog.Config().staging_bytes
    assert pool("minimal") <= 1 << 20 and pool("standard") <= 1 << 20  # records only: nothing is staged
    assert pool("standard", {}) <= 1 << 20 and pool("standard", {}, flat=True) <= 1 << 20
    assert 1 << 20 < pool("detailed") <= pool("debug") < core
    assert pool("standard", {"staging_bytes": 64 << 20}) == 64 << 20
    assert pool("standard", {"staging_bytes": core}) == core  # the core's default, asked for, is kept
    assert pool("debug", {"staging_bytes": 8 << 20}, flat=True) == 8 << 20


def test_compress_false_maps_to_raw_compression():
    logger = DetailedLogger({"detailed_logging": {"compress": False}, "asynclog": {"compression": "zstd"}})
    assert logger.engine_config.compression == "raw"
    assert DetailedLogger({"asynclog": {"compression": "zstd"}}).engine_config.compression == "zstd"


def test_plain_values_make_any_result_dict_loggable():
    from asynclog.probe.logger import plain

    value = plain({1: torch.tensor(2.5), "big": torch.zeros(1000), "small": np.arange(3), "nan": math.nan,
                   "path": __import__("pathlib").Path("/x"), "nested": ({"a": np.float32(1.5)},)})
    assert value == {"1": 2.5, "big": {"tensor_shape": [1000], "dtype": "float32"}, "small": [0, 1, 2],
                     "nan": value["nan"], "path": "/x", "nested": [{"a": 1.5}]}
    assert math.isnan(value["nan"])
