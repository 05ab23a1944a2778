import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipelines.cli import main
from tests.conftest import fails_in_one_line

SUBCOMMANDS = [
    "sample-data",
    "ingest",
    "transform",
    "tune",
    "train",
    "evaluate",
    "push",
    "rollback",
    "predict",
    "explain",
    "export-edge",
    "run",
    "compare",
    "compile",
]


def _verbs(parser=None, prefix=""):
    """Every verb's parser by its full name (``schedule create``), found in the parser."""
    import argparse

    from pipelines.cli import build_parser

    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _verbs(sub, f"{prefix}{name} ")
    if prefix and not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        yield prefix.strip(), parser


def test_the_documented_verbs_are_the_ones_the_parser_has():
    names = {name for name, _ in _verbs()}
    assert set(SUBCOMMANDS) <= names
    assert {"submit", "schedule create", "schedule run-local", "predict-batch"} <= names


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help_with_config_options(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--set" in out


def test_every_verb_and_every_option_says_what_it_is_for():
    # A verb without a description, or an option without help, fails here by name.
    missing = []
    for name, parser in _verbs():
        if not parser.description:
            missing.append(f"{name}: no description")
        for action in parser._actions:
            if action.dest != "help" and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def _runs() -> list:
    """The runs in this test's MLflow store (the configured one, in the test's home)."""
    from pipelines.adapters import mlflow_tracking as tracking
    from visionpipe.config import load_config

    client = tracking.client(tracking.tracking_uri(load_config()))
    experiment = client.get_experiment_by_name("visionpipe")
    return client.search_runs([experiment.experiment_id])


def _run_fails(args, capsys, isolated_home):
    return fails_in_one_line(args, capsys, isolated_home)


def test_run_with_missing_data_path_fails_naming_it(tmp_path, capsys, isolated_home):
    err = _run_fails(["run", "--data", str(tmp_path / "nowhere")], capsys, isolated_home)
    assert "nowhere" in err and "no such file" in err


def test_run_with_empty_folder_fails_naming_it(tmp_path, capsys, isolated_home):
    (tmp_path / "empty").mkdir()
    err = _run_fails(["run", "--data", str(tmp_path / "empty")], capsys, isolated_home)
    assert "empty" in err and "no labelled images" in err


def test_run_with_a_single_class_fails(tmp_path, tiny_dataset, capsys, isolated_home):
    (tmp_path / "one" / "circle").mkdir(parents=True)
    for p in (tiny_dataset / "circle").iterdir():
        (tmp_path / "one" / "circle" / p.name).write_bytes(p.read_bytes())
    err = _run_fails(["run", "--data", str(tmp_path / "one")], capsys, isolated_home)
    assert "at least 2 classes" in err


def test_unknown_set_key_fails_before_any_work(tiny_dataset, capsys, isolated_home):
    err = _run_fails(
        ["run", "--data", str(tiny_dataset), "--set", "trainer.epoks=3"], capsys, isolated_home
    )
    assert "trainer.epoks" in err


def test_wrongly_typed_set_value_fails_naming_the_key(tiny_dataset, capsys, isolated_home):
    err = _run_fails(
        ["run", "--data", str(tiny_dataset), "--set", "tuner.max_trials=lots"],
        capsys,
        isolated_home,
    )
    assert "tuner.max_trials" in err


def test_compile_writes_the_batch_prediction_pipeline(tmp_path, capsys):
    out = tmp_path / "batch.yaml"
    args = ["compile", "--pipeline", "batch-predict", "--out", str(out)]
    assert main([*args, "--set", "push.model_name=shapes"]) == 0
    spec = json_format.ParseDict(yaml.safe_load(out.read_text()), pipeline_spec_pb2.PipelineSpec())
    assert spec.pipeline_info.name.endswith("-batch-predict")
    assert list(spec.deployment_spec.fields["executors"].struct_value.fields) == [
        "exec-predict-batch"
    ]
    params = spec.root.input_definitions.parameters
    assert {"data", "out", "model", "overwrite", "config_json"} <= set(params)
    assert params["model"].default_value.string_value == "models:/shapes@champion"


def test_edge_export_is_a_step_after_push_only_when_configured(tmp_path, capsys):
    def executors(*overrides):
        out = tmp_path / "pipeline.yaml"
        assert main(["compile", "--out", str(out), *[f"--set={o}" for o in overrides]]) == 0
        spec = yaml.safe_load(out.read_text())
        return spec, set(spec["deploymentSpec"]["executors"])

    _, plain = executors()
    assert "exec-edge-export" not in plain
    spec, with_edge = executors("pipeline.edge_export=[tflite_int8, onnx]")
    assert with_edge == plain | {"exec-edge-export"}
    blessed = spec["components"]["comp-condition-3"]["dag"]["tasks"]
    assert blessed["edge-export"]["dependentTasks"] == ["push"]


def test_compile_writes_a_strict_kfp_pipeline_spec(tmp_path, capsys):
    out = tmp_path / "pipeline.yaml"
    args = ["compile", "--out", str(out), "--set", "pipeline.image=registry.example/vp:1.2"]
    local_root = tmp_path / "my-serving-root"
    args += ["--set", f"push.serving_root={local_root}", "--set", "trainer.epochs=7"]
    assert main(args) == 0
    text = out.read_text()
    spec = json_format.ParseDict(yaml.safe_load(text), pipeline_spec_pb2.PipelineSpec())
    executors = spec.deployment_spec.fields["executors"].struct_value.fields
    assert len(executors) == 10  # configure, the six steps, validate, the data check, finish
    params = spec.root.input_definitions.parameters
    expected = {"data", "image_size", "epochs", "max_trials", "min_accuracy", "model_name"}
    expected |= {"serving_root", "only_if_data_changed", "config_json", "mlflow_tracking_uri"}
    expected |= {"retrain_when"}
    assert expected <= set(params)
    assert params["only_if_data_changed"].default_value.bool_value is False
    assert params["epochs"].default_value.number_value == 7
    assert params["model_name"].default_value.string_value == "visionpipe-classifier"
    images = {
        e.struct_value.fields["container"].struct_value.fields["image"].string_value
        for e in executors.values()
    }
    assert images == {"registry.example/vp:1.2"}
    assert str(tmp_path) not in text and "/work/" not in text  # no local paths compiled in
    assert "pip install" not in text


def test_run_parameters_are_applied_and_validated_by_the_configure_step():
    from pipelines.parameters import PARAMETERS, configure
    from visionpipe.config import Config, ConfigError, load_config

    def run(*values, config_json):
        return configure({**dict(zip(PARAMETERS, values, strict=True)), "config_json": config_json})

    base = load_config().to_json()
    values = (48, 3, 0, -1.0, "cats", "data_changed, drift", "gs://b/serving")
    merged = Config.from_json(run(*values, config_json=base))
    assert merged.transform.image_size == 48 and merged.trainer.epochs == 3
    assert merged.pipeline.retrain_when == ["data_changed", "drift"]
    assert merged.tuner.max_trials == 0 and merged.evaluate.min_accuracy is None
    assert merged.push.model_name == "cats" and merged.push.serving_root == "gs://b/serving"
    with pytest.raises(ConfigError, match="transform.image_size"):
        run(3, 3, 0, 0.5, "cats", "always", "", config_json=base)
    with pytest.raises(ConfigError, match="retrain_when"):
        run(32, 3, 0, 0.5, "cats", "sometimes", "", config_json=base)


def test_ingest_subcommand_takes_several_inputs_and_logs_to_mlflow(tmp_path, tiny_dataset, capsys):
    import json

    (tmp_path / "a.csv").write_text(f"{tiny_dataset}/circle/circle_00000.jpg,circle\n")
    (tmp_path / "b.csv").write_text(f"{tiny_dataset}/square/square_00000.jpg,square\n")
    out = tmp_path / "raw"
    code = main(
        [
            "ingest",
            "--data",
            str(tmp_path / "a.csv"),
            str(tmp_path / "b.csv"),
            "--out",
            str(out),
            "--set",
            "ingest.min_images_per_class=1",
        ]
    )
    assert code == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["written"] == 2 and (out / "stats.json").exists()
    [run] = _runs()
    assert run.data.tags["data_fingerprint"] == stats["fingerprint"]
    assert run.inputs.dataset_inputs[0].dataset.digest == stats["fingerprint"][:32]


def test_predict_names_bad_files_and_still_predicts_the_others(
    trained, tiny_dataset, tmp_path, capsys
):
    import json
    import shutil

    # A serving root's model folder: the highest integer version is used.
    root = tmp_path / "serving" / "visionpipe"
    shutil.copytree(trained.model_uri, root / "3")
    (root / "12").mkdir()  # not a SavedModel: ignored
    good = [str(tiny_dataset / c / f"{c}_00003.jpg") for c in ("circle", "triangle")]
    missing = str(tmp_path / "missing.jpg")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    args = ["predict", "--model", str(root), good[0], missing, str(junk), good[1]]

    assert main(args) == 1
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == good
    assert all(0.0 <= float(line.split("\t")[2]) <= 1.0 for line in lines)
    assert f"{missing}: no such file" in err and f"{junk}: not an image" in err

    assert main([*args, "--json"]) == 1
    records = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in records] == [good[0], missing, str(junk), good[1]]
    assert "error" in records[1] and "error" in records[2]
    assert records[0]["class_name"] in ("circle", "square", "triangle")
    assert abs(sum(records[3]["probabilities"]) - 1.0) < 1e-5


