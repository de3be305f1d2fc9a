"""Generate text from any causal LM, streaming tokens to the terminal as they are produced.

    openllm generate MODEL --prompt "Once upon a time" --max-new-tokens 64 --temperature 0.8 --seed 0
    openllm generate MODEL --chat --prompt "What is a tokenizer?"     # through the tokenizer's chat template
    echo "Once upon a time" | openllm generate MODEL --greedy --no-stream
"""

import sys
from pathlib import Path

from ..hub.paths import check_model_path

DTYPES = ("auto", "float32", "bfloat16", "float16")


def load_causal_lm(model_name_or_path: str, device: str | None = None, dtype: str = "auto"):
    """(model, tokenizer) from a local folder or a Hub id, in eval mode; custom code is trusted (OpenLLM folders
    carry their modeling file)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_path(model_name_or_path)
    path = Path(model_name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=True)
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=torch_dtype, trust_remote_code=True)
    except OSError as error:
        where = "the folder" if path.is_dir() else "the Hub (it is not a local folder either)"
        raise OSError(f"Could not load a causal LM and its tokenizer {model_name_or_path!r} from {where}: "
                      f"{error}") from error
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def build_prompt(tokenizer, prompt: str, chat: bool = False, system: str | None = None) -> str:
    """The text fed to the model: the prompt itself, or the prompt as a user turn through the chat template."""
    if not chat:
        if system:
            raise ValueError("--system needs --chat: a system message only exists inside a chat template.")
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("This tokenizer has no chat template, so --chat cannot format the prompt. Use a post-trained "
                         "(SFT) model, whose tokenizer carries one, or drop --chat to continue raw text.")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate(
    model,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = 0.95,
    repetition_penalty: float = 1.0,
    greedy: bool = False,
    seed: int | None = None,
    chat: bool = False,
    system: str | None = None,
    streamer=None,
) -> str:
    """Complete `prompt` and return only the new text. `greedy` decodes deterministically; otherwise tokens are
    sampled (temperature, top-k, top-p), reproducibly when `seed` is given. `streamer` is e.g. a `TextStreamer`."""
    import torch
    from transformers import set_seed

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}; use --greedy for argmax "
                         "decoding.")
    text = build_prompt(tokenizer, prompt, chat=chat, system=system)
    # a chat template already writes the special tokens it wants
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not chat).to(model.device)
    inputs.pop("token_type_ids", None)
    if inputs["input_ids"].shape[1] == 0:
        raise ValueError("The prompt is empty after tokenization; give at least one character of text.")
    sampling = {} if greedy else {"temperature": temperature, "top_k": top_k or 0, "top_p": top_p or 1.0}
    if seed is not None:
        set_seed(seed)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=not greedy,
                                repetition_penalty=repetition_penalty, pad_token_id=pad_token_id,
                                streamer=streamer, **sampling)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def add_arguments(parser):
    parser.add_argument("model", help="model folder (save_pretrained + tokenizer) or Hub id")
    parser.add_argument("--prompt", help="text to continue; read from stdin when omitted")
    parser.add_argument("--chat", action="store_true", help="send the prompt as a user turn through the chat template")
    parser.add_argument("--system", help="system message (with --chat)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=50, help="0 disables top-k filtering")
    parser.add_argument("--top-p", type=float, default=0.95, help="1.0 disables nucleus filtering")
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, help="makes sampling reproducible")
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (ignores temperature/top-k/top-p)")
    parser.add_argument("--no-stream", action="store_true", help="print the completion once it is finished")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps... (default: cuda when available)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto")


def run(args) -> int:
    from transformers import TextStreamer

    prompt = args.prompt if args.prompt is not None else sys.stdin.read().rstrip("\n")
    try:
        model, tokenizer = load_causal_lm(args.model, device=args.device, dtype=args.dtype)
        streamer = None if args.no_stream else TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        if streamer is not None and not args.chat:
            print(prompt, end="", flush=True)
        completion = generate(model, tokenizer, prompt, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              repetition_penalty=args.repetition_penalty, greedy=args.greedy, seed=args.seed,
                              chat=args.chat, system=args.system, streamer=streamer)
    except (OSError, ValueError) as error:
        print(f"openllm generate: error: {error}", file=sys.stderr)
        return 2
    if streamer is None:
        print(completion if args.chat else prompt + completion)
    return 0
