"""Floor 4, serving (DESIGN §1): the model bundle and the streaming scorer."""
