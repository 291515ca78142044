"""Training SAEs on a stream of activations (one process, or several under torchrun: see core.distributed)."""
