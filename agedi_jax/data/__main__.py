"""``python -m agedi_jax.data summary SPEC [SPEC ...] [--validate]``."""

from __future__ import annotations

import sys
from typing import Sequence

from agedi_jax.data.specs import summary_main

USAGE = "usage: python -m agedi_jax.data summary SPEC [SPEC ...] [--validate]"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch the ``summary`` sub-command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] != "summary":
        print(f"unknown command {argv[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    return summary_main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
