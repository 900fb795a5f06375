"""Data: registered sources and the validated, split `Dataset` with its tf.data pipelines."""
