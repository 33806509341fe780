"""What logging adds to the entropy probe's process memory, at the real probe's size, each logger in a fresh process.

The workload is the probe's logging calls on synthetic batches of the size the real probe runs (no model):

- E batch: 2048 prompts x G=1, prompts of 80-120 tokens (left-padded), responses of 100-150 generated tokens;
- U batch: 64 prompts x G=8, the same lengths, with rewards;
- token ids from a vocabulary of 151,646, texts from a tokenizer that spells each id as a short word;
- per checkpoint: run start, six phases of 0.2 s each, ``log_batch_data`` for E and U (with the ``sequences``
  dict: sequence and per-token log-probs and entropies), the importance-sampling details, ground truth, core
  results, ``finalize_log``; ``--checkpoints`` of them in a row, as a sweep does.

Variants, each in its own subprocess, so the peak is that variant's alone:

- dict      the probe's own synchronous logger: everything in one dict, gzip-JSON at ``finalize_log``
            (``NaiveLogger`` of bench_probe_overhead.py, gated by level as the plan says)
- asynclog  ``asynclog.DetailedLogger`` at the same level, with the probe's own config (no ``asynclog:``
            section, so the engine settings are the probe layer's defaults; ``--staging-mib`` adds one)
- events    ``asynclog.start`` and 20,000 ``run.event`` calls, no tensor and no stream (no torch imported):
            what a run that never uses the staging pool pays for it

Reported per variant (medians over ``--repeats``): the probe process's peak RSS (``VmHWM``; the writer is
another process and not counted), its growth over the RSS after the batches were built, the shared memory
mapped into the probe at the end (``RssShmem``: the staging pool's pages the probe touched), the thread CPU
time of the probe's logging calls (``time.thread_time``, finalize included), asynclog's writer CPU, and the
log's size. Then asynclog ÷ dict.

    .venv/bin/python benchmarks/bench_probe_memory.py [--levels standard debug] [--checkpoints 2] [--repeats 3]
        [--staging-mib N] [--no-events]
        [--asynclog PATH]     run the variants against the asynclog package under PATH (a checkout), for before/after
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = 151_646
E_PROMPTS, U_PROMPTS, U_G = 2048, 64, 8
PROMPT_TOKENS, NEW_TOKENS = (80, 120), (100, 150)
EVENTS = 20_000
PHASE_S = 0.2  # the probe's own work in each phase (minutes in the real probe): background work has its time
PHASES = ("phase0_sampling", "phase1_sum_X", "phase2_sum_Y", "phase3_delta_h1", "phase4_sum_Z", "phase5_importance")


# --- the probe's side, in the child process ----------------------------------------------------------------
class WordTokenizer:
    """Spells token id ``i`` as a word of 2-4 syllables, like a BPE piece: no table of the whole vocabulary."""

    SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]

    def decode(self, ids) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return " ".join(self._word(i) for i in ids if i != 0)

    def _word(self, i: int) -> str:
        s, word = self.SYLLABLES, ""
        while True:
            word += s[i % 70]
            i //= 70
            if not i:
                return word


def make_batch(torch, B: int, G: int, tokenizer, g, with_rewards: bool) -> tuple[dict, dict]:
    """A probe batch dict and its ``sequences`` dict: left-padded prompts, right-padded responses."""
    width, new = PROMPT_TOKENS[1], NEW_TOKENS[1]
    n = B * G
    prompt_lens = torch.randint(PROMPT_TOKENS[0], PROMPT_TOKENS[1] + 1, (B,), generator=g)
    gen_lens = torch.randint(NEW_TOKENS[0], NEW_TOKENS[1] + 1, (n,), generator=g)
    ids = torch.randint(3, VOCAB, (n, width + new), generator=g)
    positions = torch.arange(width + new)
    starts = (width - prompt_lens).repeat_interleave(G)
    mask = ((positions >= starts[:, None]) & (positions < width + gen_lens[:, None])).long()
    ids = ids * mask
    logps = -torch.rand(n, new, generator=g) * 5 * (positions[:new] < gen_lens[:, None])
    entropies = torch.rand(n, new, generator=g) * 3 * (positions[:new] < gen_lens[:, None])
    prompt_texts = [tokenizer.decode(ids[b * G, width - int(k): width]) for b, k in enumerate(prompt_lens)]
    response_texts = [[tokenizer.decode(ids[b * G + j, width:]) for j in range(G)] for b in range(B)]
    batch = {"sequences": ids.view(B, G, -1), "attention_masks": mask.view(B, G, -1),
             "prompt_lens": prompt_lens.tolist(), "max_lengths": gen_lens.view(B, G).max(1).values.tolist(),
             "num_prompts": B, "num_responses_per_prompt": G, "prompt_width": width,
             "_debug_info": {"prompt_texts": prompt_texts, "response_texts": response_texts,
                             "dataset_indices": list(range(B))}}
    rewards = torch.rand(B, G, generator=g)
    batch["advantages"] = rewards - rewards.mean(1, keepdim=True) if with_rewards else torch.zeros(B, G)
    if with_rewards:
        batch["rewards"] = rewards
    sequences = {"sequence_logprob": logps.sum(1).view(B, G), "rb_entropy": entropies.sum(1).view(B, G),
                 "token_logprobs": logps.view(B, G, new), "token_entropies": entropies.view(B, G, new)}
    return batch, sequences


def _status(key: str) -> float:
    """A ``/proc/self/status`` figure in MiB (0 where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _peak_mib() -> float:
    """This process's peak RSS: VmHWM (ru_maxrss can carry the parent's, which vfork shares until exec)."""
    return _status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def probe_child(variant: str, level: str, checkpoints: int, staging_mib: int, directory: str) -> dict:
    import torch

    from bench_probe_overhead import NaiveLogger

    from asynclog import DetailedLogger

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tokenizer = WordTokenizer()
    E_batch, E_seq = make_batch(torch, E_PROMPTS, 1, tokenizer, g, with_rewards=False)
    U_batch, U_seq = make_batch(torch, U_PROMPTS, U_G, tokenizer, g, with_rewards=True)
    S_orig, RB_orig = E_seq["sequence_logprob"].reshape(-1), E_seq["rb_entropy"].reshape(-1)
    S_upd, RB_upd = S_orig + 0.01 * torch.randn(S_orig.shape, generator=g), RB_orig * 1.01
    ground_truth = {"H_orig": 1.0, "H_upd": 1.01, "deltaH_true": 0.01, "diagnostics": {"ESS": 1900.0}}
    core = {"bars_dot": 0.5, "deltaH1": 0.01, "deltaH_true": 0.01, "learning_rate": 1e-6, "B_E": E_PROMPTS,
            "B_U": U_PROMPTS, "G": U_G, "mb_size_prompts": 8, "weighting_mode": "uniform"}
    # Every part the level includes is switched on (log_tokens and log_raw_tensors default to off, as in the plan),
    # as the dict logger writes them.
    config = {"detailed_logging": {"enabled": True, "level": level, "output_directory": directory, "max_files": 0,
                                   "log_tokens": True, "log_raw_tensors": True}}
    if staging_mib:
        config["asynclog"] = {"staging_bytes": staging_mib << 20}
    rss_setup = _status("VmRSS")
    if variant == "dict":
        logger = NaiveLogger(directory, tokenizer, level)
    else:
        logger = DetailedLogger(config, tokenizer=tokenizer)
    busy = 0.0

    def call(method, *args):
        nonlocal busy
        begin = time.thread_time()
        try:
            return method(*args)
        finally:
            busy += time.thread_time() - begin

    wall = time.perf_counter()
    paths = []
    for checkpoint in range(checkpoints):
        call(logger.log_run_start, f"checkpoints/step_{checkpoint}", config)
        for phase in PHASES:
            call(logger.log_phase_start, phase)
            time.sleep(PHASE_S)
            if phase == "phase0_sampling":
                call(logger.log_batch_data, "E_batch", E_batch, E_seq)
                call(logger.log_batch_data, "U_batch", U_batch, U_seq)
            call(logger.log_phase_end, phase)
        call(logger.log_importance_sampling_details, S_orig, S_upd, RB_orig, RB_upd)
        call(logger.log_ground_truth_results, ground_truth)
        call(logger.log_core_results, core)
        paths.append(call(logger.finalize_log, {**core, **ground_truth}))
    wall = time.perf_counter() - wall
    result = {"peak_mib": _peak_mib(), "rss_setup_mib": rss_setup, "shmem_mib": _status("RssShmem"),
              "thread_s": busy, "wall_s": wall, "log_bytes": sum(os.path.getsize(p) for p in paths) / len(paths)}
    if variant == "asynclog":
        import asynclog

        result["pool_mib"] = logger.engine_config.staging_bytes / 2**20
        asynclog.shutdown()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        result["writer_cpu_s"] = children.ru_utime + children.ru_stime
    return result


def events_child(directory: str) -> dict:
    import asynclog

    before = _status("VmRSS")
    run = asynclog.start(directory, name="events")
    for i in range(EVENTS):
        run.event("core", step=i, loss=0.5, lr=1e-6, note="x")
    run.flush()
    time.sleep(0.5)  # anything started in the background at start() has had its time
    result = {"peak_mib": _peak_mib(), "rss_before_start_mib": before, "growth_mib": _peak_mib() - before,
              "shmem_mib": _status("RssShmem"), "pool_mib": run.config.staging_bytes / 2**20}
    run.close()
    return result


# --- the driver --------------------------------------------------------------------------------------------
def spawn(args: list[str], package: str | None) -> dict:
    env = dict(os.environ)
    if package:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="bench_probe_memory_") as directory:
        out = subprocess.run([sys.executable, __file__, "--child", *args, directory], env=env, check=True,
                             capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def report(args, table: dict, events: list[dict]) -> str:
    lines = [f"probe-sized logging: E {E_PROMPTS} x 1, U {U_PROMPTS} x {U_G}, {PROMPT_TOKENS[0]}-{PROMPT_TOKENS[1]} "
             f"prompt + {NEW_TOKENS[0]}-{NEW_TOKENS[1]} new tokens, vocab {VOCAB}, {args.checkpoints} checkpoint(s) "
             f"per process; medians of {args.repeats} processes per variant"
             + (f"; asynclog from {args.asynclog}" if args.asynclog else "")
             + (f"; staging_bytes {args.staging_mib} MiB" if args.staging_mib else ""),
             "",
             f"{'level':<9} {'variant':<9} {'peak MiB':>9} {'+ setup':>8} {'shmem':>6} {'pool':>5} {'thread s':>9} "
             f"{'writer s':>9} {'log KiB':>9}"]
    for level, by_variant in table.items():
        for variant, results in by_variant.items():
            pool = f"{median(results, 'pool_mib'):.0f}" if "pool_mib" in results[0] else "-"
            writer = f"{median(results, 'writer_cpu_s'):.2f}" if "writer_cpu_s" in results[0] else "-"
            lines.append(f"{level:<9} {variant:<9} {median(results, 'peak_mib'):9.1f} "
                         f"{median(results, 'peak_mib') - median(results, 'rss_setup_mib'):8.1f} "
                         f"{median(results, 'shmem_mib'):6.1f} {pool:>5} {median(results, 'thread_s'):9.3f} "
                         f"{writer:>9} {median(results, 'log_bytes') / 1024:9.0f}")
        ours, theirs = by_variant["asynclog"], by_variant["dict"]
        lines.append(f"{level:<9} {'ratio':<9} {median(ours, 'peak_mib') / median(theirs, 'peak_mib'):9.2f}x "
                     f"(asynclog - dict: {median(ours, 'peak_mib') - median(theirs, 'peak_mib'):+.1f} MiB)  "
                     f"thread {median(ours, 'thread_s') / median(theirs, 'thread_s'):.2f}x  "
                     f"log size {median(ours, 'log_bytes') / median(theirs, 'log_bytes'):.2f}x")
    if events:
        lines += ["",
                  f"events only ({EVENTS} run.event, no torch): RSS before start() "
                  f"{median(events, 'rss_before_start_mib'):.1f} MiB, peak {median(events, 'peak_mib'):.1f} MiB, "
                  f"growth {median(events, 'growth_mib'):+.1f} MiB, pool pages mapped "
                  f"{median(events, 'shmem_mib'):.1f} of {median(events, 'pool_mib'):.0f} MiB"]
    lines += ["",
              "peak: VmHWM of the probe's process; + setup: over its RSS once the batches were built; shmem:",
              "RssShmem at the end (staging pool pages the probe touched); thread: CPU of the probe's thread inside",
              "the logger's calls; writer: asynclog's writer process CPU; log: one checkpoint's log file."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--child"]:
        variant = argv[1]
        if variant == "events":
            result = events_child(argv[2])
        else:
            result = probe_child(variant, argv[2], int(argv[3]), int(argv[4]), argv[5])
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", nargs="+", default=["standard", "debug"])
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--staging-mib", type=int, default=0,
                        help="give asynclog an asynclog: section with this pool (default: none, the probe's default)")
    parser.add_argument("--no-events", action="store_true", help="leave out the events-only run")
    parser.add_argument("--asynclog", help="a checkout whose asynclog package the variants import")
    args = parser.parse_args(argv)
    package = os.path.abspath(args.asynclog) if args.asynclog else None
    table: dict[str, dict[str, list[dict]]] = {}
    for level in args.levels:
        table[level] = {"dict": [], "asynclog": []}
        for r in range(args.repeats):
            order = ["dict", "asynclog"] if r % 2 == 0 else ["asynclog", "dict"]
            for variant in order:
                table[level][variant].append(spawn([variant, level, str(args.checkpoints), str(args.staging_mib)],
                                                   package))
    events = [] if args.no_events else [spawn(["events"], package) for _ in range(args.repeats)]
    print(report(args, table, events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
