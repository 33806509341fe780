"""DetailedLogger on the batches the user's probe really builds, checked against what was generated.

The probe's SequenceProcessor tokenizes a batch's prompts together (left-padded, with ``pad_token =
eos_token``), generates, and returns a ``BatchedSequences`` whose ``prompt_lens`` is the padded prompt width
for every prompt, ``gen_lens`` counts up to the last token that is not padding, and ``attention_masks`` is
``sequences != pad``; the probe then packs the E and U batch dicts from it (no ``gen_lens``, no rewards,
``max_lengths`` per prompt) and calls ``log_batch_data(name, batch)``. ``generate`` below builds the same
structures from token lists it chose itself, so every expected value comes from those lists, not from a mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import asynclog
from asynclog import DetailedLogger

EOS = 1


@dataclass
class BatchedSequences:  # the probe's container: its field names, types and shapes
    sequences: torch.Tensor  # [B, G, total_len]
    prompt_lens: list  # [B], the padded prompt width
    gen_lens: list  # [B][G]
    attention_masks: torch.Tensor  # [B, G, total_len] bool
    responses_text: list  # [B][G]


@dataclass
class LogprobResults:
    logprobs: list  # [B][G] 1-D tensors over the generated tokens
    entropies: list  # [B][G] numpy arrays
    sequence_logprobs: list  # [B][G] floats
    rb_entropies: list  # [B][G] numpy arrays
    rewards: list  # [B][G] floats


class WordTokenizer:
    """Token i reads "w<i>"; EOS reads "<eos>"."""

    def decode(self, ids) -> str:
        return " ".join("<eos>" if int(i) == EOS else f"w{int(i)}" for i in ids)


@dataclass
class Generated:
    """What was generated, the probe's structures built from it, and the truth per sequence (b, g)."""

    seqs: BatchedSequences
    logprobs: LogprobResults
    prompts: list  # [B] token lists
    responses: list  # [B][G] the response tokens the probe counts (gen_lens' span)

    @property
    def B(self) -> int:
        return len(self.prompts)

    @property
    def G(self) -> int:
        return len(self.responses[0])

    def truth(self):
        for b in range(self.B):
            for g in range(self.G):
                yield b, g, self.prompts[b], self.responses[b][g]


