"""The step specs are the one declaration: everything else is derived from them and agrees."""

import inspect
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pipelines import catalog
from pipelines.pipeline import compile_batch_pipeline, compile_pipeline, pipeline_steps
from tests.ir_substance import substance
from visionpipe.config import load_config
from visionpipe.record import RunRecord, outcome_entries
from visionpipe.step import Step

REPO = Path(__file__).resolve().parent.parent


def test_every_pipeline_task_is_a_declared_step_and_every_declared_step_is_wired():
    config = load_config(overrides=["pipeline.edge_export=[onnx]"])
    tasks = pipeline_steps(config)
    declared = catalog.all_steps()
    assert tasks[0] == "configure" and set(tasks[1:]) <= set(declared)
    in_pipeline = {name for name, s in declared.items() if s.in_pipeline}
    assert in_pipeline - set(tasks) == {"predict-batch"}  # the batch pipeline's one step
    assert "edge-export" not in pipeline_steps(load_config())  # only when configured


def test_the_independence_contract_covers_exactly_the_step_packages():
    # The contract names components.*: that is the step packages only while components/
    # holds nothing else (a helper module there would be "independent" of the steps
    # that import it, and break the build for a wrong reason).
    with open(REPO / "pyproject.toml", "rb") as f:
        contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    independence = next(c for c in contracts if c["type"] == "independence")
    assert independence["modules"] == ["components.*"]
    children = {
        f"components.{p.stem}"
        for p in (REPO / "components").iterdir()
        if p.name != "__init__.py" and p.name != "__pycache__" and not p.name.startswith(".")
    }
    assert children == set(catalog.step_packages())


@pytest.mark.parametrize(
    "name,compile_fn,overrides",
    [
        ("training", compile_pipeline, []),
        ("training_edge", compile_pipeline, ["pipeline.edge_export=[onnx]"]),
        ("batch", compile_batch_pipeline, []),
    ],
)
def test_the_compiled_pipeline_is_the_one_written_by_hand_before_the_specs(
    tmp_path, name, compile_fn, overrides
):
    # Recorded from the hand-written components and pipeline this design replaced:
    # the same components, inputs, outputs, executors and DAG (not the same bytes).
    # Changed since on purpose only: the retrain_when run parameter (configure's input),
    # the exit handler (every step in its "run" group, then finish), validate, and the
    # epochs default (0: auto, so that a set value means what it says).
    expected = json.loads((REPO / "tests" / "data" / "ir_substance.json").read_text())[name]
    out = str(tmp_path / "p.yaml")
    compile_fn(load_config(overrides=overrides), out)
    assert substance(out) == expected


