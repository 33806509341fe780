"""A soak: a checkpoint sweep as users run it, for as long as asked, watching the processes for leaks.

    .venv/bin/python benchmarks/soak.py                          # 3 minutes, 2 ranks
    .venv/bin/python benchmarks/soak.py --minutes 60             # the real soak
    .venv/bin/python benchmarks/soak.py --seconds 20 --json R    # CI's form (tests/faults/test_soak.py); R: the report

The sweep: ``--ranks`` probe processes, each a rank of one job (``rank=``, ``world_size=``, a shared
``run_name``), run the toy entropy probe (``asynclog.probe.toyprobe``, as ``asynclog demo`` does) on checkpoint after
checkpoint, every checkpoint a run folder of one shard per rank. Each probe process holds one DetailedLogger per
level for the whole sweep, and every ``--debug-every``-th checkpoint goes through the debug one (sequence,
token and importance rows, raw tensors), the others through the standard one; the two levels' pools differ, so
each probe process has two writer processes. Retention is the default ``max_files`` (50), as users have it;
the one engine setting changed is ``fsync_interval_s`` (see FSYNC_INTERVAL_S). After each checkpoint this
process runs ``asynclog export LOGS --dataset DATASET``, and every ``--check-every``
checkpoints ``asynclog ls --json`` and ``asynclog sweep --json``, as a user would from a shell.

What must hold:

- **Nothing lost.** Each probe process counts what it hands asynclog (events by name, rows by stream, tensors
  by name); right after each checkpoint every shard must read back complete with exactly those counts. At the
  end, the runs retention kept read back the same, ``ls`` (with and without its index) lists exactly them,
  complete, at their levels, ``sweep`` gives rank 0's results, and the dataset holds exactly those runs with
  every event, sequence, importance and token row.
- **Flat resources.** After each checkpoint this process samples each probe process and its writers: open
  file descriptors, threads, resident memory of their own (``rss``: anonymous and file-backed pages), resident
  pages of the staging pool (``pool``), staging memory mapped (the pools are ``memfd``s), writer processes, CPU
  time; and the /dev/shm entries they hold. After a warm-up (both levels' writers started), a late window is
  compared with an early one: descriptors, threads, writers and staging must not grow at all; the soak's
  processes may hold nothing in /dev/shm after any checkpoint; ``rss`` may grow at most ``--rss-slack-mib``
  plus ``--rss-kib`` per checkpoint between the windows; ``pool`` never beyond the staging mapped (its pages
  become resident as the ring first passes over them, run by run: growth bounded by the pool, not a leak);
  the writers' CPU time per checkpoint at most 1.5 times (plus 20 ms) what it was, once the windows hold 8
  checkpoints each (shorter soaks report it). When the probe processes exit, their writers must exit too.
  (/dev/shm is shared by everyone on the machine: entries left there that no process of the soak held are
  listed in the report, ``dev_shm_new``, but cannot be told apart from other users'.)

``--leak fd|thread|memory`` makes the probe processes leak one descriptor, one thread or 1 MiB per checkpoint,
to see the checks catch it. Prints a table of early and late windows with slopes per checkpoint; ``--json``
writes the report with every sample. Exit 0 when everything held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's asynclog, also for the subprocesses (cwd=ROOT)

RUN_NAME = "soak"
LEVELS = ("standard", "debug")
STREAM_TABLES = ("sequences", "importance", "tokens")  # the dataset's tables of stream rows, by stream prefix
REPLY_TIMEOUT_S = 300.0  # one checkpoint of one probe process, export and listing included, is seconds
CPU_FACTOR, CPU_SLACK_S = 1.5, 0.02
CPU_WINDOW = 8  # CPU time comes in 10 ms ticks, a writer's checkpoint in a few: fewer samples cannot tell 1.5x
# A writer starts its fsync thread the first time a run stays unsynced this long: at the default 1 s that
# is whenever a run first takes a second (hours into a sweep, perhaps); at 50 ms a quick standard run could
# still slip under it for a few checkpoints; at 10 ms it is the first run.
FSYNC_INTERVAL_S = 0.01


def level_of(index: int, debug_every: int) -> str:
    """The level checkpoint ``index`` is logged at: debug every ``debug_every``-th, standard otherwise."""
    return "debug" if debug_every and index % debug_every == debug_every - 1 else "standard"


def checkpoint_path(index: int) -> str:
    return f"/checkpoints/soak/step_{index:05d}"


# --- the probe process ------------------------------------------------------------------------------------
class Tally:
    """What the probe hands asynclog during one checkpoint: events by name, rows (and tokens) by stream, tensors
    by name. Counted by wrapping the public calls of Run and Stream; the calls themselves run unchanged."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.events, self.tensors = collections.Counter(), collections.Counter()
        self.rows, self.tokens = collections.Counter(), collections.Counter()
        self.refused = 0  # tensors asynclog declined (a policy dropped them): none expected

    def snapshot(self) -> dict:
        return {"events": dict(self.events), "tensors": dict(self.tensors), "rows": dict(self.rows),
                "tokens": dict(self.tokens), "refused": self.refused}

    def install(self) -> None:
        from asynclog._run import Run
        from asynclog._stream import Stream

        tally = self
        event, tensor, append, extend = Run.event, Run.tensor, Stream.append, Stream.extend

        def counted_event(run, name, /, **fields):
            event(run, name, **fields)
            tally.events[name] += 1

        def counted_tensor(run, name, value):
            kept = tensor(run, name, value)
            if kept:
                tally.tensors[name] += 1
            else:
                tally.refused += 1
            return kept

        def counted_append(stream, **row):
            append(stream, **row)
            tally.rows[stream.name] += 1
            tally.tokens[stream.name] += len(row["tokens"]) if "tokens" in row else 0

        def counted_extend(stream, lengths=None, **columns):
            extend(stream, lengths=lengths, **columns)
            tally.rows[stream.name] += len(lengths) if lengths is not None else len(next(iter(columns.values())))
            tally.tokens[stream.name] += _token_count(columns.get("tokens"), lengths)

        Run.event, Run.tensor, Stream.append, Stream.extend = counted_event, counted_tensor, counted_append, \
            counted_extend


