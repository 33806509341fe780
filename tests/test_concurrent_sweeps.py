"""Many sweep jobs (a scheduler's job array) writing DetailedLogger runs into one output directory at once:
the same checkpoint in the same second, no collision, no lost run, retention safe under concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import asynclog

JOB = textwrap.dedent("""
    import sys
    from asynclog import DetailedLogger
    out, runs, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    logger = DetailedLogger({"detailed_logging": {"enabled": True, "level": "minimal", "output_directory": out,
                                                  "max_files": keep}})
    for i in range(runs):
        path = logger.log_run_start("/checkpoints/step_60")  # the same name, the same second, in every job
        logger.log_phase_start("phase0_sampling")
        logger.log_phase_end("phase0_sampling", {"job_run": i})
        logger.finalize_log({"deltaH1": float(i)})
        print(path, flush=True)
""")


def _sweep(out, jobs: int, runs: int, keep: int) -> list[str]:
    return _jobs(JOB, [[str(out), str(runs), str(keep)]] * jobs)


def _jobs(script: str, argvs: list[list[str]]) -> list[str]:
    """Run ``script`` once per argument list, all at once; the paths they print."""
    procs = [subprocess.Popen([sys.executable, "-c", script, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for argv in argvs]
    paths = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        paths += stdout.split()
    return paths


def _logs(out) -> list:
    return sorted(out.glob("*/*.alog"))


def test_jobs_sharing_a_directory_lose_no_run_and_collide_on_no_name(tmp_path, full):
    jobs, runs = (16, 20) if full else (4, 6)
    paths = _sweep(tmp_path, jobs, runs, keep=0)
    assert len(paths) == jobs * runs and len(set(paths)) == jobs * runs  # every run its own file
    assert sorted(map(str, _logs(tmp_path))) == sorted(paths)
    for path in paths:
        with asynclog.open(path) as log:
            assert log.complete, path
    assert (tmp_path / "README.md").exists()


def test_retention_under_concurrency_keeps_the_newest_finished_runs(tmp_path, full):
    jobs, runs, keep = (16, 20, 25) if full else (4, 6, 8)
    _sweep(tmp_path, jobs, runs, keep)
    _sweep(tmp_path, 1, 1, keep)  # one more run when all are finished: its retention sees them all
    kept = _logs(tmp_path)
    assert len(kept) == keep
    for path in kept:
        with asynclog.open(path) as log:
            assert log.complete, path
        assert path.with_name(path.name.replace(".alog", "_summary.json")).exists()
    assert not list(tmp_path.glob("*/*.tmp"))


NAMED_JOB = textwrap.dedent("""
    import sys
    from asynclog import DetailedLogger
    out, jobs, runs, keep = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
    logger = DetailedLogger({"detailed_logging": {"enabled": True, "level": "minimal", "output_directory": out,
                                                  "max_files": keep, "run_name": "sweep"}})
    for job in jobs:
        for i in range(runs):
            print(logger.log_run_start(f"/checkpoints/job{job}_run{i}"), flush=True)  # a name no other run has
            logger.finalize_log({"deltaH1": float(i)})
""")


def _named_sweep(out, jobs: list[str], runs: int, keep: int) -> list[str]:
    return _jobs(NAMED_JOB, [[str(out), job, str(runs), str(keep)] for job in jobs])


def test_retention_leaves_no_summary_without_its_log_and_no_needless_renaming(tmp_path, full):
    # Another job's retention between a run's footer and its summary removed the log and left the summary,
    # and the next run of that name became "-1" although no run of the name was left.
    jobs, runs = (8, 12) if full else (4, 12)
    _named_sweep(tmp_path, [str(job) for job in range(jobs)], runs, keep=1)
    orphans = sorted(p.name for p in tmp_path.glob("*/*_summary.json")
                     if not p.with_name(p.name.replace("_summary.json", ".alog")).exists())
    kept = sorted(p.name for p in tmp_path.glob("*/*.alog"))
    again = _named_sweep(tmp_path, [",".join(str(job) for job in range(jobs))], runs, keep=0)  # every name once more
    renamed = sorted(os.path.basename(path).replace("-1.alog", ".alog") for path in again if path.endswith("-1.alog"))
    assert (orphans, renamed) == ([], kept)  # "-1" only where a run of that name is still there
