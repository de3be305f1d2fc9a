"""`openllm serve MODEL`: serve a model folder or Hub id over the TGI and OpenAI HTTP protocols.

    openllm serve ./my-model --host 127.0.0.1 --port 8000
    curl -s localhost:8000/generate -H 'Content-Type: application/json' \\
         -d '{"inputs": "Once upon a time", "parameters": {"max_new_tokens": 20, "details": true}}'
"""

import argparse
import ipaddress
import logging
import os

import torch
import uvicorn

from ..evaluation.confidence import check_threshold
from ..models.loading import add_loading_arguments, load_causal_lm
from .api import ServerConfig
from .app import create_app
from .engine import Engine
from .metrics import ServerMetrics


def add_arguments(parser):
    parser.add_argument("model", help="model folder or Hub id (AutoModelForCausalLM + AutoTokenizer)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: loopback only; use 0.0.0.0 to accept remote clients)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--allowed-hosts", nargs="+", default=None, metavar="NAME",
                        help="`Host` header names to accept besides the local ones when bound to loopback (for a "
                             "reverse proxy that passes its own name); elsewhere every name is accepted")
    add_loading_arguments(parser)
    parser.add_argument("--served-model-name", default=None, help="name reported by /info and /v1/models")
    parser.add_argument("--max-batch-size", type=int, default=32, help="requests generated together at most")
    parser.add_argument("--max-queue-size", type=int, default=256,
                        help="requests allowed to wait for a batch slot; more are refused with 429")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="tokens generated when a request does not say (capped by the context window)")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body accepted")
    parser.add_argument("--prefix-cache-mb", type=int, default=256,
                        help="memory for the keys and values of recent prompts, reused by requests that start the "
                             "same way (a system prompt, a chat history); 0 turns prefix caching off")
    parser.add_argument("--speculative-tokens", type=int, default=0, metavar="N",
                        help="prompt-lookup speculative decoding for a lone greedy request: up to N tokens copied "
                             "from where the text's last tokens appeared before, checked in one forward (the text "
                             "is unchanged; it pays where answers repeat their context); 0: off")
    parser.add_argument("--max-prefill-tokens", type=int, default=4096,
                        help="prompt tokens (padding included) prefilled together in one step at most, so that a "
                             "burst of long prompts is admitted over several steps; a longer prompt runs alone")
    parser.add_argument("--pack-weights", action=argparse.BooleanOptionalAction, default=True,
                        help="on the CPU, run float32 linear layers from copies of their weights laid out for "
                             "oneDNN: faster decoding and prefill, for the weights' memory once more")
    parser.add_argument("--api-key", default=os.environ.get("OPENLLM_API_KEY"),
                        help="require `Authorization: Bearer KEY` on every route but /health "
                             "(default: $OPENLLM_API_KEY; none means no authentication)")
    parser.add_argument("--num-threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is often fastest for small models on a "
                             "busy machine)")
    parser.add_argument("--abstain-below", type=float, default=None, metavar="P",
                        help="answer nothing (finish reason `abstain`) when a sequence's confidence, the geometric "
                             "mean of its token probabilities, is below P in [0, 1]; a request's `abstain_below` "
                             "overrides it")
    parser.add_argument("--no-ui", action="store_true", help="do not serve the chat page (/chat, and / for browsers)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def load_model(model_id: str, dtype: str = "auto", device: str = "auto", revision=None, trust_remote_code=False):
    """Model (eval mode, on `device`) and tokenizer of a folder or Hub id, plus a summary for /model-info."""
    model, tokenizer = load_causal_lm(model_id, dtype=dtype, device=device, revision=revision,
                                      trust_remote_code=trust_remote_code)
    config = model.config
    info = {
        "model_type": config.model_type,
        "architecture": type(model).__name__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": str(next(model.parameters()).device),
        "vocab_size": config.vocab_size,
    }
    if getattr(config, "num_experts", 0):
        info["num_experts"], info["num_experts_per_tok"] = config.num_experts, config.num_experts_per_tok
    return model, tokenizer, info


def context_length(model, tokenizer) -> int:
    length = getattr(model.config, "max_position_embeddings", None)
    if length is None:  # tokenizers report a huge sentinel when they do not know
        length = tokenizer.model_max_length if tokenizer.model_max_length < 10**7 else 2048
    return int(length)


def build_app(model, tokenizer, model_name: str, info: dict, *, max_batch_size=32, max_queue_size=256,
              max_new_tokens=256, max_body_bytes=1 << 20, max_prefill_tokens=4096, prefix_cache_mb=256,
              speculative_tokens=0, pack_weights=True, api_key=None, ui=True, abstain_below=None,
              allowed_hosts=None):
    engine = Engine(model, tokenizer, max_batch_size=max_batch_size, max_queue_size=max_queue_size,
                    context_length=context_length(model, tokenizer), max_prefill_tokens=max_prefill_tokens,
                    prefix_cache_bytes=prefix_cache_mb << 20, speculative_tokens=speculative_tokens,
                    pack_weights=pack_weights, metrics=ServerMetrics())
    config = ServerConfig(model_name=model_name, api_key=api_key or None, max_body_bytes=max_body_bytes,
                          default_max_new_tokens=max_new_tokens, model_info=info, ui=ui,
                          abstain_below=abstain_below, allowed_hosts=allowed_hosts)
    return create_app(engine, config)


LOCAL_NAMES = ("localhost", "127.0.0.1", "[::1]")


def allowed_hosts(host: str, extra) -> frozenset | None:
    """The `Host` names a server bound to `host` answers: on loopback the local names (and `extra`), so that a web
    page whose name resolves to 127.0.0.1 (DNS rebinding) cannot read the answers; elsewhere any name."""
    if not _is_loopback(host):
        return None
    return frozenset(name.lower() for name in (*LOCAL_NAMES, host, *(extra or ())))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(args):
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("openllm.serve")
    for name, value in (("--max-batch-size", args.max_batch_size), ("--num-threads", args.num_threads or 1),
                        ("--max-queue-size", args.max_queue_size),
                        ("--max-new-tokens", args.max_new_tokens), ("--max-body-bytes", args.max_body_bytes),
                        ("--max-prefill-tokens", args.max_prefill_tokens)):
        if value < 1:
            raise SystemExit(f"{name} must be at least 1, got {value}.")
    for name, value in (("--prefix-cache-mb", args.prefix_cache_mb),
                        ("--speculative-tokens", args.speculative_tokens)):
        if value < 0:
            raise SystemExit(f"{name} must be 0 (off) or more, got {value}.")
    if args.abstain_below is not None:
        try:
            check_threshold(args.abstain_below)
        except ValueError as e:
            raise SystemExit(f"--abstain-below: {e}") from None
    if not _is_loopback(args.host) and not args.api_key:
        log.warning("Binding %s without --api-key: anyone who can reach this address can use the model.", args.host)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    model, tokenizer, info = load_model(args.model, args.dtype, args.device, args.revision, args.trust_remote_code)
    log.info("Loaded %s (%s, %s parameters, %s on %s)", args.model, info["architecture"],
             f"{info['num_parameters']:,}", info["dtype"], info["device"])
    app = build_app(model, tokenizer, args.served_model_name or args.model, info,
                    max_batch_size=args.max_batch_size, max_queue_size=args.max_queue_size,
                    max_new_tokens=args.max_new_tokens, max_body_bytes=args.max_body_bytes,
                    max_prefill_tokens=args.max_prefill_tokens, prefix_cache_mb=args.prefix_cache_mb,
                    speculative_tokens=args.speculative_tokens, pack_weights=args.pack_weights,
                    api_key=args.api_key, ui=not args.no_ui, abstain_below=args.abstain_below,
                    allowed_hosts=allowed_hosts(args.host, args.allowed_hosts))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
