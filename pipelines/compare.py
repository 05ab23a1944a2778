"""Comparing pipeline runs from MLflow: a table sorted by a metric, and a chart.

Everything comes from MLflow's ``search_runs`` and the runs' metric histories: the
pipeline runs (tag ``visionpipe.kind = pipeline``) carry the config as params, the
data fingerprint, the test metrics, the blessing and the pushed version; each run's
``train`` step run carries its per-epoch curves.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import asdict, dataclass, field

from pipelines.adapters import mlflow_tracking as tracking
from visionpipe.config import LOWER_IS_BETTER
from visionpipe.errors import UserError

KEY_PARAMS = ("trainer.model", "transform.image_size", "trainer.epochs", "tuner.max_trials")


class CompareError(UserError, ValueError):
    """An experiment or metric that the tracking store does not have."""


@dataclass(frozen=True)
class RunRow:
    """One pipeline run, as the comparison shows it."""

    run_id: str
    started: str
    status: str
    data_fingerprint: str
    params: dict[str, str]
    metrics: dict[str, float]
    blessed: str
    pushed_version: str
    curve: list[float] = field(default_factory=list)  # the train step's val_accuracy
    why: str = ""  # what made it train (the data check's trigger), or "skip"
    data_check: str = ""  # the data check's whole reason

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def compare_runs(
    tracking_uri: str, experiment: str, last: int, metric: str, include_skipped: bool = False
) -> list[RunRow]:
    """The last ``last`` pipeline runs of ``experiment``, best ``metric`` first.

    Runs without the metric (failed early, still running) come last; runs skipped
    because the data had not changed are left out unless ``include_skipped``.

    Raises:
        CompareError: the experiment does not exist, or none of its runs has ``metric``.
    """
    client = tracking.client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise CompareError(f"no MLflow experiment named {experiment!r} at {tracking_uri}")
    session = tracking.Tracking(tracking_uri, found.experiment_id, _client=client)
    runs = itertools.islice(session.pipeline_runs(include_skipped=include_skipped), last)
    rows = [_row(client, found.experiment_id, run) for run in runs]
    known = sorted({name for row in rows for name in row.metrics})
    if known and metric not in known:
        raise CompareError(f"unknown metric {metric!r}: the runs have {', '.join(known)}")
    sign = 1 if metric.removeprefix("test_") in LOWER_IS_BETTER else -1
    return sorted(
        rows,
        key=lambda r: (metric not in r.metrics, sign * r.metrics.get(metric, 0.0), r.started),
    )


def _row(client, experiment_id: str, run) -> RunRow:
    record, data = tracking.record_of(run), run.data
    started = dt.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
    train = client.search_runs(
        [experiment_id],
        f"tags.mlflow.parentRunId = '{run.info.run_id}' and tags.`{tracking.STEP_TAG}` = 'train'",
        max_results=1,
    )
    curve = []
    if train:
        history = client.get_metric_history(train[0].info.run_id, "val_accuracy")
        curve = [m.value for m in sorted(history, key=lambda m: m.step)]
    return RunRow(
        run_id=run.info.run_id,
        started=started,
        status="SKIPPED" if record.skipped else record.status,
        why="skip" if record.skipped else record.retrain_trigger,
        data_check=record.data_check,
        data_fingerprint=record.data_fingerprint[:12],
        params={k: data.params.get(k, "") for k in KEY_PARAMS},
        metrics=record.test_metrics,
        blessed="" if record.blessed is None else str(record.blessed).lower(),
        pushed_version="" if record.pushed_version is None else str(record.pushed_version),
        curve=curve,
    )


def format_table(rows: list[RunRow], metric: str) -> str:
    """A fixed-width text table, one line per run."""
    header = ["run", "started", "status", "why", "data", *(p.split(".")[-1] for p in KEY_PARAMS)]
    header += [metric, "blessed", "pushed"]
    lines = [
        [
            r.run_id[:8],
            r.started,
            r.status.lower(),
            r.why or "-",
            r.data_fingerprint,
            *(r.params[p] for p in KEY_PARAMS),
            f"{r.metrics[metric]:.4f}" if metric in r.metrics else "-",
            r.blessed or "-",
            r.pushed_version or "-",
        ]
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *lines]
    )


def plot(rows: list[RunRow], metric: str, path: str) -> None:
    """Left: ``metric`` across runs in time order; right: each run's validation accuracy curve."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    timeline = sorted(rows, key=lambda r: r.started)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    points = [(i, r.metrics[metric]) for i, r in enumerate(timeline) if metric in r.metrics]
    if points:
        left.plot([p[0] for p in points], [p[1] for p in points], "o-")
    left.set_xticks(range(len(timeline)), [r.run_id[:8] for r in timeline], rotation=45)
    left.set_title(f"{metric} by run (oldest first)")
    for r in timeline:
        if r.curve:
            right.plot(range(1, len(r.curve) + 1), r.curve, label=r.run_id[:8])
    right.set_xlabel("epoch")
    right.set_title("validation accuracy while training")
    if any(r.curve for r in timeline):
        right.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
