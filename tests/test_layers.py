"""The package layers run one way (import-linter's contracts in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("benchmarks", "pipelines", "components", "trainer", "visionpipe")
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LINT, "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for package in PACKAGES:
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_every_layer_contract_is_kept():
    done = _lint(REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    "module,line,broken",
    [
        ("trainer/model.py", "from pipelines import cli", "trainer.model -> pipelines.cli"),
        ("trainer/train.py", "import mlflow", "trainer.train -> mlflow"),
        (
            "components/push/push.py",
            "from components.evaluate import gate",
            "components.push.push -> components.evaluate.gate",
        ),
        # The core is library code too: MLflow only in pipelines/adapters.
        ("visionpipe/home.py", "import mlflow", "visionpipe.home -> mlflow"),
    ],
)
def test_a_backward_import_breaks_the_build(tmp_path, module, line, broken):
    # An upward import, library code reaching for MLflow, a step importing another step.
    root = _copy(tmp_path)
    source = root / module
    source.write_text(source.read_text() + f"\n{line}  # noqa\n")
    done = _lint(root)
    assert done.returncode != 0
    assert broken in done.stdout
