"""Evaluation: held-out perplexity, bits per byte and calibration (`perplexity`), generation (`generation`),
lm-evaluation-harness (`harness`, `tasks/`), temperature, Platt or beta scaling (`calibration`), sequence confidence
and abstention (`confidence`), answer accuracy with risk-coverage (`answers`), epistemic vs aleatoric uncertainty
(`uncertainty`)."""
