"""The tune step: a keras-tuner search over the trainer (``trainer/tune.py``)."""