def _token_count(tokens, lengths) -> int:
    """Tokens in the rows of an ``extend`` call: what the dataset's tokens table gets a row for each of."""
    if tokens is None:
        return 0
    if lengths is not None:
        return sum(int(n) for n in lengths)
    return sum(len(row) for row in tokens)  # a padded [rows, width] tensor: every row as wide


def probe_config(args: argparse.Namespace, level: str) -> dict:
    """The probe's config for one level, as the demo builds it: the probe's settings and ``detailed_logging``."""
    return {"probe": "asynclog soak", "size": args.size, "asynclog": {"fsync_interval_s": FSYNC_INTERVAL_S},
            "detailed_logging": {"enabled": True, "level": level, "output_directory": args.logs,
                                 "max_files": args.max_files, "log_sequences": True, "log_tokens": True,
                                 "log_raw_tensors": True}}


class Leak:
    """A defect on purpose (``--leak``): one descriptor, one thread or 1 MiB kept per checkpoint."""

    def __init__(self, kind: str | None):
        self.kind, self.kept = kind, []

    def once(self) -> None:
        if self.kind == "fd":
            self.kept.append(os.open(os.devnull, os.O_RDONLY))
        elif self.kind == "thread":
            stop = threading.Event()
            threading.Thread(target=stop.wait, daemon=True).start()
            self.kept.append(stop)
        elif self.kind == "memory":
            self.kept.append(bytearray(b"x" * (1 << 20)))  # written, so its pages are resident


