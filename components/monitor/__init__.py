"""The monitor step: what the served model is given, against its reference profile."""
