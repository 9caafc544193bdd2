"""Floor 1, perception (DESIGN §1): video I/O, the detector, the teachers and
the frames -> objects step (cubes, objects) that both the offline builder
(:mod:`ssmtl_jax.data.builder`) and the streaming scorer
(:mod:`ssmtl_jax.serve.stream`) run. Imports only the base."""
