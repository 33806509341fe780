"""What logging costs the entropy probe: the toy probe at debug level with asynclog, disabled, and naive.

Three loggers run the very same probe (``asynclog.probe.toyprobe.run_probe``) in one process:

- disabled   DetailedLogger with ``enabled: false`` (the baseline: what the probe costs without logging)
- asynclog   DetailedLogger at level debug: sequences, tokens (with texts) and raw tensors
- naive      the way such probes usually log: everything accumulated in a dict in the probe's thread,
             tensors through ``tolist()``, one ``json.dump`` through gzip at the end (``NaiveLogger`` below)

Each variant runs once to warm up (torch's kernels, asynclog's writer process), then ``--repeats`` times,
interleaved, rotating the order each round. Overhead is the median, over rounds, of a variant's wall time
divided by disabled's in the same round (pairing cancels the machine's slow drifts); the median wall times
and the CPU time of the process and its children (asynclog's writer) are printed beside it. Peak memory is
measured in a separate pass (tracemalloc slows Python down): the peak of Python allocations during one run.

    .venv/bin/python benchmarks/bench_probe_overhead.py [--size small] [--repeats 7] [--device cuda] [--no-naive]
        [--profile]

On a GPU (``--device cuda``) the probe's tensors live there and every variant's time is measured to a
``torch.cuda.synchronize()``, so work still queued on the GPU counts.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc

import psutil
import torch

from asynclog import DetailedLogger
from asynclog.probe import toyprobe
from asynclog.config import LEVELS


class NaiveLogger:
    """The same quantities as DetailedLogger, logged synchronously into one dict, gzip-JSON at the end.

    ``level`` gates them as the plan does: batch statistics and ground truth from standard, sequence rows
    from detailed, token rows and raw tensors at debug.
    """

    def __init__(self, directory: str, tokenizer, level: str = "debug"):
        self.directory, self.tokenizer = directory, tokenizer
        self.rank = LEVELS.index(level)
        self.data: dict | None = None
        self.count = 0

    def log_run_start(self, checkpoint_path, config):
        self.data = {"run_metadata": {"checkpoint_path": checkpoint_path, "config": config, "timestamp": time.time()},
                     "phases": [], "batch_statistics": {}, "sequences": {}, "token_data": {}, "raw_tensors": {}}
        self._phase_started: dict[str, float] = {}
        return None

    def log_phase_start(self, name):
        self._phase_started[name] = time.perf_counter()

    def log_phase_end(self, name, results=None):
        self.data["phases"].append({"name": name, "seconds": time.perf_counter() - self._phase_started.pop(name),
                                    "results": results})

    def log_batch_data(self, batch_type, batch, sequences=None):
        if self.rank < 1:
            return
        if self.rank < 2:  # batch statistics alone: reduced with torch, no per-sequence lists
            self.data["batch_statistics"][batch_type] = self._statistics(batch)
            return
        seqs, masks = batch["sequences"].tolist(), batch["attention_masks"].tolist()
        prompt_lens, advantages = list(batch["prompt_lens"]), batch["advantages"].tolist()
        rewards = batch["rewards"].tolist() if "rewards" in batch else None
        info, seq = batch.get("_debug_info", {}), {k: v.tolist() for k, v in (sequences or {}).items()}
        records, tokens, lengths = [], [], []
        for b, per_prompt in enumerate(seqs):
            for g, ids in enumerate(per_prompt):
                real = [t for t, m in zip(ids, masks[b][g]) if m]
                prompt, response = real[: prompt_lens[b]], real[prompt_lens[b] :]
                lengths.append(len(real))
                records.append({"prompt_id": b, "response_id": g, "prompt_text": info["prompt_texts"][b],
                                "response_text": info["response_texts"][b][g], "prompt_length": len(prompt),
                                "generation_length": len(response), "sequence_logprob": seq["sequence_logprob"][b][g],
                                "rb_entropy": seq["rb_entropy"][b][g], "advantage": advantages[b][g],
                                "reward": rewards[b][g] if rewards else None})
                if self.rank >= 3:
                    tokens.append({"sequence_id": len(tokens), "tokens": response,
                                   "token_texts": [self.tokenizer.decode([t]) for t in response],
                                   "token_logprobs": seq["token_logprobs"][b][g][: len(response)],
                                   "rb_entropies": seq["token_entropies"][b][g][: len(response)],
                                   "attention_mask": masks[b][g]})
        lengths.sort()
        self.data["batch_statistics"][batch_type] = {
            "num_prompts": len(seqs), "num_sequences": len(records), "avg_prompt_length": sum(prompt_lens) / len(seqs),
            "max_sequence_length": lengths[-1], "avg_advantages": statistics.fmean(sum(advantages, [])),
            "sequence_length_distribution": [lengths[int(q * (len(lengths) - 1))] for q in (0.1, 0.25, 0.5, 0.75, 0.9)]}
        self.data["sequences"][batch_type] = records
        if self.rank >= 3:
            self.data["token_data"][batch_type] = tokens
            for key in ("rewards", "advantages"):
                if key in batch:
                    self.data["raw_tensors"][f"{batch_type}_{key}"] = batch[key].tolist()

    @staticmethod
    def _statistics(batch) -> dict:
        """The batch statistics from torch reductions, as a logger that keeps nothing per sequence computes them."""
        lengths = batch["attention_masks"].sum(-1).reshape(-1).sort().values
        quantiles = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
        prompt_lens = torch.as_tensor(batch["prompt_lens"], dtype=torch.float64)
        return {"num_prompts": len(prompt_lens), "num_sequences": lengths.numel(),
                "avg_prompt_length": prompt_lens.mean().item(), "max_sequence_length": lengths[-1].item(),
                "avg_advantages": batch["advantages"].double().mean().item(),
                "sequence_length_distribution": lengths[(quantiles * (lengths.numel() - 1)).long()].tolist()}

    def log_importance_sampling_details(self, S_orig, S_upd, RB_orig, RB_upd):
        if self.rank < 2:
            return
        for name, tensor in (("S_orig", S_orig), ("S_upd", S_upd), ("RB_orig", RB_orig), ("RB_upd", RB_upd)):
            self.data["raw_tensors"][f"E_batch_{name}"] = tensor.tolist()
        self.data["raw_tensors"]["importance_weights"] = torch.exp(S_upd - S_orig).tolist()

    def log_ground_truth_results(self, results):
        if self.rank >= 1:
            self.data["ground_truth"] = results

    def log_core_results(self, results):
        self.data["core_results"] = results

    def finalize_log(self, final_results):
        self.data["final_results"] = final_results
        self.count += 1
        self.path = os.path.join(self.directory, f"naive_{self.count}.json.gz")
        with gzip.open(self.path, "wt") as f:
            json.dump(self.data, f, default=str)
        self.data = None
        return self.path


def make_loggers(directory: str, tokenizer) -> dict:
    debug = {"enabled": True, "level": "debug", "output_directory": os.path.join(directory, "asynclog"),
             "max_files": 0}
    return {
        "disabled": DetailedLogger({"detailed_logging": {**debug, "enabled": False}}),
        "asynclog": DetailedLogger({"detailed_logging": debug, "asynclog": {"staging_bytes": 32 << 20}},
                                   tokenizer=tokenizer),
        "naive": NaiveLogger(directory, tokenizer),
    }


def run_once(setup, logger, index: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its children, i.e. the probe plus asynclog's writer)."""
    model, tokenizer, prompts, size = setup
    cpu, start = _cpu_seconds(), time.perf_counter()
    toyprobe.run_probe(model, tokenizer, prompts, size, logger=logger, checkpoint_path=f"toy/step_{index}", seed=0)
    if next(model.parameters()).is_cuda:  # a CPU run on a GPU machine must not make a CUDA context here
        torch.cuda.synchronize()
    return time.perf_counter() - start, _cpu_seconds() - cpu


