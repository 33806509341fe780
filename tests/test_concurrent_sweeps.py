"""Many sweep jobs (a scheduler's job array) writing DetailedLogger runs into one output directory at once:
the same checkpoint in the same second, no collision, no lost run, retention safe under concurrency."""

from __future__ import annotations

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
    procs = [subprocess.Popen([sys.executable, "-c", JOB, str(out), str(runs), str(keep)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(jobs)]
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
