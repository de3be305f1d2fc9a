"""`openllm export`: a trained model to ONNX (onnxruntime), GGUF (llama.cpp) or a Llama/Mixtral checkpoint.

    openllm export onnx MODEL OUT [--quantize int8]     # needs the compat environment: make install-compat
    openllm export gguf MODEL OUT.gguf [--dtype f16]
    openllm export llama MODEL OUT                       # dense models, as LlamaForCausalLM
    openllm export mixtral MODEL OUT                     # MoE models, as MixtralForCausalLM
"""

from .convert import convert_checkpoint  # the Llama/Mixtral mapping lives with `openllm convert`
from .gguf import export_gguf
from .onnx import check_onnx_environment, export_onnx, load_onnx_model, quantize_onnx

__all__ = ["export_onnx", "quantize_onnx", "load_onnx_model", "check_onnx_environment", "export_gguf",
           "add_arguments", "run"]


def add_arguments(parser):
    sub = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)

    onnx = sub.add_parser("onnx", help="ONNX decoder with KV cache for onnxruntime / optimum (transformers<4.58)")
    onnx.add_argument("model", help="model folder or Hub id")
    onnx.add_argument("output", help="output folder (model.onnx, config, tokenizer)")
    onnx.add_argument("--quantize", choices=["int8"], help="also write model_quantized.onnx (dynamic int8)")
    onnx.add_argument("--opset", type=int, help="ONNX opset (default: optimum's choice for the model)")
    onnx.add_argument("--no-validate", action="store_true", help="skip comparing ONNX outputs with PyTorch's")
    onnx.add_argument("--trust-remote-code", action="store_true",
                      help="export a checkpoint whose modeling code is not the installed openllm's (runs that code)")

    gguf = sub.add_parser("gguf", help="one GGUF file for llama.cpp (architecture 'llama')")
    gguf.add_argument("model", help="model folder or Hub id")
    gguf.add_argument("output", help="output file, e.g. model.gguf")
    gguf.add_argument("--dtype", choices=["f32", "f16", "q8_0"], default="f16",
                      help="type of the weight matrices (default f16); norms and router stay f32")

    for name, family in (("llama", "LlamaForCausalLM (dense models)"), ("mixtral", "MixtralForCausalLM (MoE)")):
        convert = sub.add_parser(name, help=f"a transformers-native {family} checkpoint")
        convert.add_argument("model", help="model folder or Hub id")
        convert.add_argument("output", help="output folder")


def run(args):
    if args.format == "onnx":
        try:
            out = export_onnx(args.model, args.output, quantize=args.quantize, opset=args.opset,
                              validate=not args.no_validate, trust_remote_code=args.trust_remote_code)
        except RuntimeError as e:  # the wrong environment: say how to get the right one, without a traceback
            if "make install-compat" not in str(e):
                raise
            print(f"error: {e}")
            return 1
        files = ", ".join(sorted(p.name for p in out.glob("*.onnx")))
        print(f"Wrote {files} to {out}. Load with openllm.export.load_onnx_model({str(out)!r}).")
    elif args.format == "gguf":
        out = export_gguf(args.model, args.output, dtype=args.dtype)
        print(f"Wrote {out} ({out.stat().st_size / 2**20:.1f} MiB). Run it with: llama-cli -m {out}")
    else:
        convert_checkpoint(args.model, args.output, to=args.format)
        print(f"Wrote a {args.format} checkpoint to {args.output}.")
    return 0
