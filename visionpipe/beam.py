"""Apache Beam pipeline options shared by the Beam steps (ingest, transform)."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from visionpipe.config import BeamConfig


def pipeline_options(config: BeamConfig) -> PipelineOptions:
    """Options for the configured runner.

    Locally this is Beam's DirectRunner; any other runner (Dataflow, Flink, Spark) is
    selected with ``beam.runner`` and configured with ``beam.extra_args``.
    """
    args = [f"--runner={config.runner}", *config.extra_args]
    if config.runner == "DirectRunner":
        args += [
            f"--direct_num_workers={config.direct_num_workers}",
            f"--direct_running_mode={config.direct_running_mode}",
        ]
    return PipelineOptions(args)
