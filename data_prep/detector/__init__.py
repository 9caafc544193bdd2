"""`python -m data_prep.detector.weights` (the entry; the detector lives in ssmtl_jax.perception.detector)."""