def generate(B: int, G: int, seed: int, padding_side: str = "left", pad: int = EOS, pad_inside: bool = False,
             max_new: int = 24) -> Generated:
    """Prompts of 3..12 tokens padded together; G responses each of 0..max_new tokens, ended by EOS (unless cut
    at max_new), padded with ``pad`` to the longest; with ``pad_inside`` (pad != EOS) some responses hold the
    pad id mid-way, as a model may emit it."""
    rng = np.random.default_rng(seed)
    words = lambda n: [int(t) for t in rng.integers(10, 5000, n)]  # noqa: E731
    prompts = [words(rng.integers(3, 13)) for _ in range(B)]
    width = max(map(len, prompts))
    emitted = [[_response(rng, words, max_new, pad if pad_inside else None) for _ in range(G)] for _ in range(B)]
    total = width + max(len(r) for rows in emitted for r in rows)
    sequences = torch.full((B, G, total), pad, dtype=torch.long)
    for b, prompt in enumerate(prompts):
        at = width - len(prompt) if padding_side == "left" else 0
        sequences[b, :, at : at + len(prompt)] = torch.tensor(prompt)
        for g, tokens in enumerate(emitted[b]):
            sequences[b, g, width : width + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    # gen_lens as the probe counts: up to the last token that is not padding (EOS-as-padding excluded)
    responses = [[_strip_trailing(tokens, pad) for tokens in rows] for rows in emitted]
    tok = WordTokenizer()
    seqs = BatchedSequences(sequences, [width] * B, [[len(r) for r in rows] for rows in responses], sequences != pad,
                            [[tok.decode(r) for r in rows] for rows in responses])
    values = [[rng.normal(size=len(r)) for r in rows] for rows in responses]
    logprobs = LogprobResults(
        logprobs=[[torch.tensor(-np.abs(v), dtype=torch.float32) for v in rows] for rows in values],
        entropies=[[np.abs(v).astype(np.float32) for v in rows] for rows in values],
        sequence_logprobs=[[float(-np.abs(v).sum()) for v in rows] for rows in values],
        rb_entropies=[[np.abs(v).astype(np.float32) * 2 for v in rows] for rows in values],
        rewards=[[float(rng.random()) for _ in range(G)] for _ in range(B)])
    return Generated(seqs, logprobs, prompts, responses)


def _response(rng, words, max_new: int, pad_inside: int | None) -> list[int]:
    n = int(rng.integers(0, max_new + 1))
    tokens = words(n)
    if pad_inside is not None and n > 2 and rng.random() < 0.5:
        tokens[n // 2] = pad_inside
    return tokens + [EOS] if n < max_new else tokens  # cut at max_new: no EOS


def _strip_trailing(tokens: list[int], pad: int) -> list[int]:
    end = len(tokens)
    while end and tokens[end - 1] == pad:
        end -= 1
    return tokens[:end]


def pack_E(seqs: BatchedSequences) -> dict:
    """The E batch dict as the probe packs it."""
    B, G = seqs.sequences.shape[:2]
    return {"sequences": seqs.sequences, "attention_masks": seqs.attention_masks, "prompt_lens": seqs.prompt_lens,
            "advantages": torch.zeros(B, G), "max_lengths": [max(lens) for lens in seqs.gen_lens],
            "num_prompts": B, "num_responses_per_prompt": G}


def pack_U(seqs: BatchedSequences, rewards: list) -> dict:
    """The U batch dict as the probe packs it: advantages are rewards centred per prompt; no rewards key."""
    batch = pack_E(seqs)
    advantages = torch.tensor(rewards, dtype=torch.float32)
    batch["advantages"] = advantages - advantages.mean(dim=1, keepdim=True)
    return batch


def config_for(out, level: str = "debug", **switches) -> dict:
    return {"batch_config": {"B_E": 16, "B_U": 4, "G": 8},
            "detailed_logging": {"enabled": True, "level": level, "output_directory": str(out), "max_files": 0,
                                 "log_tokens": True, "log_raw_tensors": True, **switches},
            "asynclog": {"staging_bytes": 8 << 20}}


def log_batches(tmp_path, batches: dict, tokenizer=None, level: str = "debug", logger=None):
    """One run logging ``batches`` ({name: (batch, sequences)}) as the probe does; returns the open log."""
    config = config_for(tmp_path, level)
    dl = DetailedLogger(config, logger)
    dl.log_run_start("/ckpts/step_60/model", config)
    dl.tokenizer = tokenizer  # the probe builds its logger before its tokenizer
    for name, (batch, sequences) in batches.items():
        dl.log_batch_data(name, batch, sequences)
    return asynclog.open(dl.finalize_log({}))


def expected_statistics(gen: Generated) -> dict:
    prompts = np.array([len(p) for p in gen.prompts], dtype=float)
    gens = np.array([len(r) for _, _, _, r in gen.truth()], dtype=float)
    lengths = np.array([len(p) + len(r) for _, _, p, r in gen.truth()], dtype=float)
    q = [10, 25, 50, 75, 90]
    return {"num_prompts": gen.B, "num_sequences": gen.B * gen.G, "G": gen.G,
            "avg_prompt_length": prompts.mean(), "avg_generation_length": gens.mean(),
            "std_generation_length": gens.std(), "min_generation_length": gens.min(),
            "max_generation_length": gens.max(), "avg_sequence_length": lengths.mean(),
            "max_sequence_length": lengths.max(), "generation_length_distribution": list(np.percentile(gens, q)),
            "generation_length_percentiles": list(np.percentile(gens, q)),
            "sequence_length_distribution": list(np.percentile(lengths, q))}


def check_batch(log, name: str, gen: Generated, decoded: bool) -> None:
    stats = next(e["data"] for e in log.events(name="batch_statistics") if e["data"]["batch"] == name)
    for key, value in expected_statistics(gen).items():
        assert stats[key] == pytest.approx(value, rel=1e-9), key
    assert stats["prompt_lens_meaning"] == "padded prompt width"
    tok = WordTokenizer()
    rows, tokens = list(log.rows(f"sequences/{name}")), list(log.rows(f"tokens/{name}"))
    for (b, g, prompt, response), row, token_row in zip(gen.truth(), rows, tokens, strict=True):
        assert (row["prompt_id"], row["response_id"]) == (b, g)
        assert (row["prompt_length"], row["generation_length"]) == (len(prompt), len(response))
        assert token_row["tokens"][: len(response)].tolist() == response
        if decoded:
            assert row["prompt_text"] == tok.decode(prompt)
            assert row["response_text"] == tok.decode(response)


# --- the user's real batches: wrong numbers before ------------------------------------------------------------
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_left_or_right_padded_prompts_give_the_true_lengths_texts_and_token_rows(tmp_path, padding_side):
    E, U = generate(16, 1, seed=1, padding_side=padding_side), generate(4, 8, seed=2, padding_side=padding_side)
    with log_batches(tmp_path, {"E_batch": (pack_E(E.seqs), None),
                                "U_batch": (pack_U(U.seqs, U.logprobs.rewards), None)}, WordTokenizer()) as log:
        check_batch(log, "E_batch", E, decoded=True)
        check_batch(log, "U_batch", U, decoded=True)


def test_a_pad_id_inside_a_response_counts_as_the_probe_counts_it(tmp_path):
    """pad != EOS and the model emitted the pad id mid-way: the mask has a hole, gen_lens does not."""
    U = generate(6, 8, seed=3, pad=0, pad_inside=True)
    assert any(0 in r[:-1] for rows in U.responses for r in rows)  # the case is really there
    with log_batches(tmp_path, {"U_batch": (pack_U(U.seqs, U.logprobs.rewards), None)}, WordTokenizer()) as log:
        check_batch(log, "U_batch", U, decoded=True)


def test_the_probes_own_objects_give_texts_lengths_rewards_and_token_values_without_a_tokenizer(tmp_path):
    U = generate(4, 8, seed=4)
    with log_batches(tmp_path, {"U_batch": (pack_U(U.seqs, U.logprobs.rewards), U.seqs)}) as log:
        check_batch(log, "U_batch", U, decoded=False)
        rows = list(log.rows("sequences/U_batch"))
        assert [r["response_text"] for r in rows] == [t for texts in U.seqs.responses_text for t in texts]
    with log_batches(tmp_path / "lp", {"U_batch": (pack_U(U.seqs, U.logprobs.rewards), U.logprobs)}) as log:
        rows, tokens = list(log.rows("sequences/U_batch")), list(log.rows("tokens/U_batch"))
        for (b, g, _, response), row, token_row in zip(U.truth(), rows, tokens, strict=True):
            assert row["reward"] == pytest.approx(U.logprobs.rewards[b][g])
            assert row["sequence_logprob"] == pytest.approx(U.logprobs.sequence_logprobs[b][g])
            assert token_row["token_logprobs"][: len(response)].tolist() == pytest.approx(
                U.logprobs.logprobs[b][g].tolist())


def test_results_the_probe_left_empty_are_not_logged_as_values(tmp_path):
    """Its teacher forcing returns rewards=[] (filled in later) and empty rb_entropies without compute_rb."""
    E = generate(5, 1, seed=9)
    empty = LogprobResults(E.logprobs.logprobs, E.logprobs.entropies, E.logprobs.sequence_logprobs,
                           rb_entropies=[[np.array([])] for _ in range(5)], rewards=[])
    with log_batches(tmp_path, {"E_batch": (pack_E(E.seqs), empty)}) as log:
        check_batch(log, "E_batch", E, decoded=False)
        token_row, row = next(log.rows("tokens/E_batch")), next(log.rows("sequences/E_batch"))
    assert "rb_entropies" not in token_row and "token_logprobs" in token_row
    assert row["reward"] is None


def test_gen_lens_that_contradict_the_mask_are_used_and_reported_once(tmp_path):
    U = generate(4, 8, seed=5)
    U.seqs.gen_lens[1][3] += 2  # not what the mask shows
    logger = logging.getLogger("probe-under-test")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        with log_batches(tmp_path, {"U_batch": (pack_U(U.seqs, U.logprobs.rewards), U.seqs),
                                    "U_again": (pack_U(U.seqs, U.logprobs.rewards), U.seqs)}, logger=logger) as log:
            rows = list(log.rows("sequences/U_batch"))
    finally:
        logger.removeHandler(handler)
    assert rows[1 * 8 + 3]["generation_length"] == len(U.responses[1][3]) + 2
    said = [r.getMessage() for r in records if "gen_lens disagrees" in r.getMessage()]
    assert len(said) == 2 and all("1 of 32" in m and "used gen_lens" in m for m in said)  # once per batch name


def test_prompt_lens_counting_real_tokens_is_told_apart_by_the_batch(tmp_path):
    """The earlier contract (prompt_lens = real prompt tokens, prompts left-padded) still reads right: its
    responses start at one column only when read that way."""
    U = generate(6, 2, seed=6)
    batch = pack_U(U.seqs, U.logprobs.rewards)
    batch["prompt_lens"] = [len(p) for p in U.prompts]
    del batch["max_lengths"]
    with log_batches(tmp_path, {"U_batch": (batch, None)}) as log:
        stats = next(log.events(name="batch_statistics"))["data"]
        assert stats["prompt_lens_meaning"] == "real prompt tokens"
        assert stats["avg_generation_length"] == pytest.approx(np.mean([len(r) for *_, r in U.truth()]))


def test_a_batch_that_cannot_tell_the_meaning_of_prompt_lens_warns_and_reads_the_padded_width(tmp_path, caplog):
    """One sequence, its prompt padded 3 columns wider than itself: either reading starts "all" responses
    at one column, and no gen_lens or max_lengths says which."""
    E = generate(1, 1, seed=7)
    batch = pack_E(E.seqs)
    del batch["max_lengths"]
    batch["sequences"] = torch.cat([torch.full((1, 1, 3), EOS), batch["sequences"]], dim=-1)
    batch["attention_masks"] = batch["sequences"] != EOS
    batch["prompt_lens"] = [batch["prompt_lens"][0] + 3]
    with caplog.at_level(logging.WARNING, logger="asynclog.probe"):
        with log_batches(tmp_path, {"E_batch": (batch, None)}) as log:
            row = next(log.rows("sequences/E_batch"))
    assert "nothing in the batch" in caplog.text and "read as the padded prompt width" in caplog.text
    assert (row["prompt_length"], row["generation_length"]) == (len(E.prompts[0]), len(E.responses[0][0]))


# --- what the user's logger kept ---------------------------------------------------------------------------
def test_core_results_take_G_from_the_config_when_the_results_lack_it(tmp_path):
    config = config_for(tmp_path, "minimal")
    logger = DetailedLogger(config)
    path = logger.log_run_start("/ckpts/step_60/model", config)
    logger.finalize_log({"bars_dot": 1.5, "deltaH1": 0.5, "B_E": 16})
    with asynclog.open(path) as log:
        assert next(log.events(name="core_results"))["data"] == {"bars_dot": 1.5, "deltaH1": 0.5, "B_E": 16, "G": 8}
    assert logger.last_summary["core_results"]["G"] == 8


def test_importance_sampling_details_are_kept_at_detailed_without_sequences(tmp_path):
    config = config_for(tmp_path, "detailed", log_sequences=False)
    logger = DetailedLogger(config)
    path = logger.log_run_start("/ckpts/step_60/model", config)
    S_orig, S_upd = torch.tensor([[-40.0], [-42.0], [-45.0]]), torch.tensor([[-40.5], [-41.0], [-45.25]])
    RB_orig, RB_upd = torch.tensor([[2.0], [2.5], [3.0]]), torch.tensor([[2.25], [2.5], [2.75]])
    logger.log_ground_truth_results({"H_orig": 2.5, "diagnostics": {"ESS": 2.75}})
    logger.log_importance_sampling_details(S_orig, S_upd, RB_orig, RB_upd)
    logger.finalize_log({})
    logw = (S_upd - S_orig).double().reshape(-1)
    weights = torch.exp(logw - logw.max())  # the user's definition
    with asynclog.open(path) as log:
        details = next(log.events(name="importance_sampling_details"))["data"]
        assert log.stream_names() == []
    assert details["logw_stats"] == pytest.approx({"mean": logw.mean().item(), "std": logw.std().item(),
                                                   "min": logw.min().item(), "max": logw.max().item()})
    assert details["weight_stats"]["max"] == 1.0
    assert details["weight_stats"]["mean"] == pytest.approx(weights.mean().item())
    assert details["S_orig_stats"]["shape"] == [3, 1] and details["RB_upd_stats"]["min"] == 2.25
    summary_gt = logger.last_summary["ground_truth"]
    assert summary_gt["ESS"] == 2.75
    assert {**summary_gt["importance_sampling_details"], "batch": "E_batch"} == details


def test_a_tokenizer_set_after_the_run_starts_decodes_the_batch(tmp_path):
    E = generate(3, 1, seed=8)
    with log_batches(tmp_path, {"E_batch": (pack_E(E.seqs), None)}, WordTokenizer()) as log:
        rows = list(log.rows("sequences/E_batch"))
    assert [r["prompt_text"] for r in rows] == [WordTokenizer().decode(p) for p in E.prompts]


def test_switches_default_as_the_users_logger_and_a_level_they_cut_is_reported(tmp_path, caplog):
    settings = {"enabled": True, "level": "debug", "output_directory": str(tmp_path)}
    with caplog.at_level(logging.WARNING, logger="asynclog.probe"):
        logger = DetailedLogger({"detailed_logging": settings})
    assert (logger.keeps.sequences, logger.keeps.tokens, logger.keeps.raw_tensors) == (True, False, False)
    assert "log_tokens is false" in caplog.text and "log_raw_tensors is false" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="asynclog.probe"):
        DetailedLogger({"detailed_logging": {**settings, "level": "standard"}})
    assert caplog.text == ""


USERS_SECTION = """
detailed_logging:
  enabled: true                   # Master switch for detailed logging
  level: "detailed"               # Options: minimal, standard, detailed, debug
  log_sequences: true             # Include individual sequence data with text
  log_tokens: false               # Include token-level data (debug level only)
  log_raw_tensors: false          # Include raw tensor values (debug level only)
  output_directory: "entropy_experiments/logs"
  filename_template: "entropy_probe_{timestamp}_{checkpoint_name}.json"
  compress: true                  # Gzip the output files (recommended for large logs)
  max_files: 50                   # Auto-cleanup old log files (0 = no cleanup)
"""


def test_the_users_own_config_section_loads_as_it_reads(tmp_path):
    """The section of the user's example config, as written there, beside its other sections."""
    path = tmp_path / "probe.yaml"
    path.write_text("batch_config:\n  B_E: 64\n  G: 8\noutput:\n  log_level: INFO\n" + USERS_SECTION)
    logger = DetailedLogger(str(path))
    assert (logger.enabled, logger.level, logger.settings.max_files) == (True, "detailed", 50)
    assert (logger.keeps.sequences, logger.keeps.tokens, logger.keeps.raw_tensors) == (True, False, False)
    assert logger.keeps.importance_details and logger.engine_config.compression != "raw"
