"""How far a learned schedule's final error moves with the training seed and the thread count, and
how long the whole command takes.

Runs ``harmonica-compile optimize`` itself (the command a user runs, as a subprocess) for every
training seed and thread count, on tiny-dit-digits, and reads each folder's ``report.json``: the
final-image MSE on the 256 evaluation seeds (seed 1_000_000_007, never used in training or search),
the calibration error where a search ran, and the command's wall time. The spread of a row is
``(max - min) / min`` of the final MSE over its runs. Runs with ``--jobs 2`` share the machine (one
thread each): their errors count, their times are marked concurrent and left out of the timing.
Every finished run is written to results/spread.json at once (and the rows to .md), so a killed
benchmark keeps its runs: run the same command again and it does only the runs missing
(``--fresh`` runs them all again).

    python benchmarks/spread.py --cur 0.5 0.65 --refine search --forecast auto
    python benchmarks/spread.py --cur 0.5 --seeds 0 1 2 --threads 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result


def run_one(args: argparse.Namespace, cur: float, seed: int, threads: int, concurrent: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [
            sys.executable,
            "-m",
            "harmonica_compile",
            "optimize",
            "--model",
            "tiny-dit-digits",
            "--steps",
            str(args.steps),
            "--method",
            args.method,
            "--target-cur",
            str(cur),
            "--seed",
            str(seed),
            "--threads",
            str(threads),
            "--quiet",
            "--out",
            str(out),
        ]
        if args.refine != "none":
            cmd += ["--refine", args.refine]
        if args.forecast != "none":
            cmd += ["--forecast", args.forecast]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        report = json.loads((out / "report.json").read_text())
    return {
        "cur_target": cur,
        "seed": seed,
        "threads": threads,
        "concurrent": concurrent,
        "cur": report["cur"],
        "final_mse": report["final_mse"],
        "psnr_db": report["psnr_db"],
        "frechet": report.get("frechet"),
        "calibration_mse": report.get("calibration_mse"),
        "start": report.get("start"),
        "train_seconds": report.get("train_seconds"),
        "wall_seconds": round(wall, 1),
    }


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["label"], r["steps"], r["cur_target"], r["seed"], r["threads"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--method", default="harmonica")
    parser.add_argument("--refine", default="search", choices=("none", "search"))
    parser.add_argument("--forecast", default="auto")
    parser.add_argument("--cur", type=float, nargs="+", default=[0.5, 0.65])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="concurrent one-thread runs (default 1)")
    parser.add_argument("--fresh", action="store_true", help="run again the runs spread.json already holds")
    args = parser.parse_args(argv)
    label = (
        args.method
        + ("+search" if args.refine == "search" else "")
        + (f" forecast {args.forecast}" if args.forecast != "none" else "")
    )
    command = "python benchmarks/spread.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = RESULTS / "spread.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    runs: list[dict[str, Any]] = list(previous.get("runs", []))
    commands = [c for c in previous.get("commands", []) if c != command] + [command]
    if args.fresh:
        runs = [r for r in runs if (r["label"], r["steps"]) != (label, args.steps)]
    done = {_key(r) for r in runs}

    def record(run: dict[str, Any]) -> None:
        # Every finished run is written at once: a killed benchmark keeps its runs and resumes.
        run.update(label=label, steps=args.steps)
        runs.append(run)
        print(json.dumps(run), flush=True)
        save(runs, commands)

    for cur in args.cur:
        todo = [(cur, s, t) for t in args.threads for s in args.seeds if (label, args.steps, cur, s, t) not in done]
        single = [job for job in todo if job[2] == 1] if args.jobs > 1 else []
        alone = [job for job in todo if job not in single]
        if single:
            with ThreadPoolExecutor(args.jobs) as pool:
                for future in [pool.submit(run_one, args, *job, True) for job in single]:
                    record(future.result())
        for job in alone:
            record(run_one(args, *job, False))
    print(to_markdown(save(runs, commands)))


def save(runs: list[dict[str, Any]], commands: list[str]) -> list[dict[str, Any]]:
    """Rows per (pipeline, steps, CUR) from every recorded run; writes spread.json and .md."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["label"], r["steps"], r["cur_target"]), []).append(r)
    rows = []
    for (label, steps, cur), mine in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        errors = [r["final_mse"] for r in mine]
        alone = [r["wall_seconds"] for r in mine if not r["concurrent"]]
        rows.append(
            {
                "label": label,
                "steps": steps,
                "cur": cur,
                "runs": len(mine),
                "seeds": sorted({r["seed"] for r in mine}),
                "threads": sorted({r["threads"] for r in mine}),
                "min_mse": min(errors),
                "max_mse": max(errors),
                "spread": max(errors) / min(errors) - 1,
                "wall_seconds_max": max(alone) if alone else None,
                "wall_seconds_threads2": max(
                    (r["wall_seconds"] for r in mine if r["threads"] == 2 and not r["concurrent"]), default=None
                ),
            }
        )
    write_result(
        "spread", {"rows": rows, "runs": runs, "commands": commands, "command": commands[-1]},
        markdown=to_markdown(rows),
    )  # fmt: skip
    return rows


def _ints(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| steps | pipeline | CUR | runs | seeds | threads | final MSE min | max | spread | "
        "slowest run alone, s | slowest 2-thread run alone, s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['steps']} | {r['label']} | {r['cur']:.2f} | {r['runs']} | {_ints(r['seeds'])} | "
            f"{_ints(r['threads'])} | {r['min_mse']:.2e} | {r['max_mse']:.2e} | "
            f"{r['spread']:.0%} | {_fmt(r['wall_seconds_max'], '.0f')} | {_fmt(r['wall_seconds_threads2'], '.0f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
