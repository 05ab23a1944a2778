"""Label-noise suspicion and robustness, measured on injected faults.

- **Label flips.** 5 % of every class of a generated dataset get another class's label;
  the default model is trained on them, and evaluate's audit
  (``components/evaluate/label_noise.py``: confident learning on out-of-fold
  predictions of a classifier on the model's embeddings) lists suspects. Recall and
  precision are over the flipped images of the train split. The plain baseline is what
  one would write first: cleanlab on the trained network's own (in-sample) probabilities.
  Shapes are the sample; glyphs were not used to choose anything.
- **Augmentation and robustness.** The same shapes trained without and with brightness
  and contrast augmentation; ``accuracy_under_exposure`` (and the other variants) of both.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from benchmarks.trainer_bench import prepare

SPECS = {
    "shapes": dict(kind="shapes", classes=5, per_class=300, size=64, seed=0),
    "glyphs": dict(kind="glyphs", classes=8, per_class=200, size=64, seed=1),
}
FLIP_FRACTION = 0.05
AUGMENTED = ["trainer.brightness=0.3", "trainer.contrast=0.3"]


def _flipped_csv(images: Path, out: Path, seed: int) -> set[str]:
    """``out``: every image as ``path,label``, 5 % of each class relabelled; the flipped paths."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in images.iterdir() if p.is_dir())
    rows, flipped = [], set()
    for c in classes:
        paths = sorted(str(p) for p in (images / c).glob("*.jpg"))
        chosen = set(rng.choice(len(paths), int(len(paths) * FLIP_FRACTION), replace=False))
        for i, p in enumerate(paths):
            label = c
            if i in chosen:
                label = rng.choice([o for o in classes if o != c])
                flipped.add(p)
            rows.append((p, label))
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return flipped


def _scores(found: set[str], flipped: set[str]) -> str:
    hit = len(found & flipped)
    recall = hit / len(flipped) if flipped else 0.0
    precision = hit / len(found) if found else 0.0
    return f"recall {recall:.2f} ({hit}/{len(flipped)}), precision {precision:.2f} of {len(found)}"


def bench_audit(work: Path, overrides: list[str]) -> list[tuple]:
    """Table rows (name, seconds, note)."""
    from cleanlab.filter import find_label_issues

    from components.evaluate.evaluate import audit_labels, model_labels, score
    from components.evaluate.label_noise import ISSUES_CSV, read_issues
    from pipelines.sample_data import SampleSpec, generate
    from trainer.train import run_train
    from visionpipe.transform_graph import load_raw_split

    rows = []
    for kind, spec in SPECS.items():
        images = work / kind / "images"
        generate(images, SampleSpec(**spec))
        flipped = _flipped_csv(images, work / kind / "flipped.csv", spec["seed"])
        config, examples, _ = prepare(work / kind, str(work / kind / "flipped.csv"), overrides)
        raw = str(work / kind / "raw")
        graph = str(work / kind / "t" / "transform_graph")
        started = time.monotonic()
        model = run_train(examples, graph, None, str(work / kind / "model"), config).model_uri
        train_s = time.monotonic() - started
        train = load_raw_split(raw, "train")
        in_train = flipped & set(train.names)
        started = time.monotonic()
        audit_labels(raw, model, str(work / kind / "audit"), config.evaluate)
        audit_s = time.monotonic() - started
        found = {r["path"] for r in read_issues(str(work / kind / "audit" / ISSUES_CSV))}
        rows.append(
            (f"{kind}: train on 5 % flipped labels", train_s, f"{len(in_train)} flipped in train")
        )
        rows.append(
            (f"{kind}: label audit (out-of-fold, default)", audit_s, _scores(found, in_train))
        )
        started = time.monotonic()
        probabilities, _ = score(model, train.images, 64)
        labels = model_labels(model)
        given = np.array([labels.index(label) for label in train.labels])
        naive = find_label_issues(given, probabilities)
        naive_s = time.monotonic() - started
        naive_found = {train.names[i] for i in np.flatnonzero(naive)}
        rows.append(
            (
                f"{kind}: cleanlab on in-sample probabilities",
                naive_s,
                _scores(naive_found, in_train),
            )
        )
    rows += _augmentation(work / "augment", overrides)
    return rows


def bench_evaluate_growth(work: Path, overrides: list[str]) -> list[tuple]:
    """Evaluate's time at 1x and 10x the test split: plain, with the robustness variants,
    with the label audit (the default has both)."""
    from components.evaluate.evaluate import run_evaluate
    from components.ingest.ingest import run_ingest
    from pipelines.sample_data import SampleSpec, generate
    from trainer.train import run_train
    from visionpipe.config import load_config

    small = work / "small"
    generate(small / "images", SampleSpec(**SPECS["shapes"]))
    config, examples, _ = prepare(small, str(small / "images"), overrides)
    graph = str(small / "t" / "transform_graph")
    model = run_train(examples, graph, None, str(small / "model"), config).model_uri
    big = work / "big"
    generate(big / "images", SampleSpec(**{**SPECS["shapes"], "per_class": 3000, "seed": 5}))
    run_ingest(str(big / "images"), str(big / "raw"), load_config(overrides=overrides))
    rows = []
    modes = {
        "plain": ["evaluate.robustness=[]", "evaluate.label_noise=false"],
        "with robustness variants": ["evaluate.label_noise=false"],
        "with variants and label audit (default)": [],
    }
    for root in (small, big):
        base = None
        for name, extra in modes.items():
            cfg = config.with_overrides(extra)
            started = time.monotonic()
            blessing = run_evaluate(str(root / "raw"), model, str(root / f"e-{len(extra)}"), cfg)
            seconds = time.monotonic() - started
            base = base or seconds
            test = int(blessing.candidate["examples"])
            rows.append(
                (f"evaluate {name}, {test} test images", seconds, f"{seconds / base:.2f}x plain")
            )
    return rows


def _augmentation(work: Path, overrides: list[str]) -> list[tuple]:
    """Robustness of the shapes model trained without and with photometric augmentation."""
    from components.evaluate.evaluate import run_evaluate
    from pipelines.sample_data import SampleSpec, generate
    from trainer.train import run_train

    generate(work / "images", SampleSpec(**SPECS["shapes"]))
    config, examples, _ = prepare(work, str(work / "images"), overrides)
    graph = str(work / "t" / "transform_graph")
    rows = []
    for name, extra in (("no augmentation (default)", []), ("brightness+contrast 0.3", AUGMENTED)):
        cfg = config.with_overrides(extra)
        started = time.monotonic()
        tag = "aug" if extra else "plain"
        model = run_train(examples, graph, None, str(work / f"model-{tag}"), cfg).model_uri
        seconds = time.monotonic() - started
        blessing = run_evaluate(str(work / "raw"), model, str(work / f"eval-{tag}"), cfg)
        m = blessing.candidate
        under = ", ".join(
            f"{k.removeprefix('accuracy_under_')} {v:.3f}"
            for k, v in m.items()
            if k.startswith("accuracy_under_")
        )
        rows.append((f"shapes, {name}", seconds, f"clean {m['accuracy']:.3f}; {under}"))
    return rows
