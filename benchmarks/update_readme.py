"""Rerun the benchmarks and rewrite the README's speed tables between their markers.

    python benchmarks/update_readme.py            # every benchmark, README.md rewritten in place
    python benchmarks/update_readme.py --dry-run  # print the new section only

Each benchmark script prints a Markdown table with ``--markdown``; this script runs them one
after the other (never in parallel, so they do not share the CPU), adds a line describing the
machine and replaces the text between ``<!-- benchmarks:start -->`` and ``<!-- benchmarks:end -->``.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"

# (script, extra arguments): the reference sizes of the issues and the DESIGN notes
RUNS = [
    ("bench_gmm.py", ["--dtype", "float64"]),
    ("bench_gmm.py", ["--dtype", "float32"]),
    ("bench_hmm.py", []),
    ("bench_gmm_batch.py", []),
    ("bench_engine_gmm.py", []),
    ("bench_autograd_mstep.py", []),
]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def run(script: str, extra: list) -> str:
    cmd = [sys.executable, str(HERE / script), "--markdown", *extra]
    print("+", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{script} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the section, leave README.md alone")
    ap.add_argument("--only", nargs="*", help="run only these scripts (e.g. bench_hmm.py)")
    args = ap.parse_args()
    runs = [r for r in RUNS if not args.only or r[0] in args.only]
    blocks = [f"Measured on {machine()}; regenerate with `python benchmarks/update_readme.py`."]
    blocks += [run(script, extra) for script, extra in runs]
    section = "\n\n".join(blocks)
    if args.dry_run:
        print(section)
        return
    text = README.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {START} ... {END} section")
    README.write_text(pattern.sub(lambda _: f"{START}\n{section}\n{END}", text))
    print(f"rewrote the benchmark section of {README}", file=sys.stderr)


if __name__ == "__main__":
    main()
