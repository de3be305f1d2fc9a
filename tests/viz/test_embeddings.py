import pytest
import torch
from viz_helpers import read_png

from openllm.viz.embeddings import nearest_neighbours, pca_2d, plot_projection, token_neighbours


def _distances(x):
    return (x[:, None] - x[None]).norm(dim=-1)


def test_pca_keeps_a_planar_cloud_and_its_neighbour_order():
    """Points on a 2-D plane inside 16-D space: the projection is an isometry of the plane, so every point keeps
    its distances and therefore the order of its neighbours."""
    g = torch.Generator().manual_seed(0)
    plane = torch.randn(30, 2, generator=g) * torch.tensor([3.0, 1.0])
    basis, _ = torch.linalg.qr(torch.randn(16, 2, generator=g))
    vectors = plane @ basis.T + 5.0  # off-centre, too
    points = pca_2d(vectors)
    assert points.shape == (30, 2)
    torch.testing.assert_close(_distances(points), _distances(vectors), atol=1e-4, rtol=1e-4)
    for i in range(30):
        assert torch.equal(_distances(points)[i].argsort(), _distances(vectors)[i].argsort())
    assert points[:, 0].var() > points[:, 1].var()  # the first component carries the most variance


def test_pca_is_deterministic_in_sign():
    vectors = torch.randn(20, 8)
    torch.testing.assert_close(pca_2d(vectors), pca_2d(vectors.clone()))
    torch.testing.assert_close(pca_2d(-vectors), pca_2d(vectors), atol=1e-5, rtol=1e-5)  # same shape, same picture
    with pytest.raises(ValueError, match="at least 2 row vectors"):
        pca_2d(torch.randn(1, 8))


def test_nearest_neighbours_by_cosine():
    angles = torch.tensor([0.0, 0.1, 0.5, 1.0, 3.0])
    lengths = torch.tensor([[1.0], [7.0], [0.5], [2.0], [1.0]])
    vectors = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1) * lengths
    result = nearest_neighbours(vectors, 0, k=4)
    assert [row for row, _ in result] == [1, 2, 3, 4]  # by angle, whatever the length
    assert result[0][1] == pytest.approx(float(torch.cos(torch.tensor(0.1))), abs=1e-6)
    assert [row for row, _ in nearest_neighbours(vectors, 0, k=2, exclude=[1])] == [2, 3]
    assert [row for row, _ in nearest_neighbours(vectors, torch.tensor([0.0, 1.0]), k=1)] == [3]


def test_token_neighbours_skip_special_tokens_and_multi_token_words(dense_model, lm_tokenizer):
    word = next(w for w in ("The", "the", "a") if len(lm_tokenizer(w, add_special_tokens=False)["input_ids"]) == 1)
    result = token_neighbours(dense_model, lm_tokenizer, [word, "zyxwvut"], k=3)
    assert list(result) == [word]  # "zyxwvut" is several tokens
    neighbours = result[word]
    assert all(text not in lm_tokenizer.all_special_tokens for text, _ in neighbours)
    # the same three similarities as a brute-force search over the ordinary tokens
    embeddings = dense_model.get_input_embeddings().weight.detach()
    query = lm_tokenizer(word, add_special_tokens=False)["input_ids"][0]
    ordinary = [i for i in range(len(embeddings)) if i != query and i not in lm_tokenizer.all_special_ids]
    brute = torch.nn.functional.cosine_similarity(embeddings[ordinary], embeddings[query][None], dim=-1)
    assert [s for _, s in neighbours] == pytest.approx(brute.topk(3).values.tolist(), abs=1e-6)


def test_projection_png(tmp_path):
    points = pca_2d(torch.randn(6, 4))
    plot_projection(points, ["a", " b", "\n", "d", "e", "f"], path=tmp_path / "emb.png", groups=list("xxxyyy"))
    read_png(tmp_path / "emb.png")
