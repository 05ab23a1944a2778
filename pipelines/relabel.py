"""``visionpipe relabel``: the suspect training labels out as a CSV, and a person's fixes back in.

Evaluate lists the training images whose label is probably wrong
(``components/evaluate/label_noise.py``, ``label_issues.csv``). ``export`` writes them
as ``path,label,suggested`` for a person to correct (edit ``suggested``; leave it empty
to keep the label). ``apply`` reads the corrected file with the dataset and writes the
whole dataset as an ingest CSV (``path,label`` and the dataset's attribute columns),
with the corrections made: the next run on it sees a changed fingerprint and retrains.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from components.evaluate.label_noise import read_issues
from pipelines.adapters import mlflow_tracking as tracking
from visionpipe import storage
from visionpipe.config import Config
from visionpipe.errors import UserError
from visionpipe.sources import attribute_names, list_sources


class RelabelError(UserError, ValueError):
    """No label issues to export, or fixes that do not match the dataset."""


def latest_issues(config: Config) -> str:
    """The ``label_issues.csv`` of the newest pipeline run whose evaluation made one.

    Raises:
        RelabelError: no run of the experiment has audited its labels.
    """
    uri = tracking.tracking_uri(config)
    client = tracking.client(uri)
    found = client.get_experiment_by_name(config.mlflow.experiment)
    if found is not None:
        session = tracking.Tracking(uri, found.experiment_id, _client=client)
        for run in session.pipeline_runs():
            record = tracking.record_of(run)
            if record.label_issues_uri and storage.exists(record.label_issues_uri):
                return record.label_issues_uri
    raise RelabelError(
        f"no pipeline run of experiment {config.mlflow.experiment!r} at {uri} has label "
        "issues (evaluate.label_noise lists them); give --issues"
    )


def export(issues_uri: str, out: str) -> int:
    """Writes ``path,label,suggested`` of every suspect to ``out``; returns how many."""
    rows = _read(issues_uri, "--issues")
    _write(
        out, ["path", "label", "suggested"], [[r["path"], r["label"], r["suggested"]] for r in rows]
    )
    return len(rows)


@dataclass(frozen=True)
class Applied:
    """What ``apply`` wrote: images in all, and how many changed label."""

    images: int
    changed: int
    out: str


def apply(fixes_uri: str, data: str, out: str) -> Applied:
    """The dataset at ``data`` as one CSV with the fixes in ``fixes_uri`` made.

    A row's ``suggested`` is the label to use; an empty one keeps the label.

    Raises:
        RelabelError: the fixes file is not ``path,label,suggested``, or names an
            image the dataset does not have, or under another label than it has.
    """
    fixes = _read(fixes_uri, "--apply")
    sources = list_sources(storage.absolute(data))
    label_of = {s.uri: s.label for s in sources}
    new = {}
    for line, row in enumerate(fixes, start=2):
        path, label, suggested = row["path"], row["label"], (row["suggested"] or "").strip()
        if path not in label_of:
            raise RelabelError(f"{fixes_uri}:{line}: {path} is not an image of {data}")
        if label_of[path] != label:
            raise RelabelError(
                f"{fixes_uri}:{line}: {path} is labelled {label_of[path]!r} in {data}, "
                f"not {label!r} (fixes from another version of the data?)"
            )
        if suggested and suggested != label:
            new[path] = suggested
    columns = attribute_names(sources)
    rows = []
    for s in sources:
        attributes = dict(s.attributes)
        rows.append([s.uri, new.get(s.uri, s.label), *(attributes.get(c, "") for c in columns)])
    _write(out, ["path", "label", *columns], rows)
    return Applied(len(rows), len(new), out)


def _read(uri: str, option: str) -> list[dict[str, str]]:
    try:
        return read_issues(uri)
    except FileNotFoundError:
        raise RelabelError(f"{option} {uri}: no such file") from None
    except ValueError as err:
        raise RelabelError(str(err)) from None


def _write(out: str, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    storage.write_bytes(out, buf.getvalue().encode())
