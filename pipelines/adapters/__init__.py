"""Adapters: the MLflow tracking store and registry, the MLflow Model, kfp.local."""
