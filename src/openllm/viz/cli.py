"""`openllm viz`: pictures of what a model does with a text.

    openllm viz attention MODEL --prompt "def add(a, b):" --out attention.png     # every layer × head
    openllm viz experts MODEL --prompt "import json" --out experts.png             # MoE models
    openllm viz confidence MODEL --text "Return the sum." --out confidence.html    # or .png
"""

from pathlib import Path

from ..models.loading import add_loading_arguments, load_causal_lm
from .attention import attention_maps, plot_attention
from .confidence import plot_confidence, render_html, token_confidences
from .experts import expert_routing, plot_expert_routing

SUFFIXES = {"attention": (".png",), "experts": (".png",), "confidence": (".html", ".png")}


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError as error:
        raise ValueError(f"Expected comma-separated integers such as 0,2, got {value!r}.") from error


def add_arguments(parser):
    sub = parser.add_subparsers(dest="picture", required=True, metavar="PICTURE")
    for name, help_text, text_flag in (
        ("attention", "attention weights per layer and head, as heatmaps (PNG)", "--prompt"),
        ("experts", "the experts each token was routed to in every MoE layer, beside each expert's load and "
                    "routing bias (PNG)", "--prompt"),
        ("confidence", "each token coloured by the probability the model gave it (HTML or PNG)", "--text"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("model", help="model folder (save_pretrained + tokenizer) or Hub id")
        p.add_argument(text_flag, dest="text", required=True, help="the text to look at")
        p.add_argument("--out", required=True, help=f"output file ({' or '.join(SUFFIXES[name])})")
        add_loading_arguments(p, dtype=False)  # pictures are drawn from float32 weights
        if name == "attention":
            p.add_argument("--layers", type=str, help="comma-separated layer indices (default: all)")
            p.add_argument("--heads", type=str, help="comma-separated head indices (default: all)")


def run(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in SUFFIXES[args.picture]:
        raise ValueError(f"--out {args.out}: a {args.picture} picture is written as "
                         f"{' or '.join(SUFFIXES[args.picture])}; change the file name.")
    model, tokenizer = load_causal_lm(args.model, device=args.device, dtype="float32", revision=args.revision,
                                      trust_remote_code=args.trust_remote_code)
    if args.picture == "attention":
        maps = attention_maps(model, tokenizer, args.text)
        layers = _int_list(args.layers) if args.layers else None
        heads = _int_list(args.heads) if args.heads else None
        _check_indices(layers, maps.weights.shape[0], "layer")
        _check_indices(heads, maps.weights.shape[1], "head")
        plot_attention(maps, layers=layers, heads=heads, path=out)
    elif args.picture == "experts":
        plot_expert_routing(expert_routing(model, tokenizer, args.text), path=out)
    else:
        conf = token_confidences(model, tokenizer, args.text)
        render_html(conf, path=out) if out.suffix.lower() == ".html" else plot_confidence(conf, path=out)
    print(f"Wrote {out}")
    return 0


def _check_indices(indices, count: int, what: str):
    bad = [i for i in indices or () if not 0 <= i < count]
    if bad:
        raise ValueError(f"No {what} {bad[0]}: the model has {count} {what}s, numbered 0 to {count - 1}.")
