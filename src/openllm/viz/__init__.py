"""Pictures of what a model does, for notebooks and the `openllm viz` command.

- `attention`: attention weights per layer and head for a prompt (eager attention), drawn as heatmaps.
- `embeddings`: 2-D PCA projections of token embeddings and nearest neighbours by cosine similarity.
- `experts`: which expert the router of each MoE layer sent every token to.
- `confidence`: the probability a model gave each token of a text, as coloured HTML or a PNG.
- `cli`: `openllm viz attention|experts|confidence MODEL ...`.

Needs matplotlib (in the `train` extra).
"""
