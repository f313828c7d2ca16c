"""``studio sweep``: run a spec's grid into a folder, here or on a Ray cluster; redraw its report.

  studio sweep SPEC.toml --out DIR [--workers N] [--ray auto|ADDRESS] [--gpus-per-worker G]
  studio sweep --report DIR

Exit status as ``studio sample``: 0 done, 1 some cells could not be computed (a re-run retries
them) or the workers failed, 2 a bad spec, folder or model, 130 / 128+signal interrupted (the cells
written so far are kept; the same command continues).
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap

from ..core.arg_types import non_negative, positive


def _item(name: str, text: str) -> str:
    return textwrap.fill(text, 100, initial_indent=f"  {name:<19}", subsequent_indent=" " * 21)


def spec_help() -> str:
    """The spec's keys and the metrics, from their declarations (SPEC_KEYS, evaluation.metrics)."""
    from ..evaluation.metrics import COST, METRICS, describe_metric
    from .spec import SPEC_KEYS

    lines = ["the spec's top-level keys:"]
    for o in SPEC_KEYS.values():
        allowed = "a table" if o.kind == "object" else o.allowed()
        default = "" if o.default in (None, {}) else f"; default {json.dumps(o.default, ensure_ascii=False)}"
        lines.append(_item(o.name, f"{o.help} ({allowed}{default})"))
    lines += ["", f"metrics ({' and '.join(COST)} are always recorded):"]
    lines += [_item(name, describe_metric(m)) for name, m in METRICS.items()]
    return "\n".join(lines)


def add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of recipes (sampler × steps × guidance × seeds …) into a folder, "
                                     "on this machine or a Ray cluster, with tables and plots",
                       description="Run every cell of SPEC.toml that DIR does not hold yet, then write "
                                   "results.csv/json, settings.csv, plots/ and contact_sheet.png.",
                       epilog=spec_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", metavar="SPEC.toml", help="the sweep's spec (see the README, 'Sweeps')")
    p.add_argument("--out", metavar="DIR", help="the sweep's folder (new, empty, or a sweep's to continue)")
    p.add_argument("--workers", type=positive(int), metavar="N",
                   help="worker processes (default: the cores, fewer if the model's copies would not fit in memory; "
                        "with --ray: the cluster's CPUs or GPUs over the per-worker share)")
    p.add_argument("--ray", metavar="auto|ADDRESS",
                   help="run on a Ray cluster: auto (the cluster this machine joined with `ray start`) or "
                        "its address host:port")
    p.add_argument("--gpus-per-worker", type=non_negative, default=0.0, metavar="G",
                   help="with --ray: GPUs each worker holds (0.5: two workers share one)")
    p.add_argument("--cpus-per-worker", type=non_negative, default=1.0, metavar="C",
                   help="with --ray: CPUs each worker holds, and its torch threads (default 1)")
    p.add_argument("--report", metavar="DIR", help="only redraw the tables and plots of the sweep in DIR")
    p.add_argument("--no-report", action="store_true", help="skip the tables and plots at the end")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow pickled .bin/.ckpt/.pt weights, read with torch.load(weights_only=True)")
    p.set_defaults(func=cmd_sweep)


def _say(msg: str) -> None:
    """A line on stderr with the studio's one prefix (errors: ``studio: error: …``, cli.py)."""
    print(f"studio: {msg}", file=sys.stderr)


def cmd_sweep(args) -> int:
    from .report import write_report

    if args.report:
        if args.spec or args.out:
            raise ValueError("--report DIR redraws a finished sweep; give it alone (without SPEC.toml and --out)")
        paths = write_report(args.report)
        _say(f"wrote {len(paths)} files in {args.report}: " + ", ".join(sorted({p.name for p in paths})[:6])
             + (" …" if len(paths) > 6 else ""))
        return 0
    if not args.spec:
        raise ValueError("give a spec (studio sweep SPEC.toml --out DIR) or --report DIR")
    if not args.out:
        raise ValueError("give the sweep's folder: --out DIR")
    if args.ray is None and args.gpus_per_worker:
        raise ValueError("--gpus-per-worker applies to --ray; a local sweep runs on the device set in the spec")
    from ..session.atomic import Terminated
    from .cells import done_keys
    from .driver import check_folder, run_sweep
    from .spec import load_spec

    spec = load_spec(args.spec)
    out = check_folder(args.out)
    try:
        stats = run_sweep(spec, out, workers=args.workers, ray=args.ray, gpus_per_worker=args.gpus_per_worker,
                          cpus_per_worker=args.cpus_per_worker, report=not args.no_report,
                          allow_pickle=args.allow_pickle)
    except (KeyboardInterrupt, Terminated) as e:
        kept = len(done_keys(out, (c.key for c in spec.cells)))
        code = 130 if isinstance(e, KeyboardInterrupt) else 128 + e.signum
        print(f"studio: error: interrupted; {kept} of {len(spec.cells)} cells are in {out} "
              "(the same command computes the rest)", file=sys.stderr)
        return code
    failed = f", {stats.failed} diverged" if stats.failed else ""
    _say(f"{stats.computed} cells computed, {stats.already} already there{failed}"
         + (f", {stats.replaced_workers} workers replaced" if stats.replaced_workers else "")
         + f"; {stats.seconds:.1f}s; results in {out}")
    if stats.errors:
        print(f"studio: error: {len(stats.errors)} cells could not be computed (first: {stats.errors[0][1]}); "
              "run the same command again to retry them", file=sys.stderr)
        return 1
    return 0
