"""The report card of an SAE: how well it reconstructs the model, in and out of the text it was trained
on, each figure with what it was measured on and how many tokens."""

from .quality import QualityRow, describe_quality, sae_quality

__all__ = ["QualityRow", "describe_quality", "sae_quality"]
