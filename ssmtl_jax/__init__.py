"""SSMTL in JAX/Flax: object-level video anomaly detection via self-supervised multi-task learning."""

__version__ = "0.1.0"
