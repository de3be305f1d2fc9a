"""The chat page in a real headless browser (Debian's chromium driven by Playwright) against a real `openllm serve`:
a message typed in the page streams an answer token by token, equal to the model's greedy continuation, each token
coloured by the probability the model gave it; with the calculator on, the page runs the model's calls and sends the
results back; `--no-ui` turns the page off."""

import json
import math
import os
import shutil
from pathlib import Path

import httpx
import openai
import pytest
from server_process import API_KEY, greedy, serve

from openllm.tools import call_tool

CHROMIUM = os.environ.get("OPENLLM_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
SCREENSHOT_DIR = Path(os.environ.get("OPENLLM_SCREENSHOT_DIR", Path(__file__).resolve().parents[2] / "build"))
LEVELS = [(0.9, "c4"), (0.7, "c3"), (0.5, "c2"), (0.3, "c1"), (0.0, "c0")]

# records, for every token span the page adds, when it was added and whether the answer was still streaming
WATCH = """() => {
  window.added = [];
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes)
      if (n.classList && n.classList.contains("tok") && r.target.classList.contains("assistant"))
        window.added.push([performance.now(), r.target.classList.contains("streaming")]);
  }).observe(document.getElementById("messages"), { childList: true, subtree: true });
}"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium not found at {CHROMIUM}: `apt-get install -y chromium` (make install-browser)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def test_chat_page_streams_coloured_tokens(server, browser):
    tokenizer = server["tokenizer"]
    system, question, n = "be brief", "hello world", 24
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    prompt_ids = prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids
    expected_ids = greedy(server, prompt_ids, n)
    expected = tokenizer.decode(expected_ids, skip_special_tokens=True)
    reference = openai.OpenAI(base_url=server["url"] + "/v1", api_key=API_KEY).chat.completions.create(
        model="tiny", messages=messages, max_tokens=n, temperature=0, logprobs=True)
    confidences = [round(math.exp(e.logprob), 4) for e in reference.choices[0].logprobs.content if e.token]

    page = browser.new_page(viewport={"width": 1200, "height": 760})
    page.goto(server["url"] + "/chat")
    assert "API key" in page.text_content("#notice")  # the server wants a key, and the page says where it goes
    page.fill("#api-key", API_KEY)
    page.press("#api-key", "Tab")  # `change`: the page stores the key and reloads the model's description
    page.wait_for_function("document.getElementById('model-meta').textContent.includes('context 256')")
    page.fill("#system", system)
    page.fill("#temperature", "0")
    page.fill("#max_tokens", str(n))
    page.evaluate(WATCH)
    # the tiny model writes 24 tokens in a few milliseconds, and a fast loopback may hand the browser the whole
    # stream in one read; DevTools' network throttling delivers it over about a second, so incremental rendering
    # shows whatever the machine's speed
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": 8000,
                                                  "uploadThroughput": -1})
    page.fill("#input", question)
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant .stats", timeout=60_000)

    answer = page.locator(".msg.assistant")
    assert page.text_content(".msg.user") == question
    assert answer.evaluate("e => e.firstChild ? [...e.childNodes].slice(0, -1).map(n => n.textContent).join('') "
                           ": ''") == expected
    stats = page.text_content(".msg.assistant .stats")
    assert stats.startswith(f"{n} tokens") or stats.startswith(f"{len(expected_ids)} tokens")

    # streamed: the tokens arrived over time, while the answer was still open
    added = page.evaluate("window.added")
    assert len(added) == len(confidences) and all(streaming for _, streaming in added)
    assert len({round(t) for t, _ in added}) >= 4

    # coloured: each span carries the probability the API reports, in the legend's colour for its level
    spans = page.eval_on_selector_all(".msg.assistant .tok", "els => els.map(e => [Number(e.dataset.p), "
                                      "e.className, getComputedStyle(e).backgroundColor])")
    legend = dict(page.eval_on_selector_all("#legend .tok", "els => els.map(e => [e.className.split(' ')[1], "
                                                            "getComputedStyle(e).backgroundColor])"))
    assert [p for p, _, _ in spans] == pytest.approx(confidences, abs=1e-4)
    for p, classes, colour in spans:
        level = next(name for bound, name in LEVELS if p >= bound)
        assert classes == f"tok {level}" and colour == legend[level]
    assert len({colour for _, _, colour in spans}) >= 3  # this model is sure of some tokens and unsure of others
    assert len(set(legend.values())) == 5

    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / "chat-page.png"))
    page.close()


def test_root_serves_the_page_to_browsers_only(server):
    html = httpx.get(server["url"] + "/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert html.status_code == 200 and "<title>OpenLLM · tiny</title>" in html.text  # no API key needed for the page
    api = httpx.get(server["url"] + "/", headers={"Authorization": f"Bearer {API_KEY}"})
    assert api.status_code == 404 and "POST /" in api.json()["error"]


def test_no_ui_turns_the_page_off(tiny_serve_dir):
    folder, _, _ = tiny_serve_dir
    with serve(folder, "--no-ui", api_key="") as url:
        assert httpx.get(url + "/chat").status_code == 404
        root = httpx.get(url + "/", headers={"Accept": "text/html"})
        assert root.status_code == 404 and "/chat" not in root.json()["error"]
        assert httpx.post(url + "/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}}).status_code \
            == 200


def test_chat_page_talks_to_a_model_without_chat_template(tmp_path, browser):
    # a base model: the page sends the conversation as plain text to /v1/completions, stopping at the next turn
    from tiny_model import make_tiny_model

    model, tokenizer = make_tiny_model(tmp_path, initializer_range=0.5, chat_template=False)
    prompt = "be brief\n\nUser: hello world\nAssistant:"
    expected_ids = greedy({"model": model}, tokenizer(prompt)["input_ids"], 12)
    expected = tokenizer.decode(expected_ids, skip_special_tokens=True).split("\nUser:")[0]
    with serve(tmp_path, api_key="") as url:
        page = browser.new_page()
        page.goto(url + "/chat")
        page.wait_for_function("document.getElementById('model-meta').textContent.includes('no chat template')")
        page.fill("#system", "be brief")
        page.fill("#temperature", "0")
        page.fill("#max_tokens", "12")
        page.fill("#input", "hello world")
        page.click("#send")
        page.wait_for_selector(".msg.assistant .stats", timeout=60_000)
        text = page.locator(".msg.assistant").evaluate("e => [...e.childNodes].slice(0, -1).map(n => n.textContent)"
                                                       ".join('')")
        probabilities = page.eval_on_selector_all(".msg.assistant .tok", "els => els.map(e => Number(e.dataset.p))")
        page.close()
    assert text == expected and probabilities and all(0 < p <= 1 for p in probabilities)


def test_chat_page_shows_an_abstention(tiny_serve_dir, browser):
    # a server that withholds every answer below confidence 1: the page shows why, not an empty bubble
    folder, _, _ = tiny_serve_dir
    with serve(folder, "--abstain-below", "1", api_key="") as url:
        page = browser.new_page()
        page.goto(url + "/chat")
        page.wait_for_function("document.getElementById('model-meta').textContent.includes('context 256')")
        page.fill("#temperature", "0")
        page.fill("#max_tokens", "8")
        page.fill("#input", "hello world")
        page.click("#send")
        page.wait_for_selector(".msg.assistant .stats", timeout=60_000)
        answer = page.locator(".msg.assistant")
        text = answer.evaluate("e => [...e.childNodes].slice(0, -1).map(n => n.textContent).join('')")
        classes, stats = answer.get_attribute("class"), page.text_content(".msg.assistant .stats")
        tokens = page.eval_on_selector_all(".msg.assistant .tok", "els => els.length")
        page.close()
    assert text.startswith("Abstained: the model's confidence in its answer (0.") and text.endswith(
        "is below the threshold 1.0.")
    assert "refused" in classes and stats.endswith("· abstain") and tokens == 0


def calculator_turn(page, url: str) -> list[dict]:
    """Ask a question from a page on `url` with the calculator on and a call required; the bodies of the chat
    requests the page made, once it is done. Sampling as the page does by default, seeded: this random model then
    writes an expression the calculator evaluates (any call would do; a readable one makes a better screenshot)."""
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    page.add_init_script(f"localStorage.setItem('openllm-api-key', {json.dumps(API_KEY)})")
    page.goto(url + "/chat")
    page.wait_for_function("document.getElementById('model-meta').textContent.includes('context 256')")
    page.check("#calculator")
    page.select_option("#tool_choice", "required")
    page.fill("#seed", "24")
    page.fill("#max_tokens", "32")
    page.fill("#input", "What is 12 * 7? Use the calculator.")
    page.press("#input", "Enter")
    page.wait_for_function("document.querySelectorAll('.msg.assistant .stats').length === 2 && "
                           "!document.getElementById('send').disabled", timeout=60_000)
    return bodies


def answer_text(page, index: int) -> str:
    return page.locator(".msg.assistant").nth(index).evaluate(
        "e => [...e.childNodes].slice(0, -1).map(n => n.textContent).join('')")


def test_chat_page_runs_the_calculator(tool_server, browser):
    # the model must call the calculator; the page shows the call and its result, and asks again with the result
    errors = []
    page = browser.new_page(viewport={"width": 1200, "height": 760})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    first, second = calculator_turn(page, tool_server)

    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert first["tools"] == httpx.get(tool_server + "/v1/tools", headers=auth).json()["data"]
    assert first["tool_choice"] == "required" and first["parallel_tool_calls"] is False
    # the second request carries the call and its result, and lets the model answer as it likes
    call, result = second["messages"][-2:]
    (tool_call,) = call["tool_calls"]
    arguments = tool_call["function"]["arguments"]
    assert call["role"] == "assistant" and tool_call["function"]["name"] == "calculator"
    assert result == {"role": "tool", "tool_call_id": tool_call["id"], "content": call_tool("calculator", arguments)}
    assert second["tool_choice"] == "auto" and "parallel_tool_calls" not in second

    # in the conversation: the question, an answer that is a call, the call and its result, then the final answer
    kinds = page.eval_on_selector_all("#messages > *", "els => els.map(e => e.className)")
    tool_line = "msg tool failed" if result["content"].startswith("error:") else "msg tool"
    assert kinds == ["msg user", "msg assistant", tool_line, "msg assistant"]
    assert page.text_content(".msg.assistant .stats").endswith("· tool_calls")
    shown = f"calculator({json.loads(arguments)['expression']})"
    assert page.text_content(".msg.tool .call") == shown
    assert page.text_content(".msg.tool .result") == result["content"]
    final = httpx.post(tool_server + "/v1/chat/completions", headers=auth, json={**second, "stream": False},
                       timeout=60).json()["choices"][0]
    assert final["finish_reason"] != "tool_calls" and answer_text(page, 1) == final["message"]["content"]
    assert errors == []
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / "chat-page-tools.png"))
    page.close()


def test_chat_page_shows_tool_results_as_text(tool_server, browser):
    # whatever a tool returns is text in the page (and is sent back as it is), never markup
    hostile = '<img src=x onerror="window.injected = 1"><b>84</b>'
    page = browser.new_page()
    page.route("**/v1/tools/calculator", lambda route: route.fulfill(json={"content": hostile}))
    _, second = calculator_turn(page, tool_server)
    assert page.text_content(".msg.tool .result") == hostile and second["messages"][-1]["content"] == hostile
    assert page.eval_on_selector_all("#messages img, #messages b", "els => els.length") == 0
    assert page.evaluate("window.injected") is None
    page.close()
