"""The trainer: tf.data input, the model family, keras-tuner search, training and export."""
