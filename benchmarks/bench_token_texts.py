"""What token texts cost the probe's thread: ``DetailedLogger.log_batch_data`` at real size, with a tokenizer
and without, side by side in one process.

    .venv/bin/python benchmarks/bench_token_texts.py [--rounds 5] [--runs 3] [--ids zipf|uniform]

The batches are the real probe's size: E 2048 x 1 and U 64 x 8 sequences, prompts left-padded to 64
tokens, 150 generated tokens each, per-token log-probs and entropies, and ``_debug_info`` texts (as the
probe passes them, so sequence rows decode nothing). Token ids come from a vocabulary of 151,000 entries,
``--ids zipf`` (default: id ranks drawn with probability about 1/rank, as words in text are; about 59,000
distinct ids in an E batch) or ``uniform`` (every id alike: about 131,000 distinct ids, the worst case).
The tokenizer (``BytesTokenizer``) maps each id to a random byte string of 1-12 bytes, decoded as UTF-8
with replacement, and has ``decode`` and ``batch_decode`` as a Hugging Face tokenizer does.

Two loggers at level debug, one with the tokenizer and one without, each log a sweep of ``--runs`` runs
(one ``log_batch_data`` for E and one for U per run, new batches each run) and then one run of the first
run's batches again; the first run decodes every id it meets, later runs the ids new to the logger, the
repeated run none. Rounds (a new pair of loggers each) are interleaved, rotating the order. Reported per
kind of run: the thread CPU time (``time.thread_time``) of its two ``log_batch_data`` calls, its ratio to
the no-tokenizer logger's in the same round and run, the log file's size and the ids decoded.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time

import torch

from asynclog import DetailedLogger

VOCAB = 151_000
PROMPT_WIDTH, GENERATED = 64, 150
BATCHES = {"E_batch": (2048, 1), "U_batch": (64, 8)}


class BytesTokenizer:
    """A byte-level tokenizer's shape without its download: id i is a random byte string of 1-12 bytes."""

    def __init__(self, vocab: int = VOCAB, seed: int = 0):
        rng = random.Random(seed)
        self.pieces = [rng.randbytes(rng.randint(1, 12)) for _ in range(vocab)]
        self.decoded = 0  # sequences batch_decode was given (token texts: one id each)

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")

    def batch_decode(self, sequences) -> list[str]:
        self.decoded += len(sequences)
        return [self.decode(ids) for ids in sequences]


def token_ids(shape: tuple, g: torch.Generator, kind: str, order: torch.Tensor) -> torch.Tensor:
    """Ids of ``shape``: uniform, or ranks drawn about 1/rank (log-uniform) and mapped through ``order``."""
    if kind == "uniform":
        return torch.randint(3, VOCAB, shape, generator=g)
    ranks = (torch.pow(float(VOCAB - 3), torch.rand(shape, generator=g)) - 1).long().clamp(0, VOCAB - 4)
    return order[ranks]


def make_batch(B: int, G: int, seed: int, kind: str, order: torch.Tensor) -> tuple[dict, dict]:
    """The probe's batch dict (prompts left-padded, every response ``GENERATED`` tokens) and its sequences."""
    g = torch.Generator().manual_seed(seed)
    T = PROMPT_WIDTH + GENERATED
    prompt_lens = torch.randint(16, PROMPT_WIDTH + 1, (B,), generator=g)
    mask = (torch.arange(T) >= PROMPT_WIDTH - prompt_lens[:, None, None]).expand(B, G, T)
    sequences = token_ids((B, G, T), g, kind, order) * mask
    rewards = torch.rand(B, G, generator=g)
    batch = {"sequences": sequences, "attention_masks": mask.long(), "prompt_lens": prompt_lens.tolist(),
             "advantages": rewards - rewards.mean(1, keepdim=True),
             "_debug_info": {"prompt_texts": [f"prompt {b}" for b in range(B)],
                             "response_texts": [[f"response {b}.{r}" for r in range(G)] for b in range(B)],
                             "dataset_indices": list(range(B))}}
    if G > 1:
        batch["rewards"] = rewards
    logprobs = -torch.rand(B, G, GENERATED, generator=g) * 5
    entropies = torch.rand(B, G, GENERATED, generator=g) * 3
    return batch, {"sequence_logprob": logprobs.sum(-1), "rb_entropy": entropies.sum(-1),
                   "token_logprobs": logprobs, "token_entropies": entropies}


