import pytest
import torch
from server_process import serve
from tiny_model import make_tiny_model


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # tiny matmuls gain nothing from a second thread, and on a busy machine waiting threads make them 100x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_serve_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-serve")
    # weights peaked enough that the probabilities of its greedy tokens spread over the chat page's colour levels
    model, tokenizer = make_tiny_model(folder, initializer_range=0.5)
    return folder, model, tokenizer


@pytest.fixture(scope="session")
def server(tiny_serve_dir):
    """One `openllm serve` process (API key required) shared by every HTTP test: batch 8, queue 4, body 8 KiB."""
    folder, model, tokenizer = tiny_serve_dir
    with serve(folder, "--max-batch-size", "8", "--max-queue-size", "4", "--max-body-bytes", "8192",
               "--served-model-name", "tiny") as url:
        yield {"url": url, "model": model, "tokenizer": tokenizer, "folder": folder}


# a corpus for a tokenizer that knows the calls' words; the model itself stays random
TOOL_CORPUS = ["What is 12 * 7? Use the calculator.", '{"name": "calculator", "arguments": {"expression": "12*7"}}',
               "The answer is 84.", "hello world, the quick brown fox"] * 50


@pytest.fixture(scope="session")
def tool_server(tmp_path_factory):
    """A random `tiny` model with OpenLLM's tokenizer, whose chat template offers tools (API key required); yields
    the base URL."""
    from helpers.tiny_lm import save_tiny_model

    from openllm.data.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("tools")
    save_tiny_model(folder, train_tokenizer(TOOL_CORPUS, vocab_size=400, show_progress=False))
    with serve(folder) as url:
        yield url


@pytest.fixture(autouse=True)
def _local_server_is_not_the_hub(monkeypatch):
    # the suite runs with HF_HUB_OFFLINE=1, which makes InferenceClient refuse every URL, loopback included
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
