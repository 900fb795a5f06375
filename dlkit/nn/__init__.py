"""Networks: layers, optimizers, model building, Keras callbacks and training (TensorFlow)."""
