"""Floor 3, training (DESIGN §1): the train step (:mod:`.step`) and the loop
(:mod:`.trainer`). Only the jobs import the loop."""
