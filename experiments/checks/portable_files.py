"""Make the committed results and checkpoints portable and verifiable (maintenance).

* machine-specific absolute paths in committed text files (configs, results JSON, logs)
  become ``$AGEDI_JAX_DATA/...`` (the shared data) or repository-relative paths;
* every committed checkpoint's ``meta.json`` gets the SHA-256 of its state files (what
  :func:`agedi_jax.checkpoint.verify_checkpoint` checks) and a portable data spec, with its
  ``config_hash`` recomputed for the rewritten config; orbax's ``commit_success.txt`` loses
  the absolute path it records.

    python -m experiments.checks.portable_files --check   # list what would change
    python -m experiments.checks.portable_files           # rewrite

Run from the repository root; only files tracked by git are touched.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

from agedi_jax.checkpoint import file_digests
from agedi_jax.config import Config, config_hash
from agedi_jax.data import DATA_PREFIX, portable_data_spec
from experiments.common import REPO, data_root

TEXT = (".json", ".jsonl", ".log", ".txt", ".md", ".extxyz")


def portable_text(text: str, shared_roots: list[str]) -> str:
    """Absolute paths under a shared-data root → ``$AGEDI_JAX_DATA/...``; under this
    repository → relative paths."""
    for root in shared_roots:
        text = text.replace(root.rstrip("/") + "/", DATA_PREFIX + "/").replace(root.rstrip("/"), DATA_PREFIX)
    repo = str(REPO).rstrip("/")
    text = re.sub(re.escape(repo) + r"/", "", text)
    return text.replace('"../shared/data/', f'"{DATA_PREFIX}/')


def fix_checkpoint(ckpt: Path, write: bool = True) -> bool:
    """Make one checkpoint portable; returns whether anything changed (or, with
    ``write=False``, would change — nothing is written then)."""
    meta_path = ckpt / "meta.json"
    meta = json.loads(meta_path.read_text())
    changed = False
    marker = ckpt / "state" / "commit_success.txt"
    if marker.is_file() and marker.read_text() != "Checkpoint commit was successful.":
        if write:
            marker.write_text("Checkpoint commit was successful.")
        changed = True
    cfg = meta["config"]
    spec = portable_data_spec(cfg["data"]["dataset"])
    if spec != cfg["data"]["dataset"]:
        cfg["data"]["dataset"] = spec
        changed = True
    new_hash = config_hash(Config.from_dict(cfg))
    if meta.get("config_hash") != new_hash:
        meta["config_hash"] = new_hash
        meta.setdefault("extra", {})["config_hash"] = new_hash
        changed = True
    digests = file_digests(ckpt / "state")
    if meta.get("files") != digests:
        meta["files"] = digests
        changed = True
    if changed and write:
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only list the files that would change")
    ap.add_argument("--shared-root", action="append", default=[str(data_root().resolve())],
                    help="absolute shared-data paths to replace (repeatable; default: this machine's data root)")
    ap.add_argument("--skip", nargs="*", default=[], help="files to leave alone")
    args = ap.parse_args(argv)
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    changed = []
    for name in files:
        path = REPO / name
        if path.name == "meta.json" and (path.parent / "state").is_dir():
            continue
        if path.suffix not in TEXT or not path.is_file() or name in args.skip:
            continue
        text = path.read_text(errors="replace")
        new = portable_text(text, args.shared_root)
        if new != text:
            changed.append(name)
            if not args.check:
                path.write_text(new)
    for meta in [REPO / f for f in files if f.endswith(("checkpoints/best/meta.json", "checkpoints/latest/meta.json", "checkpoints/params/meta.json"))]:
        if fix_checkpoint(meta.parent, write=not args.check):
            changed.append(str(meta.relative_to(REPO)) + " (digests / data spec / config hash)")
    print("\n".join(changed) if changed else "nothing to change")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
