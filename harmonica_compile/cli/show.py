"""``harmonica-compile show``: a model's cache sites, the pass pipeline, a schedule as text."""

from __future__ import annotations

import argparse
from typing import Any

from .common import DEFAULT_MODEL, print_json


def register(sub: Any) -> None:
    p = sub.add_parser("show", help="print a model's cache sites, the pass pipeline, or a schedule")
    p.add_argument("--model", default=None)
    p.add_argument("--passes", action="store_true", help="print the pass pipeline")
    p.add_argument("--schedule", default=None, help="a schedule.json or its folder, printed as a text picture")
    p.add_argument("--graph", action="store_true", help="print the captured graph")
    p.add_argument("--dump-before", action="append", default=[], metavar="PASS", help="dump the graph before PASS")
    p.add_argument("--dump-after", action="append", default=[], metavar="PASS", help="dump the graph after PASS")
    p.add_argument("--dump-dir", default=None, help="write dumps to files here instead of stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..passes import describe_pipeline

    if args.passes:
        print(describe_pipeline())
    if args.schedule:
        from ..schedule import CacheSchedule
        from ..workflows import schedule_file

        print(CacheSchedule.load(schedule_file(args.schedule)).summary())
    if args.model or not (args.passes or args.schedule):
        from ..cacheable import prepare
        from ..models.registry import load_model
        from ..passes import graph_text

        spec = load_model(args.model or DEFAULT_MODEL)
        cm = prepare(
            spec.model,
            spec.example_inputs(2),
            model_name=spec.name,
            site_rules=spec.extra.get("site_rules"),
            dump_before=args.dump_before,
            dump_after=args.dump_after,
            dump_dir=args.dump_dir,
        )
        info = spec.describe()
        info["sites"] = [{"name": s.name, "kind": s.kind, "outputs": s.num_outputs, "gated": s.gated} for s in cm.sites]
        info["capture"] = [{"pass": n, **c} for n, c in cm.captured.history]
        print_json(info)
        if args.graph:
            print(graph_text(cm.graph_module))
    return 0