def probe_main(args: argparse.Namespace) -> int:
    """One rank: read ``run INDEX`` lines on stdin, run that checkpoint, answer one JSON line; stop at end of input."""
    import torch

    torch.set_num_threads(1)  # one intra-op thread: the machine is shared, and two ranks share it
    from asynclog import DetailedLogger
    from asynclog.probe.toyprobe import SIZES, build, perturbed, run_probe

    tally, leak = Tally(), Leak(args.leak)
    tally.install()
    size = SIZES[args.size]
    model, tokenizer, prompts = build(size)
    configs = {level: probe_config(args, level) for level in LEVELS}
    loggers = {level: DetailedLogger(configs[level], tokenizer=tokenizer, rank=args.rank, world_size=args.ranks,
                                     run_name=RUN_NAME) for level in LEVELS}
    for line in sys.stdin:
        index = int(line.split()[1])
        level = level_of(index, args.debug_every)
        tally.reset()
        checkpoint = model if index == 0 else perturbed(model, index)
        results = run_probe(checkpoint, tokenizer, prompts, size, logger=loggers[level],
                            checkpoint_path=checkpoint_path(index), config=configs[level],
                            seed=index * args.ranks + args.rank)
        leak.once()
        reply = {"index": index, "rank": args.rank, "level": level, "folder": results["log_path"],
                 "tally": tally.snapshot(), "results": {k: results[k] for k in ("deltaH1", "deltaH_true", "bars_dot")}}
        print(json.dumps(reply), flush=True)
    return 0


class ProbeProcess:
    """The driver's handle on one rank: its process, a thread reading its answers, its stderr in a file."""

    def __init__(self, args: argparse.Namespace, rank: int):
        self.rank = rank
        self.stderr_path = os.path.join(args.out, f"probe-{rank}.stderr")
        argv = [sys.executable, os.path.abspath(__file__), "--probe-rank", str(rank), "--ranks", str(args.ranks),
                "--logs", args.logs, "--size", args.size, "--debug-every", str(args.debug_every),
                "--max-files", str(args.max_files)] + (["--leak", args.leak] if args.leak else [])
        env = {k: v for k, v in os.environ.items() if k not in ("ASYNCLOG_RUN_NAME", "TORCHELASTIC_RUN_ID")}
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                            text=True, cwd=ROOT, env=env)
        self.answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.answers.put(json.loads(line))
        self.answers.put(None)

    def ask(self, index: int) -> None:
        self.process.stdin.write(f"run {index}\n")
        self.process.stdin.flush()

    def answer(self) -> dict:
        try:
            got = self.answers.get(timeout=REPLY_TIMEOUT_S)
        except queue.Empty:
            got = None
        if got is None:
            raise SystemExit(f"soak: probe rank {self.rank} gave no answer (exit {self.process.poll()}); "
                             f"its stderr:\n{self.stderr_tail()}")
        return got

    def stderr_tail(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-3000:]

    def stop(self) -> int:
        """End of input: the probe process leaves its loop and exits, its writers after it."""
        self.process.stdin.close()
        return self.process.wait(timeout=REPLY_TIMEOUT_S)


# --- sampling ---------------------------------------------------------------------------------------------
def dev_shm() -> set[str]:
    """The names in /dev/shm."""
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def shm_held(pids: list[int]) -> dict[str, int]:
    """The /dev/shm entries (path -> bytes) that any of ``pids`` has open or mapped. /dev/shm is shared by
    everyone on the machine, so only what the soak's own processes hold is theirs for certain."""
    paths = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with _quietly():
                    paths.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
                paths.update(line.split(maxsplit=5)[-1].strip() for line in maps if "/dev/shm/" in line)
        except OSError:
            continue
    held = {}
    for path in paths:
        if path.startswith("/dev/shm/"):
            with _quietly():
                held[path] = os.stat(path.removesuffix(" (deleted)")).st_size if "(deleted)" not in path else 0
    return held


