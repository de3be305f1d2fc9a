"""Run every benchmark (`benchmarks/bench_*.py`, each with `main(write_readme: bool)`), one after another.

    python benchmarks/run.py [--write-readme] [--only model serve ...]
"""

import argparse
import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-readme", action="store_true", help="write the result tables into README.md")
    parser.add_argument("--only", nargs="*", help="names of benchmarks to run (bench_NAME.py)")
    args = parser.parse_args()
    names = sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))
    for name in args.only or names:
        if name not in names:
            raise SystemExit(f"No benchmark {name!r}; available: {', '.join(names)}")
        print(f"==> benchmark {name}", flush=True)
        importlib.import_module(f"bench_{name}").main(write_readme=args.write_readme)


if __name__ == "__main__":
    main()
