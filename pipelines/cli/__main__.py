"""``python -m pipelines.cli``: how the CLI starts worker processes of itself."""

from pipelines.cli import entry

entry()
