"""Small helpers of the visualisation tests (a module name no other test folder uses, for pytest's imports)."""

import torch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    """The decoded image (height, width, channels); fails unless `path` is a valid PNG."""
    import matplotlib.image

    assert open(path, "rb").read(8) == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    return image


def tiny(tokenizer, preset, seed=0):
    import openllm

    torch.manual_seed(seed)
    config = openllm.get_preset_config(preset, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return openllm.OpenLLMForCausalLM(config).eval()
