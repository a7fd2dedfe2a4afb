"""Train the cluster models of paper Sec. III A (GM and ΔE < 200 meV subsets of QCD).

    python -m experiments.clusters.train --subset gm --budget cpu        # ~1 h on 2 shared cores
    python -m experiments.clusters.train --subset de200 --budget cpu
    python -m experiments.clusters.train --subset gm --budget gpu        # paper scale
    python -m experiments.clusters.train --subset gm --quick --out /tmp/x  # 30-step smoke run

This is ``agedi-jax train --preset qcd_<subset> --set ... --out runs/<budget>_<subset>``
with the overrides of ``settings.OVERRIDES``; the exact command is printed first. A run
directory with a checkpoint is resumed (rerun the same command after an interruption).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from experiments.clusters import settings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subset", choices=settings.SUBSETS, required=True)
    ap.add_argument("--budget", choices=settings.BUDGETS, default="cpu")
    ap.add_argument("--quick", action="store_true", help="30 steps (smoke test)")
    ap.add_argument("--out", type=Path, default=None, help="run directory (default runs/<budget>_<subset>)")
    ap.add_argument("--print-only", action="store_true", help="print the agedi-jax command and exit")
    args = ap.parse_args(argv)
    cli_argv = settings.train_argv(args.budget, args.subset, quick=args.quick, out=args.out)
    print("agedi-jax " + " ".join(shlex.quote(a) for a in cli_argv), flush=True)
    if args.print_only:
        return 0
    from agedi_jax.cli import main as cli_main

    return cli_main(cli_argv)


if __name__ == "__main__":
    raise SystemExit(main())