def sweep(logger: DetailedLogger, batches: list[dict]) -> list[tuple[float, int, int]]:
    """Log one run per entry of ``batches``; per run: thread CPU s of its log_batch_data calls, file bytes,
    ids the tokenizer decoded."""
    out = []
    for k, run_batches in enumerate(batches):
        logger.log_run_start(f"ckpt/step_{k}")
        decoded = getattr(logger.tokenizer, "decoded", 0)
        start = time.thread_time()
        for name, (batch, sequences) in run_batches.items():
            logger.log_batch_data(name, batch, sequences)
        cpu = time.thread_time() - start
        path = logger.finalize_log({})
        out.append((cpu, os.path.getsize(path), getattr(logger.tokenizer, "decoded", 0) - decoded))
    return out


KINDS = ("first", "later", "repeat")  # a sweep's first run, its other new runs, and a run of batches seen before


def kind_of(k: int, runs: int) -> str:
    return "first" if k == 0 else "later" if k < runs else "repeat"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3, help="runs of new batches per logger (a sweep); at least 2")
    parser.add_argument("--ids", choices=("zipf", "uniform"), default="zipf")
    args = parser.parse_args(argv)
    tokenizer = BytesTokenizer()
    order = torch.randperm(VOCAB - 3, generator=torch.Generator().manual_seed(1)) + 3
    batches = [{name: make_batch(B, G, 100 * k + i, args.ids, order) for i, (name, (B, G)) in
                enumerate(BATCHES.items())} for k in range(args.runs)]
    distinct = torch.unique(batches[0]["E_batch"][0]["sequences"][..., PROMPT_WIDTH:]).numel()
    variants = {"no tokenizer": None, "tokenizer": tokenizer}
    # (variant, kind) -> per round, per run of that kind: (thread CPU s, file bytes, ids decoded)
    results: dict[tuple[str, str], list[list[tuple]]] = {(v, k): [] for v in variants for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="bench_token_texts_") as directory:
        def logger(name: str, tok) -> DetailedLogger:
            config = {"detailed_logging": {"enabled": True, "level": "debug", "max_files": 0,
                                           "output_directory": os.path.join(directory, name.replace(" ", "_"))}}
            return DetailedLogger(config, tokenizer=tok)

        sweep(logger("warm-up", tokenizer), batches[:1])  # torch's kernels, the writer's first start
        names = list(variants)
        for r in range(args.rounds):
            for name in names[r % 2:] + names[: r % 2]:
                runs = sweep(logger(name, variants[name]), batches + batches[:1])
                for kind in KINDS:
                    results[name, kind].append([run for k, run in enumerate(runs) if kind_of(k, args.runs) == kind])
    print(report(args, distinct, variants, results))
    return 0


def report(args, distinct: int, variants: dict, results: dict) -> str:
    lines = [f"log_batch_data at real size (E 2048 x 1, U 64 x 8, {GENERATED} generated tokens, vocab {VOCAB:,}, "
             f"ids {args.ids}: {distinct:,} distinct in an E batch), level debug, {args.rounds} rounds of "
             f"{args.runs + 1}-run sweeps, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()}, torch {torch.__version__}",
             "",
             f"{'logger':<14} {'run':<7} {'CPU s':>7} {'÷ none':>7} {'file MB':>8} {'ids decoded':>12}"]
    for name in variants:
        for kind in KINDS:
            rounds, base = results[name, kind], results["no tokenizer", kind]
            runs = [run for runs in rounds for run in runs]
            ratio = statistics.median(a[0] / b[0] for mine, theirs in zip(rounds, base) for a, b in zip(mine, theirs))
            lines.append(f"{name:<14} {kind:<7} {statistics.median(r[0] for r in runs):7.3f} {ratio:7.2f} "
                         f"{statistics.median(r[1] for r in runs) / 1e6:8.2f} "
                         f"{statistics.median(r[2] for r in runs):12,.0f}")
    lines += ["",
              "CPU: the probe's thread (time.thread_time) over one run's two log_batch_data calls, median over",
              "rounds (and runs); ÷ none: median of the ratio to the logger without a tokenizer in the same round",
              "and run. first: a logger's first run; later: its other runs of new batches; repeat: a last run of",
              "the first run's batches again, whose ids the logger has all decoded (the run still stores them).",
              "file MB: the run's .alog file; ids decoded: what the tokenizer's batch_decode was given in a run",
              "(each id it had not decoded before); medians."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
