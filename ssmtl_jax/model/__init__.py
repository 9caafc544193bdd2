"""Floor 1, the model (DESIGN §1): the Flax network, the four proxy tasks
(views, losses, scores), the oneDNN convolution, the device mesh and the
checkpoints. Imports only the base."""
