"""Run the README's main job (`harmonica-compile demo`) and record its summary and wall time.

python benchmarks/run_demo.py [--out demo-out]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

from harmonica_compile.cli import main


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-out")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    code = main(["demo", "--out", args.out, "--quiet"])
    wall = time.perf_counter() - t0
    if code:
        raise SystemExit(code)
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    write_result(
        "demo", {**summary, "wall_seconds": round(wall, 1), "command": "harmonica-compile demo --out demo-out"}
    )


if __name__ == "__main__":
    run()
