import colorsys
import html.parser
import math

import pytest
from viz_helpers import read_png

from openllm.evaluation.perplexity import evaluate_model
from openllm.viz.confidence import confidence_colour, plot_confidence, render_html, token_confidences

TEXT = "Café, naïve & <façade>: UTF-8 counts 🙂\nPerplexity is the exponential of the loss."


def _hue(colour: str) -> float:
    r, g, b = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return colorsys.rgb_to_hls(r, g, b)[0]


def test_colours_are_monotone_in_confidence():
    hues = [_hue(confidence_colour(i / 100)) for i in range(101)]
    assert all(a <= b + 1e-9 for a, b in zip(hues, hues[1:]))
    assert hues[0] == pytest.approx(0, abs=0.01) and hues[-1] == pytest.approx(1 / 3, abs=0.01)  # red → green
    assert confidence_colour(-1) == confidence_colour(0) and confidence_colour(2) == confidence_colour(1)


def test_probabilities_agree_with_held_out_evaluation(dense_model, lm_tokenizer):
    """Same accounting as `openllm eval`: the mean -log p over the tokens is its loss, top-1 its accuracy."""
    conf = token_confidences(dense_model, lm_tokenizer, TEXT)
    assert "".join(conf.tokens) == TEXT
    assert len(conf.probabilities) == len(lm_tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    metrics = evaluate_model(dense_model, lm_tokenizer, [TEXT], num_samples=0)["metrics"]
    loss = -sum(math.log(p) for p in conf.probabilities) / len(conf.probabilities)
    assert loss == pytest.approx(metrics["loss"], rel=1e-5)
    hits = [t == guess for t, guess in zip(conf.token_ids, conf.predicted_ids)]
    assert sum(hits) / len(hits) == pytest.approx(metrics["accuracy"])
    assert all(g >= p - 1e-7 for g, p in zip(conf.predicted_probabilities, conf.probabilities))


class _Spans(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.spans, self._open = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and attrs.get("class") == "tok":
            self._open = [attrs["style"].removeprefix("background:"), ""]

    def handle_data(self, data):
        if self._open is not None:
            self._open[1] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.spans.append(tuple(self._open))
            self._open = None


def test_html_has_every_token_in_order_with_its_colour(dense_model, lm_tokenizer, tmp_path):
    conf = token_confidences(dense_model, lm_tokenizer, TEXT)
    page = render_html(conf, path=tmp_path / "conf.html", title="tiny <model>")
    assert (tmp_path / "conf.html").read_text(encoding="utf-8") == page
    assert page.startswith("<!DOCTYPE html>") and "<title>tiny &lt;model&gt;</title>" in page
    parser = _Spans()
    parser.feed(page)
    assert "".join(text for _, text in parser.spans) == TEXT  # escaped on the way in, the same text on the way out
    assert [colour for colour, _ in parser.spans] == [confidence_colour(p) for p in conf.probabilities]


def test_png(dense_model, lm_tokenizer, tmp_path):
    conf = token_confidences(dense_model, lm_tokenizer, TEXT)
    plot_confidence(conf, path=tmp_path / "conf.png", line_width=30)
    image = read_png(tmp_path / "conf.png")
    assert image.shape[0] > 100  # wrapped onto several lines


def test_text_longer_than_the_context_is_refused(dense_model, lm_tokenizer):
    with pytest.raises(ValueError, match="Shorten the text"):
        token_confidences(dense_model, lm_tokenizer, TEXT * 100)
