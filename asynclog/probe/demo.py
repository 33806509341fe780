"""``asynclog demo``: run the toy entropy probe (``asynclog.probe.toyprobe``) and log it through DetailedLogger.

Options (``asynclog.cli`` defines them): ``--level`` (default debug), ``--size`` tiny|small|medium,
``--checkpoints N`` (a sweep over N perturbed copies of the model, one log each, one writer process for
all), ``--device`` (cpu, cuda, cuda:N: where the model and its tensors live), ``--out`` (the logs'
root), ``--config`` (a YAML file or a level name, read as
``asynclog.config.read_config`` reads it and used as it is, except that ``--out`` sets the output directory
and ``--no-logging`` the switch; ``--level`` is then ignored), ``--no-logging`` (the same probe with
logging disabled).
"""

from __future__ import annotations

import argparse
import time

__all__ = ["main", "probe_config", "check_device"]


def probe_config(args: argparse.Namespace) -> dict:
    """The probe's config dict: its batch settings plus the ``detailed_logging`` (and ``asynclog``) sections."""
    import msgspec

    from asynclog.config import read_config
    from asynclog.probe.toyprobe import SIZES

    size = SIZES[args.size]
    config = {"probe": "toy entropy probe", "size": args.size,
              "batch_config": {"B_E": size.B_E, "B_U": size.B_U, "G": size.G},
              "learning_rate": size.learning_rate, "temperature": size.temperature}
    if getattr(args, "config", None):
        settings = read_config(args.config)  # here, so that its errors name the file
        section = msgspec.structs.asdict(settings.probe)
        config["asynclog"] = msgspec.structs.asdict(settings.engine)
    else:
        section = {"level": args.level, "log_sequences": True, "log_tokens": True, "log_raw_tensors": True}
    section["output_directory"] = args.out
    section["enabled"] = not getattr(args, "no_logging", False)
    config["detailed_logging"] = section
    return config


def main(args: argparse.Namespace) -> int:
    """Run the probe over ``args.checkpoints`` checkpoints; print where each log is and a short summary."""
    from asynclog.probe.logger import DetailedLogger
    from asynclog.probe.progress import Status
    from asynclog.probe.toyprobe import SIZES, build, perturbed, run_probe

    config = probe_config(args)
    size, device = SIZES[args.size], args.device  # checked by the command line
    model, tokenizer, prompts = build(size, device=device)
    logger = DetailedLogger(config, tokenizer=tokenizer)
    what = "logging disabled" if not logger.enabled else f"level {logger.level}"
    print(f"asynclog demo: toy entropy probe, size {args.size} (B_E={size.B_E}, B_U={size.B_U}, G={size.G}), "
          f"{args.checkpoints} checkpoint(s), on {device}, {what}")
    count = max(1, args.checkpoints)
    with Status() as status:
        for index in range(count):
            checkpoint = model if index == 0 else perturbed(model, index)
            began = time.perf_counter()

            def on_phase(name: str, index: int = index) -> None:
                status.show(f"checkpoint step_{index:03d} ({index + 1}/{count}): {name}")

            results = run_probe(checkpoint, tokenizer, prompts, size, logger=logger, on_phase=on_phase,
                                checkpoint_path=f"toy/{args.size}/step_{index:03d}", config=config, seed=index)
            status.clear()
            _report(index, results, time.perf_counter() - began, logger)
    return 0


def check_device(device: str) -> str:
    """``device`` if torch can run the probe there; a ValueError that says why not otherwise."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device!r} is not a device torch knows ({exc})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but torch sees no CUDA device here")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def _report(index: int, results: dict, seconds: float, logger) -> None:
    d = results["diagnostics"]
    print(f"checkpoint step_{index:03d}: deltaH1={results['deltaH1']:+.4e}  deltaH_true={results['deltaH_true']:+.4e}  "
          f"bars_dot={results['bars_dot']:+.4e}  ESS={d['ESS']:.1f}/{results['B_E']}  ({seconds:.2f} s)")
    if results.get("log_path"):
        summary = logger.last_summary or {}
        cost = summary.get("logging_cost", {})
        print(f"  log:     {results['log_path']}")
        print(f"  summary: {summary.get('summary_path')}")
        if cost:
            print(f"  logging cost: {cost['probe_seconds'] * 1e3:.1f} ms in the probe's thread "
                  f"({cost['fraction_of_run']:.2%} of the run; opening the run {cost['start_seconds'] * 1e3:.1f} ms"
                  f"{', which started the writer process' if index == 0 else ''}), "
                  f"{cost.get('bytes_on_disk', 0) / 1024:.0f} KiB on disk")
