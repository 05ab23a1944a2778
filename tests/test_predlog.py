"""The prediction log: whole files, many writers, sampling, the size cap, and reading back."""

import datetime as dt
import json
import multiprocessing
import threading

import numpy as np
import pytest

from visionpipe.predlog import PredictionLog, parse_since, read_log, sampled
from visionpipe.sections import MonitorConfig

IDENTITY = {"name": "cats", "version": "3", "digest": "d" * 64}


def _outputs(n: int, seed: int = 0) -> dict:
    """What the ``monitor`` signature returns for ``n`` images (numpy)."""
    rng = np.random.default_rng(seed)
    return {
        "class_name": np.array([b"tabby"] * n),
        "confidence": rng.uniform(0.5, 1, n),
        "embedding": rng.normal(0, 1, (n, 4)),
        "format": np.array([b"jpeg"] * n),
        "width": np.full(n, 64),
        "height": np.full(n, 48),
        **{
            p: rng.uniform(0, 1, n)
            for p in ("brightness", "contrast", "sharpness", "colourfulness")
        },
    }


def _write(uri, n, identity=IDENTITY, config=None, seed=0):
    log = PredictionLog(str(uri), identity, "predict", config or MonitorConfig())
    hashes = [f"{seed:04x}{i:060x}" for i in range(n)]
    log.add_outputs(_outputs(n, seed), list(range(n)), hashes, [f"/img/{i}.jpg" for i in range(n)])
    log.close()
    return log


def test_records_hold_what_monitoring_reads_and_files_appear_whole(tmp_path):
    log = _write(tmp_path, 5)
    files = list(tmp_path.rglob("*.jsonl"))
    assert len(files) == 1 and files[0].parent.parent.name == "cats"
    assert not list(tmp_path.rglob(".*"))  # no hidden half-written file left
    record = json.loads(files[0].read_text().splitlines()[0])
    assert set(record) >= {"time", "model", "version", "digest", "sha256", "class", "confidence"}
    assert record["aspect"] == round(64 / 48, 4) and len(record["embedding"]) == 4
    assert "image" not in record and log.written == 5


def test_a_full_buffer_rolls_into_a_new_file(tmp_path):
    _write(tmp_path, 25, config=MonitorConfig(flush_records=10))
    sizes = sorted(len(f.read_text().splitlines()) for f in tmp_path.rglob("*.jsonl"))
    assert sizes == [5, 10, 10]


def test_many_writers_at_once_lose_no_record(tmp_path):
    threads = [
        threading.Thread(target=_write, args=(tmp_path, 200), kwargs={"seed": s}) for s in range(4)
    ]
    processes = [
        multiprocessing.get_context("spawn").Process(
            target=_write, args=(tmp_path, 200), kwargs={"seed": 10 + s}
        )
        for s in range(2)
    ]
    for w in threads + processes:
        w.start()
    for w in threads + processes:
        w.join()
    window = read_log(str(tmp_path), IDENTITY["digest"])
    assert len(window.records) == 1200 and window.unreadable == 0
    assert len({r["sha256"] for r in window.records}) == 1200


def test_sampling_is_by_content_hash_so_an_image_is_always_or_never_logged(tmp_path):
    hashes = [f"{i:08x}" + "0" * 56 for i in range(0, 2**32, 2**22)]
    chosen = [h for h in hashes if sampled(h, 0.25)]
    assert 0.2 < len(chosen) / len(hashes) < 0.3
    assert chosen == [h for h in hashes if sampled(h, 0.25)]
    log = _write(tmp_path, 400, config=MonitorConfig(sample_rate=0.0))
    assert log.written == 0 and log.skipped == 400 and not list(tmp_path.rglob("*.jsonl"))


def test_the_size_cap_removes_the_oldest_files_of_the_model(tmp_path):
    config = MonitorConfig(flush_records=100, max_log_mb=0.1)  # ~100 KB: a few files
    for seed in range(12):
        _write(tmp_path, 100, config=config, seed=seed)
    files = sorted(tmp_path.rglob("*.jsonl"))
    assert sum(f.stat().st_size for f in files) <= 0.1 * 1024 * 1024 + max(
        f.stat().st_size for f in files
    )
    assert len(files) < 12
    kept = {json.loads(f.read_text().splitlines()[0])["sha256"][:4] for f in files}
    assert f"{11:04x}" in kept and f"{0:04x}" not in kept  # the newest stay


def test_reading_counts_what_it_cannot_use(tmp_path):
    _write(tmp_path, 30)
    _write(tmp_path, 7, identity={"name": "cats", "version": "2", "digest": "e" * 64})
    # next to the records the log wrote: its folder is the day's, so no date is written here
    bad = next(tmp_path.rglob("*.jsonl")).parent / "broken.jsonl"
    bad.write_text('{"time": "x"}\nnot json\n' + json.dumps({"digest": "d" * 64}) + "\n")
    window = read_log(str(tmp_path), IDENTITY["digest"])
    assert len(window.records) == 30 and window.unreadable == 3
    assert window.other_models == {("cats", "2"): 7}
    text = window.describe()
    assert "3 unreadable lines (e.g. " in text and "broken.jsonl:1" in text
    assert "7 records of other models (cats v2: 7)" in text
    later = read_log(
        str(tmp_path), IDENTITY["digest"], dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    )
    assert not later.records and later.before_since == 30
    with pytest.raises(FileNotFoundError, match="no prediction log there"):
        read_log(str(tmp_path / "nothing"), IDENTITY["digest"])


def test_since_takes_a_time_or_a_span():
    now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    assert parse_since("90m", now) == now - dt.timedelta(minutes=90)
    assert parse_since("7d", now) == now - dt.timedelta(days=7)
    assert parse_since("2026-12-01T09:00", now) == dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="expected an ISO time"):
        parse_since("yesterday", now)
