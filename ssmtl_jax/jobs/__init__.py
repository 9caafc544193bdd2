"""Floor 5, what the entry points share (DESIGN §1): the config checks and the
runner of ``python -m ssmtl_jax.main``."""