def test_finding_the_steps_imports_no_ml_framework():
    # The CLI parses its arguments from the specs: --help must not wait for TensorFlow.
    code = (
        "import sys; from pipelines import catalog; catalog.all_steps(); "
        "print(sorted(m for m in ('tensorflow', 'keras', 'apache_beam', 'mlflow') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_a_spec_with_an_unknown_port_type_is_refused():
    with pytest.raises(ValueError, match="port 'x' has unknown type 'Tensor'"):
        Step(name="bad", run=lambda ctx: None, inputs={"x": "Tensor"})
    with pytest.raises(ValueError, match="parameter 'n' is a"):
        Step(name="bad", run=lambda ctx: None, params={"n": list})


def test_the_generated_component_reads_like_the_spec():
    import inspect

    from pipelines.kfp_components import component_functions
    from pipelines.parameters import PARAMETER_TYPES

    functions = component_functions(tuple(PARAMETER_TYPES.items()))
    push = inspect.signature(functions["push"])
    assert list(push.parameters) == [
        "model",
        "blessing",
        "config_json",
        "mlflow_tracking_uri",
        "mlflow_run_id",
        "pushed",
    ]
    assert push.return_annotation is int
    source = inspect.getsource(functions["push"])  # what kfp embeds in the IR
    assert "return execute('push', arguments)" in source
    assert set(inspect.signature(functions["configure"]).parameters) == {
        *PARAMETER_TYPES,
        "config_json",
    }


def test_every_component_imports_its_entry_where_kfp_runs_it():
    # A component's body imports its entry inside kfp.dsl.executor_main, in a fresh
    # interpreter (a subprocess, a container): there, importing kfp.compiler fails on a
    # circular import in kfp 2.17. In this process kfp is already imported in full, so
    # only a fresh one shows it.
    from pipelines.kfp_components import component_functions
    from pipelines.parameters import PARAMETER_TYPES

    functions = component_functions(tuple(PARAMETER_TYPES.items()))
    entries = set()
    for function in functions.values():
        source = inspect.getsource(function)
        entries.update(re.findall(r"^    (from \S+ import \S+(?: as \S+)?)$", source, re.M))
    assert len(entries) == 3, entries  # configure, the steps' execute, finish
    for entry in sorted(entries):
        done = subprocess.run(
            [sys.executable, "-c", f"import kfp.dsl.executor_main\n{entry}"],
            capture_output=True,
            text=True,
            env={**os.environ, "_KFP_RUNTIME": "true"},
        )
        assert done.returncode == 0, f"{entry}: {done.stderr.strip().splitlines()[-1:]}"


def test_the_kfp_local_hook_this_project_swaps_is_still_there():
    # Fails on the kfp release that renames or reshapes kfp.local's internal hook.
    from kfp.local import subprocess_task_handler

    from pipelines.adapters import kfp_local

    kfp_local.check_internals()
    original = subprocess_task_handler.run_local_subprocess
    with kfp_local.run_commands_with(lambda full_command, env_vars=None: 0):
        assert subprocess_task_handler.run_local_subprocess is not original
    assert subprocess_task_handler.run_local_subprocess is original


def test_kfp_internals_that_moved_are_one_clear_error(monkeypatch):
    from kfp.local import subprocess_task_handler

    from pipelines.adapters import kfp_local

    monkeypatch.delattr(subprocess_task_handler, "run_local_subprocess")
    with pytest.raises(kfp_local.KfpInternalsChanged, match="no run_local_subprocess"):
        kfp_local.check_internals()


def test_the_run_record_round_trips_and_refuses_a_misspelt_outcome():
    metrics, tags = outcome_entries(
        examples={"train": 8, "valid": 1, "test": 1},
        rejected=2,
        blessed=True,
        blessing_reason="ok",
        pushed_version=3,
        model_settings={"trainer.epochs": 2},
        test_metrics={"test_accuracy": 0.9},
    )
    record = RunRecord.from_store("r", "FINISHED", tags, metrics)
    assert record.examples == {"train": 8, "valid": 1, "test": 1} and record.rejected == 2
    assert record.blessed is True and record.pushed_version == 3
    assert record.model_settings == {"trainer.epochs": 2} and record.test_accuracy == 0.9
    with pytest.raises(TypeError, match="'pushed_verison' is not a storable field"):
        outcome_entries(pushed_verison=3)


def test_the_run_summary_is_assembled_from_each_steps_summary_lines():
    from pipelines.console import format_summary
    from pipelines.local import RunSummary

    record = RunRecord(
        run_id="abc",
        status="FINISHED",
        examples={"train": 8, "valid": 1, "test": 1},
        test_metrics={"test_accuracy": 0.95, "test_macro_f1": 0.9},
        blessed=True,
        blessing_reason="blessed: 1 checks passed",
        pushed_version=2,
        pushed_path="/s/m/2",
    )
    text = format_summary(
        RunSummary(record, 12.0, "sqlite://"), pipeline_steps(load_config()), "ui"
    )
    assert text.splitlines()[1:] == [
        "visionpipe run finished in 12 s",
        "  images      10 ingested (train 8 / valid 1 / test 1), 0 rejected, 0 duplicates",
        "  test        accuracy 0.9500, macro-F1 0.9000",
        "  blessed     yes (blessed: 1 checks passed)",
        "  pushed      version 2 -> /s/m/2",
        "  MLflow run  abc",
        "  MLflow UI   ui",
    ]
    summary = RunSummary(record, 12.0, "sqlite://")
    assert RunSummary.from_dict(summary.to_dict()) == summary


def test_the_data_check_decides_on_an_in_memory_history_without_a_store(tiny_config):
    from components.data_check.decide import project_version
    from visionpipe.step import StepContext
    from visionpipe.tracker import InMemoryPipelineRun

    earlier = RunRecord(
        run_id="old",
        status="FINISHED",
        start_time_ms=1,
        data_fingerprint="aa" * 32,
        model_settings=tiny_config.model_settings(),
        visionpipe_version=project_version(),
    )
    pipeline = InMemoryPipelineRun("now", [earlier])
    ctx = StepContext(tiny_config, pipeline=pipeline)
    check = catalog.step("data-check").run(ctx, fingerprint="aa" * 32, only_if_data_changed=True)
    assert check.retrain is False and check.previous_run_id == "old"
    assert pipeline.read().skipped is True and pipeline.read().data_check == check.reason
