"""visionpipe core: configuration, storage, local state and experiment tracking.

The pipeline steps live in ``components`` and ``trainer``; the KFP wiring and the
command line in ``pipelines``.
"""

__version__ = "0.1.0"
