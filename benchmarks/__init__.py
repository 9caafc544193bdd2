"""Speed comparison: the PyTorch twin of the SSMTL model and the harness.

``benchmarks.torch_ssmtl`` is the same network in PyTorch (with a copier from
Flax variables); ``python -m benchmarks.compare`` measures JAX vs PyTorch
(eager and ``torch.compile``) and the Flax detector vs OpenCV's dnn.
"""
