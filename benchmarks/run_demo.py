"""Run the README's main job (`harmonica-compile demo`) and record its summary and wall time.

    python benchmarks/run_demo.py [--out demo-out]            # writes results/demo.json
    python benchmarks/run_demo.py --busy 1 --out demo-busy    # with one other CPU-bound process
                                                              # running all along: results/demo_busy.json

The busy run is the "shared machine" case: the thread default must see the busy core and the
demo must stay within 2x of the idle run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

from harmonica_compile.cli import main


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-out")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes to run alongside")
    args = parser.parse_args(argv)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        if hogs:
            time.sleep(70)  # let the 1-minute load average see them, as it would on a shared machine
        t0 = time.perf_counter()
        code = main(["demo", "--out", args.out, "--quiet"])
        wall = time.perf_counter() - t0
    finally:
        for hog in hogs:
            hog.kill()
    if code:
        raise SystemExit(code)
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    command = "harmonica-compile demo --out demo-out"
    write_result(
        "demo_busy" if args.busy else "demo",
        {**summary, "wall_seconds": round(wall, 1), "command": command, "busy_processes": args.busy},
    )


if __name__ == "__main__":
    run()
