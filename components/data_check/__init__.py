"""The data check: whether a pipeline run goes on to train, and why."""
