"""From text and weights to activations: datasets and tokenization, models and their weight files,
hook points, activation capture and the activation cache."""
