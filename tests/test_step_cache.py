"""The step cache: ingest and transform reused only when what they depend on is unchanged.

Real steps (``run_step``, as the pipeline's components call it) on the tiny dataset,
recorded in a real (SQLite) store; the cache is a folder under the test's home.
"""

import shutil

import pytest

from pipelines.adapters.mlflow_tracking import Tracking
from pipelines.execute import run_step
from pipelines.step_cache import CACHE_KEY_TAG, CACHE_TAG, CACHED_FROM_TAG
from visionpipe.content import tree_digest


@pytest.fixture
def images(tiny_dataset, tmp_path):
    """A copy of the tiny dataset this test may change."""
    root = tmp_path / "images"
    shutil.copytree(tiny_dataset, root, ignore=shutil.ignore_patterns("*.csv"))
    return root


def _ingest(config, images, out, use_cache=True):
    """Ingest in a new pipeline run: the result, the step's run and the pipeline's."""
    session = Tracking.open(config)
    session.start_pipeline(config)
    result = run_step(
        "ingest", config, session, use_cache=use_cache, data=str(images), examples=str(out)
    )
    [step_run] = session.client.search_runs(
        [session.experiment_id], f"tags.`mlflow.parentRunId` = '{session.pipeline_run_id}'"
    )
    return result, step_run, session.client.get_run(session.pipeline_run_id)


def test_unchanged_images_are_served_from_the_cache_with_the_steps_record(
    tiny_config, images, tmp_path
):
    first, first_run, _ = _ingest(tiny_config, images, tmp_path / "a")
    assert first_run.data.tags[CACHE_TAG] == "miss"

    again, again_run, pipeline_run = _ingest(tiny_config, images, tmp_path / "b")
    assert again_run.data.tags[CACHE_TAG] == "hit"
    assert again_run.data.tags[CACHED_FROM_TAG] == first_run.info.run_id
    assert again_run.data.tags[CACHE_KEY_TAG] == first_run.data.tags[CACHE_KEY_TAG]
    # The same outputs, result and record: files, metrics, the dataset and the pipeline
    # run's tags (the data check and compare read data_fingerprint there).
    assert tree_digest(str(tmp_path / "b")) == tree_digest(str(tmp_path / "a"))
    assert again.stats == first.stats and again.examples == first.examples
    # All but the peak memory, which each run measures of itself (a hit reads no image).
    own = "peak_memory_mb"
    assert own in again_run.data.metrics and own in first_run.data.metrics
    assert {k: v for k, v in again_run.data.metrics.items() if k != own} == {
        k: v for k, v in first_run.data.metrics.items() if k != own
    }
    assert again_run.inputs.dataset_inputs[0].dataset.digest == first.stats["fingerprint"][:32]
    assert pipeline_run.data.tags["data_fingerprint"] == first.stats["fingerprint"]
    assert pipeline_run.data.metrics["inputs"] == 36


def test_a_new_image_a_changed_one_or_a_changed_setting_misses(tiny_config, images, tmp_path):
    _, run, _ = _ingest(tiny_config, images, tmp_path / "a")
    keys = {run.data.tags[CACHE_KEY_TAG]}

    extra = images / "square" / "square_extra.jpg"
    shutil.copy(images / "square" / "square_00001.jpg", extra)
    extra.write_bytes(extra.read_bytes() + b"\0")  # another image, another content hash
    result, run, _ = _ingest(tiny_config, images, tmp_path / "b")
    assert run.data.tags[CACHE_TAG] == "miss" and result.stats["inputs"] == 37
    keys.add(run.data.tags[CACHE_KEY_TAG])

    (images / "square" / "square_00002.jpg").write_bytes(extra.read_bytes() + b"\1")
    _, run, _ = _ingest(tiny_config, images, tmp_path / "c")
    assert run.data.tags[CACHE_TAG] == "miss"
    keys.add(run.data.tags[CACHE_KEY_TAG])

    salted = tiny_config.with_overrides(["ingest.split_salt=other"])
    _, run, _ = _ingest(salted, images, tmp_path / "d")
    assert run.data.tags[CACHE_TAG] == "miss"
    keys.add(run.data.tags[CACHE_KEY_TAG])
    assert len(keys) == 4


def test_no_cache_and_the_cli_verbs_neither_read_nor_write_it(
    tiny_config, images, tmp_path, isolated_home
):
    off = tiny_config.with_overrides(["pipeline.cache=false"])
    _, run, _ = _ingest(off, images, tmp_path / "a")
    assert CACHE_TAG not in run.data.tags and not (isolated_home / "cache").exists()
    _, run, _ = _ingest(tiny_config, images, tmp_path / "b", use_cache=False)  # a CLI verb
    assert CACHE_TAG not in run.data.tags and not (isolated_home / "cache").exists()


def test_an_entry_a_writer_left_unfinished_is_not_used(
    tiny_config, images, tmp_path, isolated_home
):
    _, first, _ = _ingest(tiny_config, images, tmp_path / "a")
    [entry] = (isolated_home / "cache" / "ingest").iterdir()
    (entry / "entry.json").unlink()  # written last: the writer died before it
    _, run, _ = _ingest(tiny_config, images, tmp_path / "b")
    assert run.data.tags[CACHE_TAG] == "miss"
    assert (entry / "entry.json").exists()  # written again, whole


def test_a_cache_that_cannot_be_written_warns_and_the_step_succeeds(
    tiny_config, images, tmp_path, caplog
):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    config = tiny_config.with_overrides([f"pipeline.cache_root={blocked}"])
    result, run, _ = _ingest(config, images, tmp_path / "a")
    assert run.info.status == "FINISHED" and result.stats["inputs"] == 36
    assert "step cache: ingest's outputs were not kept" in caplog.text


def test_transform_is_served_from_the_cache_for_the_same_examples(tiny_config, ingested, tmp_path):
    def transform(out):
        session = Tracking.open(tiny_config)
        session.start_pipeline(tiny_config)
        result = run_step(
            "transform",
            tiny_config,
            session,
            use_cache=True,
            raw_examples=ingested.output_uri,
            examples=str(out / "examples"),
            transform_graph=str(out / "transform_graph"),
        )
        [step_run] = session.client.search_runs(
            [session.experiment_id], f"tags.`mlflow.parentRunId` = '{session.pipeline_run_id}'"
        )
        return result, step_run

    first, first_run = transform(tmp_path / "a")
    again, again_run = transform(tmp_path / "b")
    assert (first_run.data.tags[CACHE_TAG], again_run.data.tags[CACHE_TAG]) == ("miss", "hit")
    assert again.labels == first.labels and again.statistics == first.statistics
    assert again.examples_uri == str(tmp_path / "b" / "examples")
    assert tree_digest(str(tmp_path / "b")) == tree_digest(str(tmp_path / "a"))
    artifacts = {
        a.path for a in Tracking.open(tiny_config).client.list_artifacts(again_run.info.run_id)
    }
    assert {"label_vocabulary.json", "transform_statistics.json"} <= artifacts
