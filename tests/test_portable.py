"""Ingest, transform and predict-batch on Beam's portable path and on worker processes.

The path Flink and Spark take (job submission, artifact staging, the Fn API to workers
in other processes), on loopback with Beam's own services (``pipelines/beam_services.py``).
"""

import json

import pytest

from components.ingest.ingest import run_ingest
from components.predict.batch import run_batch_predict
from components.transform.transform import run_transform
from pipelines.beam_services import portable_services
from visionpipe import faults
from visionpipe import features as F
from visionpipe.config import load_config
from visionpipe.transform_graph import load_raw_split

pytestmark = pytest.mark.processes
SMALL = ["ingest.min_images_per_class=1", "transform.image_size=16"]


def _splits(examples: str) -> dict[str, list[tuple[str, str]]]:
    return {s: sorted(zip(*_named(examples, s), strict=True)) for s in F.SPLITS}


def _named(examples: str, split: str):
    raw = load_raw_split(examples, split)
    return raw.names, raw.labels


def _predictions(out) -> dict[str, tuple[str, float]]:
    rows = [json.loads(line) for f in sorted(out.glob("predictions-*.jsonl")) for line in f.open()]
    return {r["path"]: (r["class"], round(r["probability"], 5)) for r in rows}


def _all_steps(data, model, work, config):
    """Ingest, transform and predict-batch on ``config``'s runner."""
    ingested = run_ingest(str(data), str(work / "raw"), config)
    transformed = run_transform(ingested.output_uri, str(work / "ex"), str(work / "graph"), config)
    batch = run_batch_predict(model, str(data), str(work / "pred"), config)
    return ingested, transformed, batch


MULTI_PROCESSING = ["beam.direct_num_workers=2", "beam.direct_running_mode=multi_processing"]


def test_every_beam_step_on_the_portable_path_and_two_worker_processes_equals_in_process(
    tiny_dataset, trained, tmp_path
):
    local = load_config(overrides=SMALL)
    here, here_t, here_b = _all_steps(tiny_dataset, trained.model_uri, tmp_path / "here", local)
    runs = {}
    with portable_services() as overrides:
        portable = load_config(overrides=[*SMALL, *overrides])
        runs["portable"] = _all_steps(tiny_dataset, trained.model_uri, tmp_path / "p", portable)
    processes = load_config(overrides=[*SMALL, *MULTI_PROCESSING])
    runs["processes"] = _all_steps(tiny_dataset, trained.model_uri, tmp_path / "m", processes)
    for name, (there, there_t, there_b) in runs.items():
        for key in ("inputs", "written", "rejected", "duplicates", "per_split", "fingerprint"):
            assert here.stats[key] == there.stats[key], (name, key)
        assert _splits(here.output_uri) == _splits(there.output_uri), name  # same splits
        assert here_t.examples == there_t.examples and here_t.labels == there_t.labels
        assert here_t.statistics == there_t.statistics, name
        assert (there_b.inputs, there_b.predicted, there_b.rejected) == (
            here_b.inputs,
            here_b.predicted,
            here_b.rejected,
        )
        assert _predictions(tmp_path / name[0] / "pred") == _predictions(tmp_path / "here" / "pred")


def test_a_worker_that_never_connects_or_dies_mid_job_is_one_line_and_nothing_is_kept(
    tiny_dataset, tmp_path, capsys
):
    from tests.conftest import fails_in_one_line

    args = ["ingest", "--data", str(tiny_dataset), "--out", str(tmp_path / "out")]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\necho 'No module named apache_beam' >&2\nexit 1\n")
    (fake / "python").chmod(0o755)
    # A system Python without Beam first on the pool's PATH: its workers never connect.
    with portable_services(worker_env={"PATH": str(fake)}) as overrides:
        sets = [*overrides, "beam.worker_start_timeout_s=5"]
        err = fails_in_one_line(
            [*args, *(x for o in sets for x in ("--set", o))], capsys, tmp_path / "out"
        )
    assert "started a worker that did not connect within 5 s (beam.worker_start_timeout_s)" in err
    # A worker killed (SIGKILL) after writing its first record.
    with portable_services(worker_env={faults.ENV: "ingest.record_written"}) as overrides:
        err = fails_in_one_line(
            [*args, *(x for o in overrides for x in ("--set", o))], capsys, tmp_path / "out"
        )
    assert "went away mid-job (its connection closed); nothing was kept" in err
    assert not list(tmp_path.glob("out.staging-*"))


def test_an_endpoint_that_does_not_answer_is_one_line_naming_it(tiny_dataset, tmp_path, capsys):
    from tests.conftest import fails_in_one_line

    dead = "beam.extra_args=[--job_endpoint=localhost:1, --job_server_timeout=3]"
    args = ["ingest", "--data", str(tiny_dataset), "--out", str(tmp_path / "out")]
    err = fails_in_one_line(
        [*args, "--set", "beam.runner=PortableRunner", "--set", dead], capsys, tmp_path / "out"
    )
    assert "Beam job ingest on PortableRunner: the job service at localhost:1 did not answer" in err
    with portable_services() as overrides:
        job = overrides[1].split("--job_endpoint=")[1].split(",")[0].strip("'")
        pool = f"beam.extra_args=[--job_endpoint={job}, --environment_type=EXTERNAL, "
        pool += "--environment_config=localhost:3]"  # no worker pool there
        err = fails_in_one_line(
            [*args, "--set", "beam.runner=PortableRunner", "--set", pool], capsys, tmp_path / "out"
        )
    assert "nothing listens at localhost:3 (the SDK worker pool): connection refused" in err


def test_ingest_repeated_on_threads_equals_the_in_process_run_every_time(tmp_path):
    # The repeat test, small: the loss once seen was on threads (BeamConfig). The
    # benchmark repeats it on 3000 images (make bench BENCH_ARGS="--only runners").
    from pipelines.sample_data import SampleSpec, generate

    generate(tmp_path / "images", SampleSpec(classes=3, per_class=100, size=32, seed=3))
    keys = ("inputs", "written", "rejected", "duplicates", "per_split", "fingerprint")
    reference = run_ingest(str(tmp_path / "images"), str(tmp_path / "ref"), load_config()).stats
    threads = load_config(
        overrides=["beam.direct_running_mode=multi_threading", "beam.direct_num_workers=4"]
    )
    for i in range(3):
        again = run_ingest(str(tmp_path / "images"), str(tmp_path / f"run{i}"), threads).stats
        assert {k: again[k] for k in keys} == {k: reference[k] for k in keys}, i
        assert _splits(str(tmp_path / f"run{i}")) == _splits(str(tmp_path / "ref")), i
