"""The probability a causal LM gave each token of a text, rendered as coloured HTML or a PNG.

    conf = token_confidences(model, tokenizer, "Return the sum of a and b.")
    conf.probabilities        # P(token i | tokens before it), one per token of the text
    render_html(conf, path="confidence.html")
    plot_confidence(conf, path="confidence.png")

Colours run from red (the model found the token unlikely) through yellow to green (it expected it); the hue grows
monotonically with the probability.
"""

from __future__ import annotations

import colorsys
import html
from dataclasses import dataclass

import torch
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.patches import Rectangle

from .. import atomic
from .figures import pyplot, save_png
from .tokens import encode_with_pieces


@dataclass
class TokenConfidence:
    tokens: list[str]  # the text piece of each token; they concatenate to the text
    token_ids: list[int]
    probabilities: list[float]  # the model's probability of each actual token, given the ones before it
    predicted_ids: list[int]  # the model's top-1 guess at each position
    predicted: list[str]  # the same guesses as text
    predicted_probabilities: list[float]  # the probability of that guess (the model's confidence)


def token_confidences(model, tokenizer, text: str, max_tokens: int | None = None) -> TokenConfidence:
    """Score every token of `text`: the first one is predicted from a BOS token (EOS if there is none), as in
    `openllm.evaluation.perplexity.evaluate_model`, so each token gets a probability."""
    ids, pieces = encode_with_pieces(tokenizer, text, prefix_token=True)
    context = getattr(model.config, "max_position_embeddings", None) or len(ids)
    limit = min(context, max_tokens + 1) if max_tokens else context
    if len(ids) > limit:
        raise ValueError(f"The text has {len(ids) - 1} tokens; at most {limit - 1} fit"
                         + (" the model's context." if limit == context else " (max_tokens).")
                         + " Shorten the text.")
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits[0, :-1]
    probs = torch.softmax(logits.float(), dim=-1).cpu()
    targets = torch.tensor(ids[1:])
    top_p, top_i = probs.max(dim=-1)
    return TokenConfidence(tokens=pieces[1:], token_ids=ids[1:],
                           probabilities=probs.gather(-1, targets[:, None]).squeeze(-1).tolist(),
                           predicted_ids=top_i.tolist(), predicted=[tokenizer.decode([i]) for i in top_i.tolist()],
                           predicted_probabilities=top_p.tolist())


def confidence_colour(probability: float) -> str:
    """Background colour for a token the model gave `probability`: hue 0° (red) at 0 to 120° (green) at 1, light
    enough for black text; '#rrggbb'."""
    p = min(max(float(probability), 0.0), 1.0)
    r, g, b = colorsys.hls_to_rgb(p / 3, 0.78, 0.85)
    return "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in (r, g, b)))


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; }}
.text {{ font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; }}
.tok {{ border-radius: 3px; padding: 1px 0; }}
.legend span {{ display: inline-block; padding: 2px 8px; font-family: ui-monospace, monospace; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="legend">probability of each token given the ones before it: {legend}</p>
<div class="text">{body}</div>
<p>mean probability {mean:.3f} over {count} tokens; hover a token for its probability and the model's top guess.</p>
</body>
</html>
"""


def render_html(conf: TokenConfidence, path=None, title: str = "Token confidence") -> str:
    """A standalone HTML page: each token of the text on a background coloured by its probability, with the
    probability and the model's top-1 guess in its tooltip. With `path`, also writes it there."""
    spans = []
    for piece, p, guess, guess_p in zip(conf.tokens, conf.probabilities, conf.predicted, conf.predicted_probabilities):
        tip = f"p = {p:.3f} · top guess {guess!r} ({guess_p:.3f})"
        spans.append(f'<span class="tok" style="background:{confidence_colour(p)}" '
                     f'title="{html.escape(tip)}">{html.escape(piece)}</span>')
    legend = "".join(f'<span style="background:{confidence_colour(p)}">{p:.1f}</span>'
                     for p in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0))
    page = _PAGE.format(title=html.escape(title), legend=legend, body="".join(spans), count=len(conf.tokens),
                        mean=sum(conf.probabilities) / max(1, len(conf.probabilities)))
    if path is not None:
        atomic.write_text(path, page)
    return page


def plot_confidence(conf: TokenConfidence, path=None, line_width: int = 72, title: str = "Token confidence"):
    """The text laid out in a monospace font, each token on a box coloured by its probability (newlines shown as ↵
    and kept as line breaks). Returns the figure; with `path`, also saves it as a PNG."""
    plt = pyplot()
    boxes, row, col = [], 0, 0.0  # (row, column, width in characters, shown text, probability)
    for piece, p in zip(conf.tokens, conf.probabilities):
        # spaces stay spaces (the box shows them), a newline is drawn as ↵ and breaks the line; a token that only
        # continues the previous one's character (a byte of an emoji) gets a thin box of its own
        shown = piece.replace("\n", "").replace("\t", "⇥") + ("↵" if "\n" in piece else "")
        width = len(shown) if shown else 0.35
        if col + width > line_width and col > 0:
            row, col = row + 1, 0.0
        boxes.append((row, col, width, shown, p))
        col += width
        if "\n" in piece:
            row, col = row + 1, 0.0
    rows = row + 1
    char_w, line_h, font = 0.1, 0.26, 12  # inches; DejaVu Sans Mono advances 0.6 em = 0.1 in at 12 pt
    fig = plt.figure(figsize=(line_width * char_w + 0.4, rows * line_h + 1.1))
    ax = fig.add_axes((0.2 / (line_width * char_w + 0.4), 0.75 / (rows * line_h + 1.1),
                       line_width * char_w / (line_width * char_w + 0.4), rows * line_h / (rows * line_h + 1.1)))
    ax.set_xlim(0, line_width)
    ax.set_ylim(rows, 0)
    ax.axis("off")
    for r, c, w, shown, p in boxes:
        ax.add_patch(Rectangle((c, r + 0.08), w, 0.84, facecolor=confidence_colour(p), edgecolor="white", lw=0.6))
        ax.text(c + w / 2, r + 0.5, shown, ha="center", va="center", family="DejaVu Sans Mono", fontsize=font)
    ax.set_title(f"{title} (mean probability {sum(conf.probabilities) / max(1, len(conf.probabilities)):.3f})",
                 fontsize=11, loc="left")
    legend = fig.add_axes((0.25, 0.25 / (rows * line_h + 1.1), 0.5, 0.12 / (rows * line_h + 1.1)))
    cmap = LinearSegmentedColormap.from_list("confidence", [confidence_colour(i / 20) for i in range(21)])
    fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1)), cax=legend, orientation="horizontal",
                 label="probability of the token given the text before it")
    if path is not None:
        save_png(fig, path)
    return fig
