"""What importing the plain-record modules costs, against importing verl (which loads torch, Ray and the plugin).

    .venv/bin/python bench/bench_imports.py [--repeats 5]

Each import runs in a fresh interpreter (wall time of ``python -c "import M"``, so interpreter start-up is included
and measured alone as ``python -c pass``); the commands are interleaved, median of ``--repeats`` runs each.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

MODULES = ("verl_modality.rewards.choice", "verl_modality.evaluation.report", "verl_modality.data.schema", "verl")


def _wall(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    codes = {"(start-up: pass)": "pass", **{m: f"import {m}" for m in MODULES}}
    times: dict[str, list[float]] = {name: [] for name in codes}
    for _ in range(args.repeats):
        for name, code in codes.items():
            times[name].append(_wall(code))
    verl_s = statistics.median(times["verl"])
    print(f"fresh-interpreter import, median of {args.repeats} (interleaved):")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:34s} {med:7.3f} s   {med / verl_s:6.3f}x import verl")


if __name__ == "__main__":
    main()