class _quietly:
    """Skip a file that went away between being listed and being read."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(exc_type, OSError)


def staging_bytes(pid: int) -> int:
    """Bytes of shared memory objects (``memfd``s and /dev/shm files) that ``pid`` maps."""
    total = 0
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and (fields[5].startswith("/memfd:") or fields[5].startswith("/dev/shm/")):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    total += end - start
    except OSError:
        pass
    return total


def resident(pid: int) -> dict[str, int]:
    """Resident bytes of ``pid``: ``rss``, its own (anonymous and file-backed pages), and ``pool``, the pages of
    shared memory (the staging pool) it touched. The pool's pages count once the ring has passed over them, so a
    process's RSS grows run by run until the ring has wrapped; that is bounded by the pool, not a leak."""
    fields = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Rss"):
                key, value = line.split(":", 1)
                fields[key] = int(value.split()[0]) * 1024
    return {"rss": fields.get("RssAnon", 0) + fields.get("RssFile", 0), "pool": fields.get("RssShmem", 0)}


def process_figures(process) -> dict:
    """Descriptors, threads, resident memory, shared memory mapped and CPU seconds of one ``psutil.Process``."""
    with process.oneshot():
        cpu = process.cpu_times()
        return {"fds": process.num_fds(), "threads": process.num_threads(), **resident(process.pid),
                "staging": staging_bytes(process.pid), "cpu": cpu.user + cpu.system}


def writers_of(process) -> list:
    """The writer processes a probe process started (``python -c <the writer's main>``)."""
    return [child for child in process.children() if "asynclog" in " ".join(child.cmdline()[:3])]


def sample(probes: list[ProbeProcess]) -> dict:
    """One sample: for each rank its probe process and its writers (summed), the writers' CPU seconds by pid,
    and the /dev/shm entries all of them hold."""
    import psutil

    figures, writer_cpu, pids = {}, {}, []
    for probe in probes:
        process = psutil.Process(probe.process.pid)
        figures[f"probe {probe.rank}"] = process_figures(process)
        writers = writers_of(process)
        per = [process_figures(w) for w in writers]
        summed = {key: sum(f[key] for f in per) for key in ("fds", "threads", "rss", "pool", "staging", "cpu")}
        figures[f"writers {probe.rank}"] = {**summed, "processes": len(writers)}
        writer_cpu[probe.rank] = {w.pid: f["cpu"] for w, f in zip(writers, per)}
        pids += [process.pid] + [w.pid for w in writers]
    held = shm_held(pids)
    return {"figures": figures, "writer_cpu": writer_cpu, "shm_entries": len(held), "shm_bytes": sum(held.values())}


# --- reading back -----------------------------------------------------------------------------------------
def shard_counts(log) -> dict:
    """What one shard holds, counted as the probe's tally counts it."""
    events = collections.Counter(record.get("name") for record in log.events())
    rows = {name: sum(chunk.rows for chunk in log.stream(name)) for name in log.stream_names()}
    tensors = {name: log.tensor_count(name) for name in log.tensor_names()}
    return {"events": dict(events), "rows": rows, "tensors": tensors}


def verify_run(folder: str, tallies: dict[int, dict]) -> list[str]:
    """Problems with one run folder: not complete, a shard missing, or counts other than those logged."""
    import asynclog
    from asynclog._tables import shards_of

    problems, name = [], os.path.basename(folder)
    with asynclog.open(folder) as log:
        if not log.complete:
            problems.append(f"{name}: not complete ({getattr(log, 'problems', log.cut_reason)})")
        shards = {rank or 0: shard for rank, shard in shards_of(log)}  # one process: its log, as rank 0
        for rank, tally in tallies.items():
            if rank not in shards:
                problems.append(f"{name}: rank {rank}'s shard is missing")
                continue
            read = shard_counts(shards[rank])
            for key in ("events", "rows", "tensors"):
                if read[key] != tally[key]:
                    problems.append(f"{name} rank {rank}: {key} logged {_differ(tally[key], read[key])}")
            if tally["refused"]:
                problems.append(f"{name} rank {rank}: {tally['refused']} tensors refused")
    return problems


def _differ(logged: dict, read: dict) -> str:
    keys = sorted(set(logged) | set(read))
    return ", ".join(f"{k}: {logged.get(k, 0)} read {read.get(k, 0)}" for k in keys if logged.get(k) != read.get(k))