def _cpu_seconds() -> float:
    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system
    for child in me.children(recursive=True):
        try:
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
        except psutil.Error:
            pass
    return total


def peak_memory(setup, logger) -> float:
    """Peak Python allocations during one run, in MiB."""
    tracemalloc.start()
    run_once(setup, logger, 999)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def logger_profile(setup, logger) -> str:
    """cProfile of one run: the cumulative time of each DetailedLogger method the probe called."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    run_once(setup, logger, 998)
    profiler.disable()
    methods = [(cumulative, function, calls)
               for (file, _, function), (_, calls, _, cumulative, _) in pstats.Stats(profiler).stats.items()
               if file.endswith(os.path.join("asynclog", "probe.py")) and function.startswith(("log_", "finalize"))]
    lines = [f"  {function:34s} {calls:3d} calls {cumulative * 1e3:8.1f} ms"
             for cumulative, function, calls in sorted(methods, reverse=True)]
    return "\n".join(["where the logger's time goes in one run (cProfile, cumulative ms; profiling inflates it):",
                      *lines])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small", choices=sorted(toyprobe.SIZES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu", help="where the probe runs: cpu (default), cuda, cuda:N")
    parser.add_argument("--no-naive", action="store_true", help="leave out the naive logger (it is slow)")
    parser.add_argument("--profile", action="store_true", help="also print where asynclog's logging time goes")
    args = parser.parse_args(argv)
    size = toyprobe.SIZES[args.size]
    model, tokenizer, prompts = toyprobe.build(size, device=args.device)
    setup = (model, tokenizer, prompts, size)
    with tempfile.TemporaryDirectory(prefix="bench_probe_") as directory:
        loggers = make_loggers(directory, tokenizer)
        if args.no_naive:
            del loggers["naive"]
        names = list(loggers)
        for name in names:  # warm-up, not measured: torch kernels, asynclog's writer process
            run_once(setup, loggers[name], 0)
        times: dict[str, list[float]] = {name: [] for name in names}
        cpus: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                wall, cpu = run_once(setup, loggers[name], r + 1)
                times[name].append(wall)
                cpus[name].append(cpu)
        cost = loggers["asynclog"].last_summary["logging_cost"]
        memory = {name: peak_memory(setup, loggers[name]) for name in names}
        sizes = {"asynclog": cost["bytes_on_disk"]}
        if "naive" in loggers:
            sizes["naive"] = os.path.getsize(loggers["naive"].path)
        pool = loggers["asynclog"].engine_config.staging_bytes
        profile = logger_profile(setup, loggers["asynclog"]) if args.profile else None
    print(report(args, size, times, cpus, memory, sizes, cost, pool))
    if profile:
        print("\n" + profile)
    return 0


def report(args, size, times: dict, cpus: dict, memory: dict, sizes: dict, cost: dict, pool: int) -> str:
    base, base_cpu = times["disabled"], statistics.median(cpus["disabled"])
    lines = [f"toy entropy probe, size {args.size} (B_E={size.B_E}, B_U={size.B_U}, G={size.G}, "
             f"up to {size.max_new_tokens} new tokens) on {args.device}, level debug, {args.repeats} interleaved rounds, "
             f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs",
             "",
             f"{'variant':<10} {'median s':>9} {'min s':>8} {'max s':>8} {'overhead':>9} {'CPU s':>7} "
             f"{'CPU +':>8} {'peak py MiB':>12} {'log KiB':>8}"]
    for name, values in times.items():
        cpu = statistics.median(cpus[name])
        ratio = statistics.median(v / b for v, b in zip(values, base))
        overhead = "" if name == "disabled" else f"{(ratio - 1) * 100:+.1f} %"
        cpu_overhead = "" if name == "disabled" else f"{(cpu / base_cpu - 1) * 100:+.1f} %"
        size_kib = f"{sizes[name] / 1024:.0f}" if name in sizes else "-"
        lines.append(f"{name:<10} {statistics.median(values):9.3f} {min(values):8.3f} {max(values):8.3f} "
                     f"{overhead:>9} {cpu:7.2f} {cpu_overhead:>8} {memory[name]:12.1f} {size_kib:>8}")
    lines += ["",
              "overhead: median over rounds of (variant's wall time / disabled's, same round) - 1.",
              "CPU: this process and its children (asynclog's writer), median per run.",
              "peak py: tracemalloc's peak of Python allocations during one run (torch's own memory not",
              f"included). asynclog also holds its staging pool, {pool >> 20} MiB of shared memory, once per process.",
              "",
              f"asynclog's own account of its last run: {cost['probe_seconds'] * 1e3:.1f} ms in the probe's "
              f"thread ({cost['fraction_of_run']:.2%} of the run), {cost['calls']} calls, "
              f"p50 {cost['producer_p50_us']:.0f} us, p99 {cost['producer_p99_us']:.0f} us, "
              f"compression {cost['compression_ratio']}x"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
