"""The scale benchmark's own checks: a factor that cannot fit is refused before any data."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.scale_bench import ScaleError, check_fits, estimate

ROOT = Path(__file__).resolve().parent.parent


def test_the_estimate_grows_with_the_factor_and_the_image_size():
    one, ten = estimate(1, 32), estimate(10, 32)
    assert one.images == 1500 and ten.images == 15_000
    assert ten.disk_bytes > one.disk_bytes and ten.memory_bytes > one.memory_bytes
    assert estimate(10, 64).memory_bytes > ten.memory_bytes


def test_a_factor_that_does_not_fit_is_refused_with_its_estimate(tmp_path):
    check_fits([1, 10], 32, tmp_path)  # this machine runs these
    with pytest.raises(ScaleError, match=r"scale factor 20000 \(30000000 images\) needs about"):
        check_fits([1, 20_000], 32, tmp_path)
    with pytest.raises(ScaleError, match="must be 1 or more"):
        check_fits([0], 32, tmp_path)


def test_the_benchmark_refuses_it_in_one_line_before_generating_anything(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/bench.py", "--data", str(tmp_path), "--only", "scale"]
        + ["--scale", "1,100000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: scale factor 100000 (150000000 images)")
    assert [p.name for p in tmp_path.iterdir()] == []  # its work folder is gone, nothing made
