"""Evaluation: held-out perplexity, bits per byte and calibration (`perplexity`), generation (`generation`)."""
