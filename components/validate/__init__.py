"""The validate step: a data profile per split, checked against a schema before training."""
