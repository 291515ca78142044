"""Sparse autoencoders: architectures and the SAELens folder format."""

from .base import ARCHITECTURES, K_ARCHITECTURES, SAE, SAEConfigError, SAESpec, StepOut
from .batchtopk import BatchTopKSAE
from .jumprelu import JumpReLUSAE
from .matryoshka import MatryoshkaSAE
from .standard import StandardSAE
from .topk import TopKSAE

CLASSES: dict[str, type[SAE]] = {
    "standard": StandardSAE,
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "matryoshka_batchtopk": MatryoshkaSAE,
    "jumprelu": JumpReLUSAE,
}


def make_sae(spec: SAESpec) -> SAE:
    """A freshly initialised SAE of ``spec.architecture``."""
    spec.validate()
    return CLASSES[spec.architecture](spec)


__all__ = [
    "ARCHITECTURES",
    "K_ARCHITECTURES",
    "CLASSES",
    "SAE",
    "SAEConfigError",
    "SAESpec",
    "StepOut",
    "make_sae",
    "StandardSAE",
    "TopKSAE",
    "BatchTopKSAE",
    "MatryoshkaSAE",
    "JumpReLUSAE",
]
