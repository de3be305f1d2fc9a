"""Token embeddings in two dimensions (PCA) and their nearest neighbours by cosine similarity.

    vectors = token_embeddings(model)                     # (vocab, hidden)
    points = pca_2d(vectors[ids])                         # (len(ids), 2)
    nearest_neighbours(vectors, query=ids[0], k=5)        # [(token id, cosine similarity), ...]
"""

from __future__ import annotations

import torch

from .figures import pyplot, save_png
from .tokens import label


def token_embeddings(model) -> torch.Tensor:
    """The input embedding matrix (vocab, hidden) as fp32 on the CPU."""
    return model.get_input_embeddings().weight.detach().float().cpu()


def pca_2d(vectors) -> torch.Tensor:
    """Project rows of `vectors` (N, D) onto their two principal components: an (N, 2) tensor whose first column has
    the largest variance. Signs are fixed so each component's largest-magnitude coordinate is positive, which makes
    the picture the same on every run."""
    x = torch.as_tensor(vectors, dtype=torch.float64)
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"pca_2d needs at least 2 row vectors (N, D), got shape {tuple(x.shape)}.")
    x = x - x.mean(dim=0, keepdim=True)
    # exact SVD: embedding tables here are small, and pca_lowrank's randomness would move the picture between runs
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    components = v[:2].T  # (D, 2)
    if components.shape[1] < 2:
        components = torch.cat([components, torch.zeros(x.shape[1], 1, dtype=x.dtype)], dim=1)
    points = x @ components
    flip = torch.sign(points.gather(0, points.abs().argmax(dim=0, keepdim=True)))
    return (points * torch.where(flip == 0, 1.0, flip)).float()


def cosine_similarities(vectors, query) -> torch.Tensor:
    """Cosine similarity of every row of `vectors` (N, D) with `query` (a row index or a (D,) vector)."""
    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    q = vectors[query] if isinstance(query, int) else torch.as_tensor(query, dtype=torch.float32)
    return torch.nn.functional.cosine_similarity(vectors, q[None, :], dim=-1)


def nearest_neighbours(vectors, query, k: int = 5, exclude=()) -> list[tuple[int, float]]:
    """The `k` rows most similar to `query` by cosine, best first, as (row, similarity); a row-index query is not its
    own neighbour, nor is any row in `exclude` (e.g. special tokens)."""
    similarities = cosine_similarities(vectors, query).clone()
    skip = list(exclude) + ([query] if isinstance(query, int) else [])
    if skip:
        similarities[torch.tensor(skip, dtype=torch.long)] = -float("inf")
    k = min(k, len(similarities) - len(set(skip)))
    values, rows = torch.topk(similarities, k)
    return [(int(r), float(v)) for r, v in zip(rows, values)]


def token_neighbours(model, tokenizer, words, k: int = 5) -> dict[str, list[tuple[str, float]]]:
    """For each word that is a single token of `tokenizer`, its `k` nearest tokens in the model's embedding table
    (special tokens left out), as (token text, cosine similarity). Words that split into several tokens are skipped."""
    vectors = token_embeddings(model)
    special = set(tokenizer.all_special_ids)
    result = {}
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            continue
        result[word] = [(tokenizer.decode([i]), s) for i, s in nearest_neighbours(vectors, ids[0], k, exclude=special)]
    return result


def plot_projection(points, labels, path=None, title: str = "Token embeddings (PCA)", groups=None):
    """A scatter plot of 2-D points with a text label at each; `groups` (one name per point) colours them."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    points = points.numpy() if hasattr(points, "numpy") else points
    names = list(dict.fromkeys(groups)) if groups is not None else [None]
    for name in names:
        rows = [i for i in range(len(points)) if groups is None or groups[i] == name]
        ax.scatter(points[rows, 0], points[rows, 1], s=18, label=name)
    for (x, y), text in zip(points, labels):
        ax.annotate(label(text), (x, y), fontsize=8, xytext=(3, 2), textcoords="offset points")
    if groups is not None:
        ax.legend(fontsize=8)
    ax.set(title=title, xlabel="principal component 1", ylabel="principal component 2")
    if path is not None:
        save_png(fig, path)
    return fig
