"""Floor 2, data (DESIGN §1): the record builder (perception -> records), the
input pipeline, the synthetic data set and the pseudo-anomaly validation
split."""