def test_predict_with_no_model_there_fails_in_one_line(tmp_path, tiny_dataset, capsys):
    code = main(["predict", "--model", str(tmp_path), str(tiny_dataset / "labels.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "not a SavedModel" in err


def test_transform_subcommand_logs_vocabulary_frequencies_and_statistics(
    ingested, tmp_path, capsys
):
    import json

    import mlflow

    out = tmp_path / "transformed"
    args = ["transform", "--examples", ingested.output_uri, "--out", str(out)]
    assert main([*args, "--set", "transform.image_size=16"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == ingested.examples
    [run] = _runs()
    metrics = run.data.metrics
    assert {f"train_count_{c}" for c in ("circle", "square", "triangle")} <= set(metrics)
    assert 0 < metrics["pixel_mean_r"] < 255 and metrics["pixel_std_g"] > 0
    stats = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/transform_statistics.json")
    assert stats["label_counts"]["circle"] == ingested.stats["per_split"]["train"]["circle"]


def test_compile_puts_tune_and_train_on_the_gpu_image_with_accelerators(tmp_path):
    out = tmp_path / "pipeline.yaml"
    sets = ["pipeline.image=reg.example/vp:2", "pipeline.gpus=2"]
    assert main(["compile", "--out", str(out), *(f"--set={s}" for s in sets)]) == 0
    spec = yaml.safe_load(out.read_text())
    containers = {k: v["container"] for k, v in spec["deploymentSpec"]["executors"].items()}
    on_gpu = {k for k, c in containers.items() if c["image"] == "reg.example/vp:2-gpu"}
    assert on_gpu == {"exec-tune", "exec-train"}
    for name in on_gpu:
        accelerator = containers[name]["resources"]["accelerator"]
        assert accelerator["resourceType"] == "nvidia.com/gpu"
        assert str(accelerator["resourceCount"]) == "2"
    assert all("resources" not in c for k, c in containers.items() if k not in on_gpu)


_HANGING_CLEANUP = """
import signal, sys, time
import pipelines.cli as cli
cli.INTERRUPT_GRACE_SECONDS = float(sys.argv[1])
signal.signal(signal.SIGINT, cli._interrupt_with_deadline)
try:
    print("ready", flush=True)  # inside the try: an interrupt right after it is caught
    time.sleep(120)
except KeyboardInterrupt:
    time.sleep(120)  # cleanup that never finishes
"""


@pytest.mark.parametrize("grace, interrupts", [(1.0, 1), (120.0, 2)])
def test_ctrl_c_ends_the_process_even_when_cleanup_hangs(grace, interrupts):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", _HANGING_CLEANUP, str(grace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    for _ in range(interrupts):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
    assert proc.wait(timeout=30) == 130
    if interrupts == 1:
        assert "cleanup after the interrupt took over 1 s; exiting now" in proc.stderr.read()
