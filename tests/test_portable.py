"""Ingest and transform on Beam's portable path: a job service and an SDK worker pool.

The path Flink and Spark take (job submission, artifact staging, the Fn API to workers
in other processes), on loopback with Beam's own services (``pipelines/beam_services.py``).
"""

import pytest

from components.ingest.ingest import run_ingest
from components.transform.transform import run_transform
from pipelines.beam_services import portable_services
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


def test_ingest_and_transform_on_the_portable_path_equal_the_in_process_run(tiny_dataset, tmp_path):
    local = load_config(overrides=SMALL)
    here = run_ingest(str(tiny_dataset), str(tmp_path / "here"), local)
    here_t = run_transform(
        here.output_uri, str(tmp_path / "ht" / "ex"), str(tmp_path / "ht" / "g"), local
    )
    with portable_services() as overrides:
        portable = load_config(overrides=[*SMALL, *overrides])
        there = run_ingest(str(tiny_dataset), str(tmp_path / "there"), portable)
        there_t = run_transform(
            there.output_uri, str(tmp_path / "tt" / "ex"), str(tmp_path / "tt" / "g"), portable
        )
    for key in ("inputs", "written", "rejected", "duplicates", "per_split", "fingerprint"):
        assert here.stats[key] == there.stats[key], key
    assert _splits(here.output_uri) == _splits(there.output_uri)  # same images, same splits
    assert here_t.examples == there_t.examples and here_t.labels == there_t.labels
    assert here_t.statistics == there_t.statistics


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
    assert "nothing listens at 127.0.0.1:3 (the SDK worker pool, --environment_config)" in err