def asynclog_command(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asynclog", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=REPLY_TIMEOUT_S)


def check_listing(logs: str, kept: list[dict]) -> list[str]:
    """``ls --json`` (from the index and without it) and ``sweep --json`` against the runs retention kept."""
    problems = []
    want = {run["checkpoint"]: run for run in kept}
    for argv in (("ls", "--json", logs), ("ls", "--json", "--no-index", logs), ("sweep", "--json", logs)):
        done = asynclog_command(*argv)
        if done.returncode != 0:
            problems.append(f"{' '.join(argv[:-1])}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
            continue
        rows = {row["checkpoint"]: row for row in json.loads(done.stdout)}
        if sorted(rows) != sorted(want):
            missing, extra = sorted(set(want) - set(rows)), sorted(set(rows) - set(want))
            problems.append(f"{' '.join(argv[:-1])}: lists {len(rows)} runs, not {len(want)} "
                            f"(missing {missing[:5]}, extra {extra[:5]})")
        for checkpoint, row in rows.items():
            run = want.get(checkpoint)
            if run is None:
                continue
            got = {"status": row.get("status"), "level": row.get("level")}
            if argv[0] == "sweep":
                got.update({k: row.get(k) for k in run["results"]})
            expected = {"status": "complete", "level": run["level"], **(run["results"] if argv[0] == "sweep" else {})}
            if got != expected:
                problems.append(f"{' '.join(argv[:-1])}: {checkpoint}: {got}, expected {expected}")
    return problems


def check_dataset(dataset: str, kept: list[dict]) -> list[str]:
    """The dataset holds exactly the kept runs, with every event and every sequence, importance and token row."""
    from asynclog.tools.dataset import connect

    want = collections.Counter()
    for run in kept:
        for rank, tally in run["tallies"].items():
            key = (run["checkpoint"], str(rank))
            want["events", *key] += sum(tally["events"].values())
            for table in STREAM_TABLES:
                counts = tally["tokens"] if table == "tokens" else tally["rows"]
                want[table, *key] += sum(n for name, n in counts.items() if name.startswith(table + "/"))
    con = connect(dataset)
    try:
        got = collections.Counter()
        for table in ("events", *STREAM_TABLES):
            if any(key[0] == table and n for key, n in want.items()) or _has_view(con, table):
                for checkpoint, rank, n in con.execute(f"select checkpoint, rank, count(*) from {table} group by 1, 2")\
                        .fetchall():
                    got[table, checkpoint, rank] = n
        runs = sorted(c for (c,) in con.execute("select checkpoint from runs").fetchall())
    finally:
        con.close()
    problems = []
    if runs != sorted(run["checkpoint"] for run in kept):
        problems.append(f"dataset: runs table holds {len(runs)} runs, not the {len(kept)} kept")
    for key in sorted(set(want) | set(got)):
        if want[key] != got[key]:
            problems.append(f"dataset: {key[0]} of {key[1]} rank {key[2]}: {got[key]} rows, logged {want[key]}")
    return problems


def _has_view(con, table: str) -> bool:
    return bool(con.execute("select count(*) from information_schema.tables where table_name = ?", [table])
                .fetchone()[0])


# --- the verdict ------------------------------------------------------------------------------------------
def windows(count: int, warmup: int, cycle: int) -> tuple[range, range] | None:
    """An early and a late window of the samples after ``warmup``, each a whole number of level cycles and a
    quarter of what is left (at least one cycle), apart; None when the soak was too short for two."""
    left = count - warmup
    width = max(cycle, left // 4 // cycle * cycle)
    if left < 2 * width:
        return None
    return range(warmup, warmup + width), range(count - width, count)


def cpu_per_checkpoint(samples: list[dict], rank: int) -> list[float]:
    """The writers' CPU seconds of each checkpoint (a writer started during it counts from its start)."""
    out, before = [], {}
    for s in samples:
        now = s["writer_cpu"][rank]
        out.append(sum(cpu - before.get(pid, 0.0) for pid, cpu in now.items()))
        before = now
    return out


def slope(values: list[float]) -> float:
    """Least-squares growth per checkpoint."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    return num / sum((x - mean_x) ** 2 for x in range(n))


STRICT = ("fds", "threads", "processes", "staging", "shm_entries", "shm_bytes")  # may not grow at all


def judge(samples: list[dict], args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Rows of the table (figure, process, early, late, slope, limit, held) and the problems found."""
    cycle = args.debug_every or 1
    split = windows(len(samples), args.warmup, cycle)
    if split is None:
        return [], [f"too short to judge: {len(samples)} checkpoints, {args.warmup} of warm-up; need two windows "
                    f"of {cycle} after it"]
    rows = []
    for key in samples[0]["figures"]:
        series = {name: [s["figures"][key][name] for s in samples] for name in samples[0]["figures"][key]}
        if key.startswith("writers"):
            series["cpu"] = cpu_per_checkpoint(samples, int(key.split()[1]))
        else:  # one process throughout: the growth of its total
            series["cpu"] = [b - a for a, b in zip([0.0] + series["cpu"], series["cpu"])]
        rows += [_row(name, key, values, split, args, series["staging"]) for name, values in series.items()]
    for name in ("shm_entries", "shm_bytes"):
        rows.append(_row(name, "/dev/shm", [s[name] for s in samples], split, args))
    for name in ("probes", "export"):
        rows.append(_row(f"{name} s", "soak", [s[name] for s in samples], split, args))
    problems = [f"{r['figure']} of {r['process']}: {r['early']:.6g} early, {r['late']:.6g} late, limit {r['limit']}"
                for r in rows if not r["held"]]
    dirty = [s["checkpoint"] for s in samples if s["shm_entries"]]
    if dirty:
        problems.append(f"the soak's processes held /dev/shm entries after checkpoints {dirty[:10]}")
    return rows, problems


def _row(name: str, key: str, values: list, split: tuple[range, range], args: argparse.Namespace,
         staging: list | None = None) -> dict:
    """One figure of one process: its early and late windows (the largest value of each for counts, the mean
    otherwise), its slope after the warm-up, and whether the late window kept within the limit."""
    early, late = split
    first, last = [values[i] for i in early], [values[i] for i in late]
    row = {"figure": name, "process": key, "slope": slope(values[early.start:]), "limit": "-", "held": True}
    if name in STRICT:
        row.update(early=max(first), late=max(last), limit="no growth")
        row["held"] = row["late"] <= row["early"]
        return row
    row.update(early=sum(first) / len(first), late=sum(last) / len(last))
    if name == "rss":
        allowed = args.rss_slack_mib * 2**20 + args.rss_kib * 1024 * (late.start - early.start)
        row.update(limit=f"{args.rss_slack_mib:g} MiB + {args.rss_kib:g} KiB/ckpt",
                   held=row["late"] - row["early"] <= allowed)
    elif name == "pool":
        row.update(early=max(first), late=max(last), limit="within staging")
        row["held"] = max(values) <= max(staging)
    elif name == "cpu" and key.startswith("writers") and len(first) < CPU_WINDOW:
        row.update(limit=f"(judged from {CPU_WINDOW} a window)")
    elif name == "cpu" and key.startswith("writers"):
        row.update(limit=f"x{CPU_FACTOR} + {CPU_SLACK_S * 1e3:.0f} ms",
                   held=row["late"] <= row["early"] * CPU_FACTOR + CPU_SLACK_S)
    return row


def print_table(rows: list[dict]) -> None:
    mib = (2**20, "MiB")
    scale = {"rss": mib, "pool": mib, "staging": mib, "shm_bytes": mib, "cpu": (1e-3, "ms")}
    print(f"{'figure':<13} {'process':<10} {'early':>10} {'late':>10} {'slope/ckpt':>11}  {'limit':<26} held")
    for r in rows:
        div, unit = scale.get(r["figure"], (1, ""))
        name = f"{r['figure']} {unit}".strip()
        print(f"{name:<13} {r['process']:<10} {r['early'] / div:>10.2f} {r['late'] / div:>10.2f} "
              f"{r['slope'] / div:>11.4f}  {r['limit']:<26} {'yes' if r['held'] else 'NO'}")


# --- the sweep --------------------------------------------------------------------------------------------
def run_checkpoint(index: int, probes: list[ProbeProcess], args: argparse.Namespace) -> tuple[dict, list[str]]:
    """One checkpoint on every rank, then the export; the run as the soak remembers it, and its problems."""
    begin = time.perf_counter()
    for probe in probes:
        probe.ask(index)
    answers = [probe.answer() for probe in probes]
    folders = {a["folder"] for a in answers}
    run = {"index": index, "level": answers[0]["level"], "folder": answers[0]["folder"],
           "checkpoint": f"step_{index:05d}", "tallies": {a["rank"]: a["tally"] for a in answers},
           "results": answers[0]["results"]}
    problems = [] if len(folders) == 1 else [f"checkpoint {index}: the ranks wrote to {sorted(folders)}"]
    problems += verify_run(run["folder"], run["tallies"])
    probe_s = time.perf_counter() - begin
    if _every(index, args.export_every):
        problems += [f"checkpoint {index}: {p}" for p in export(args)]
    run["seconds"] = {"probes": probe_s, "export": time.perf_counter() - begin - probe_s}
    return run, problems


def export(args: argparse.Namespace) -> list[str]:
    """``asynclog export LOGS --dataset DATASET``, as a user runs it; its failure as a problem."""
    done = asynclog_command("export", args.logs, "--dataset", args.dataset)
    return [f"export --dataset exit {done.returncode}: {done.stderr.strip()[-500:]}"] if done.returncode else []


def soak(args: argparse.Namespace) -> dict:
    """The sweep, the samples and every check; the report."""
    shm_before = dev_shm()
    probes = [ProbeProcess(args, rank) for rank in range(args.ranks)]
    runs, samples, problems = [], [], []
    began = time.monotonic()
    index = 0
    try:
        while index < args.min_checkpoints or time.monotonic() - began < args.seconds:
            run, found = run_checkpoint(index, probes, args)
            runs.append(run)
            problems += found
            kept = runs[-args.max_files:] if args.max_files else runs
            if _every(index, args.check_every):
                problems += [f"checkpoint {index}: {p}" for p in check_listing(args.logs, kept)]
            samples.append({"checkpoint": index, "level": run["level"], **run["seconds"], **sample(probes)})
            print(f"soak: checkpoint {index} ({run['level']}): probes {run['seconds']['probes']:.2f} s, export "
                  f"{run['seconds']['export']:.2f} s, {len(problems)} problem(s) so far", file=sys.stderr, flush=True)
            index += 1
    finally:
        pids = _all_pids(probes)
        exits = [probe.stop() for probe in probes]
    problems += _after_exit(exits, pids)
    left = sorted(dev_shm() - shm_before)  # nobody's for certain: other users share /dev/shm
    kept = runs[-args.max_files:] if args.max_files else runs
    for run in kept[:-1]:  # the last was read right after it closed; the others, again, after the sweep
        problems += verify_run(run["folder"], run["tallies"])
    problems += check_listing(args.logs, kept)
    if args.export_every:
        if not _every(index - 1, args.export_every):  # the dataset is to hold the last checkpoint too
            problems += export(args)
        problems += check_dataset(args.dataset, kept)
    rows, verdict = judge(samples, args)
    return {"checkpoints": index, "logged": logged(runs), "seconds": time.monotonic() - began, "ranks": args.ranks,
            "rows": rows,
            "problems": problems + verdict, "samples": samples, "kept": len(kept), "dev_shm_new": left,
            "levels": dict(collections.Counter(run["level"] for run in runs))}


def logged(runs: list[dict]) -> dict:
    """What the probes handed asynclog over the sweep, all read back as it was: shards, events, rows, tokens,
    tensors."""
    tallies = [tally for run in runs for tally in run["tallies"].values()]
    return {"shards": len(tallies), **{key: sum(sum(t[key].values()) for t in tallies)
                                       for key in ("events", "rows", "tokens", "tensors")}}


def _every(index: int, every: int) -> bool:
    """Whether checkpoint ``index`` is one of every ``every``-th (0: none)."""
    return bool(every) and index % every == every - 1


def _all_pids(probes: list[ProbeProcess]) -> list[int]:
    import psutil

    pids = []
    for probe in probes:
        try:
            process = psutil.Process(probe.process.pid)
            pids += [process.pid] + [child.pid for child in process.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return pids


def _after_exit(exits: list[int], pids: list[int]) -> list[str]:
    """Problems once the probe processes were told to stop: an exit status, a writer still alive."""
    import psutil

    problems = [f"probe rank {rank} exited {code}" for rank, code in enumerate(exits) if code != 0]
    _, alive = psutil.wait_procs([p for p in map(_process, pids) if p is not None], timeout=30)
    problems += [f"process {p.pid} ({' '.join(p.cmdline()[:2])}) still running after its probe exited"
                 for p in alive]
    return problems


def _process(pid: int):
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=3.0, help="how long the sweep runs (default 3)")
    p.add_argument("--seconds", type=float, help="the same in seconds (overrides --minutes)")
    p.add_argument("--min-checkpoints", type=int, default=0, help="run at least this many checkpoints")
    p.add_argument("--ranks", type=int, default=2, help="probe processes, one rank each (default 2)")
    p.add_argument("--size", default="tiny", choices=("tiny", "small", "medium"), help="the toy probe's size")
    p.add_argument("--debug-every", type=int, default=2, help="every N-th checkpoint at debug (default 2; 0: none)")
    p.add_argument("--max-files", type=int, default=50, help="DetailedLogger's retention (default 50; 0 keeps all)")
    p.add_argument("--export-every", type=int, default=1, help="export --dataset every N checkpoints (default 1)")
    p.add_argument("--check-every", type=int, default=1, help="ls and sweep every N checkpoints (default 1)")
    p.add_argument("--warmup", type=int, help="checkpoints not judged at the start (default: two level cycles)")
    p.add_argument("--rss-kib", type=float, default=64.0, help="RSS growth allowed per checkpoint (default 64 KiB)")
    p.add_argument("--rss-slack-mib", type=float, default=2.0,
                   help="RSS growth allowed besides, for the allocator settling (default 2 MiB)")
    p.add_argument("--leak", choices=("fd", "thread", "memory"), help="make the probe processes leak, to see it caught")
    p.add_argument("--out", help="folder for the logs and the dataset (default: a temporary one, removed)")
    p.add_argument("--json", help="write the report, every sample included, to this file")
    p.add_argument("--probe-rank", type=int, help=argparse.SUPPRESS)  # the probe process's own mode
    p.add_argument("--logs", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.seconds = args.minutes * 60 if args.seconds is None else args.seconds
    cycle = max(1, args.debug_every)
    args.warmup = 2 * cycle if args.warmup is None else args.warmup
    args.min_checkpoints = max(args.min_checkpoints, args.warmup + 2 * cycle)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.probe_rank is not None:
        args.rank = args.probe_rank
        return probe_main(args)
    temporary = args.out is None
    args.out = args.out or tempfile.mkdtemp(prefix="asynclog-soak-")
    os.makedirs(args.out, exist_ok=True)
    args.logs, args.dataset = os.path.join(args.out, "logs"), os.path.join(args.out, "dataset")
    try:
        report = soak(args)
    finally:
        if temporary:
            shutil.rmtree(args.out, ignore_errors=True)
    print(f"soak: {report['checkpoints']} checkpoints ({report['levels']}) on {args.ranks} ranks in "
          f"{report['seconds']:.0f} s; {report['kept']} runs kept by retention; read back: {report['logged']}")
    print_table(report["rows"])
    for problem in report["problems"]:
        print(f"PROBLEM: {problem}")
    print("soak: everything held" if not report["problems"] else f"soak: {len(report['problems'])} problem(s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, default=str)
    return 0 if not report["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
