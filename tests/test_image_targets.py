"""`make image` and its Podman set-up: what it refuses in one line, and the limits it writes.

Building the image itself takes minutes and a container engine; the container test of
issue 27 will do that. These run make's own checks, which need neither.
"""

import os
import re
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(*args: str, home: Path) -> subprocess.CompletedProcess:
    # A make of its own, not a sub-make of `make test` (whose level and flags it inherits)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    return subprocess.run(
        ["make", "--no-print-directory", *args, f"VISIONPIPE_HOME={home}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_no_container_engine_is_one_line_and_exit_2(tmp_path):
    done = _make("image", "ENGINE=", home=tmp_path)
    assert done.returncode == 2
    lines = [
        line for line in done.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)
    ]
    assert lines == [
        "make image: no container engine here (no Docker engine answers, no podman); "
        "install Docker, or podman and runc (Debian: apt-get install podman runc)"
    ]


def test_a_ca_bundle_that_is_not_a_file_is_named(tmp_path):
    done = _make("image", "ENGINE=docker", f"CA_BUNDLE={tmp_path / 'nope.crt'}", home=tmp_path)
    assert done.returncode == 2
    assert f"CA_BUNDLE={tmp_path / 'nope.crt'} is not a readable, non-empty file" in done.stderr


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc")
def test_podman_limits_are_the_hosts_and_processes_at_most_pid_max(tmp_path):
    conf = tmp_path / "podman" / "containers.conf"
    done = _make(str(conf), home=tmp_path)
    assert done.returncode == 0, done.stderr
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nproc = pid_max if nproc == resource.RLIM_INFINITY else min(nproc, pid_max)
    text = conf.read_text()
    assert f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]' in text
    assert 'cgroup_manager = "cgroupfs"' in text
    assert ('runtime = "runc"' in text) == (shutil.which("runc") is not None)
