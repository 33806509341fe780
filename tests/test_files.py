"""The file helpers both processes share, under threads: what a reader sees of an atomic write."""

from __future__ import annotations

import sys
import threading

from asynclog._files import atomic_write


def test_threads_replacing_one_file_at_once_leave_one_whole_version(tmp_path):
    target = tmp_path / "summary.json"
    versions = [bytes([65 + i]) * (64 << 10) for i in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(versions))
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the threads as often as possible

    def write(data: bytes) -> None:
        try:
            start.wait()
            for _ in range(50):
                atomic_write(str(target), data)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(v,)) for v in versions]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(switch)
    assert errors == []
    assert target.read_bytes() in versions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporary file left behind
