"""The train step: Keras under tf.distribute (``trainer/train.py``), exported for serving."""
