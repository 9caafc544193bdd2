"""Floor 3, evaluation (DESIGN §1): object scores from a checkpoint
(inference), object -> frame scores (frame_scoring), metrics, the evaluator
and its plots. Never imports training."""
