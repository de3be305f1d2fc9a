"""Write a benchmark's markdown between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->` in README.md."""

import os
import platform
import re
from datetime import date
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def machine_description() -> str:
    """CPU model, core count and today's date, for the line above each table."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {date.today().isoformat()}"


def write_section(name: str, markdown: str, readme: Path = README) -> None:
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = readme.read_text()
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        marker = "<!-- section:benchmarks -->"
        text = text.replace(marker, f"{marker}\n\n{block}", 1) if marker in text else text + f"\n{block}\n"
    readme.write_text(text)
