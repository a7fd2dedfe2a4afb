"""Spec strings → datasets: :func:`load_dataset` and the ``data summary`` command.

A spec names a data set in one string (configs store it as ``data.dataset``): ``builtin``,
``qcd:PATH[:SUBSET]``, ``c2db:PATH``, ``xyz:PATH`` or a path whose kind is recognised.
Paths under the shared data directory resolve through :func:`resolve_data_spec`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from agedi_jax.data import builtin, bulk, c2db, qcd
from agedi_jax.data.dataset import (
    DataError,
    Dataset,
    check_path,
    expand_data_path,
    load_ase_file,
    portable_data_path,
    validate_dataset,
)

__all__ = ["resolve_data_spec", "portable_data_spec", "load_dataset", "summary_main"]


_PREFIXES = ("qcd:", "c2db:", "xyz:", "bulk:", "builtin:")


def _split_spec(spec: str) -> tuple[str, str]:
    prefix = spec.split(":", 1)[0] + ":" if spec.startswith(_PREFIXES) else ""
    return prefix, spec[len(prefix):]


def _map_spec_path(spec: str, fn) -> str:
    """The spec with ``fn`` applied to its file path (a ``qcd:`` subset suffix kept)."""
    prefix, path = _split_spec(str(spec))
    if prefix == "builtin:" or spec == "builtin":
        return spec
    head, sep, tail = path.rpartition(":") if prefix == "qcd:" else ("", "", "")
    if head and qcd.is_subset_name(tail):
        return f"{prefix}{fn(head)}:{tail}"
    return f"{prefix}{fn(path)}"


def resolve_data_spec(spec: str) -> str:
    """The spec with its path expanded for this machine (``$AGEDI_JAX_DATA`` and older
    ``.../shared/data/...`` paths, :func:`~agedi_jax.data.dataset.expand_data_path`)."""
    return _map_spec_path(spec, expand_data_path)


def portable_data_spec(spec: str) -> str:
    """The spec with a path inside the shared data written as ``$AGEDI_JAX_DATA/...`` (how
    configs store it: a clone on another machine resolves it through ``$AGEDI_JAX_DATA``)."""
    return _map_spec_path(spec, lambda path: portable_data_path(expand_data_path(path)))


# --------------------------------------------------------------------------------------
# Spec strings
# --------------------------------------------------------------------------------------


def load_dataset(spec: str | Path, **kwargs) -> Dataset:
    """Load a dataset from a spec string; ``kwargs`` go to the loader.

    Specs:
      * ``"builtin"`` / ``"builtin:emt_clusters"``: the dataset shipped with the package;
      * ``"qcd:PATH"`` or ``"qcd:PATH:SUBSET"`` (``gm``, ``de200``, ...), or a directory of
        ``<El>_gap_QCD_relaxed.xyz`` files: :func:`agedi_jax.data.qcd.load_qcd`;
      * ``"c2db:PATH"`` or a ``.csv`` file: C2DB CSV with layer-group labels;
      * ``"bulk:PATH"`` or a ``.csv`` file with a ``cif`` column and no C2DB columns: bulk
        crystals (perov_5, carbon_24; :func:`agedi_jax.data.bulk.load_bulk_csv`);
      * any path may start with ``$AGEDI_JAX_DATA/`` (the shared data directory);
      * a ``.db`` file: ASE database; rows that are all periodic in x, y only are read as
        C2DB (layer-group labels), anything else by :func:`~agedi_jax.data.c2db.load_ase_db`;
      * ``"xyz:PATH"`` or any other file ASE can read (extended XYZ, ...).

    Raises ``FileNotFoundError("data path X does not exist")`` for a missing path and
    :class:`DataError` naming the file for unreadable, corrupt or empty input.
    """
    spec = resolve_data_spec(str(spec))
    if spec == "builtin" or spec.startswith("builtin:"):
        name = spec.partition(":")[2] or builtin.DEFAULT
        return builtin.load_builtin(name, **kwargs)
    if spec.startswith("qcd:"):
        path, subset = spec[4:], kwargs.pop("subset", None)
        head, _, tail = path.rpartition(":")
        if head and qcd.is_subset_name(tail):
            path, subset = head, tail
        return qcd.load_qcd(path, subset=subset, **kwargs)
    if spec.startswith("c2db:"):
        p = check_path(spec[5:])
        if p.suffix == ".db":
            return c2db.load_c2db_db(p, **kwargs)
        return c2db.load_c2db_csv(p, **kwargs)
    if spec.startswith("xyz:"):
        return load_ase_file(spec[4:], **kwargs)
    if spec.startswith("bulk:"):
        return bulk.load_bulk_csv(spec[5:], **kwargs)

    p = check_path(spec)
    if p.is_dir():
        if qcd.qcd_files(p):
            return qcd.load_qcd(p, **kwargs)
        raise DataError(
            f"directory {spec!r} holds no <El>_gap_QCD_relaxed.xyz files; give a structure "
            "file, a C2DB .csv / .db, or a QCD directory"
        )
    if p.suffix.lower() == ".csv":
        if bulk.is_bulk_csv(p):
            return bulk.load_bulk_csv(p, **kwargs)
        return c2db.load_c2db_csv(p, **kwargs)
    if p.suffix.lower() == ".db":
        if c2db.db_is_2d(p):
            return c2db.load_c2db_db(p, **kwargs)
        return c2db.load_ase_db(p, **kwargs)
    return load_ase_file(p, **kwargs)


def summary_main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the one-line summary of every dataset spec in ``argv``.

    ``argv`` holds the specs (see :func:`load_dataset`) and options; returns the exit
    status (0, or 1 when a spec could not be loaded; the error goes to stderr)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="agedi-jax data summary",
        description="Print a one-line summary of each dataset (see agedi_jax.data.load_dataset for SPEC).",
    )
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="builtin, qcd:DIR[:gm|de200], FILE.csv, FILE.db, FILE.xyz, ...")
    parser.add_argument("--validate", action="store_true", help="also check that every structure can be batched")
    args = parser.parse_args(None if argv is None else list(argv))
    status = 0
    for spec in args.specs:
        try:
            ds = load_dataset(spec)
            if args.validate:
                validate_dataset(ds)
        except (OSError, ValueError, KeyError) as err:
            print(f"error: {spec}: {err}", file=sys.stderr)
            status = 2
            continue
        print(ds.summary(), flush=True)
    return status
