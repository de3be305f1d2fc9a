"""`openllm serve` in a process of its own, for programs that need a running server: the chain's request to the
final model, and the tests that talk to a real server."""

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple


class ServerDidNotStart(RuntimeError):
    pass


class Server(NamedTuple):
    url: str  # http://127.0.0.1:PORT
    pid: int  # the server process, for its CPU time or signals


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(folder, *args: str, env: dict | None = None, log_path=None, timeout_s: float = 180.0):
    """Run `python -m openllm serve FOLDER --port <free port> ARGS...` until the block ends; yields a `Server` (base
    URL, process id) once `/health` answers 200. Its output goes to `log_path` when given (else to this process's).
    Raises `ServerDidNotStart`, with the log, when the process exits or `timeout_s` passes first."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(log_path, "w")) if log_path else None
        process = subprocess.Popen([sys.executable, "-m", "openllm", "serve", str(folder), "--port", str(port), *args],
                                   env=env, stdout=log, stderr=subprocess.STDOUT if log else None)
        try:
            _wait_until_healthy(process, url, timeout_s, log_path)
            yield Server(url, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_until_healthy(process, url: str, timeout_s: float, log_path) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        problem = f"exited with {process.returncode}" if process.poll() is not None else None
        if problem is None:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    return
            except OSError as error:  # not listening yet, or not healthy yet (HTTPError is an OSError)
                if time.monotonic() > deadline:
                    problem = f"did not answer on {url}/health within {timeout_s:.0f} s ({error})"
        if problem is not None:
            log = f":\n{Path(log_path).read_text()}" if log_path else ""
            raise ServerDidNotStart(f"`openllm serve` {problem}{log}")
        time.sleep(0.25)
