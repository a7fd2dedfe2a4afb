"""Datasets: real-data loaders (QCD clusters, C2DB 2D materials, ASE files and
databases), the built-in dataset, splits and summaries.

Quick use::

    from agedi_jax.data import load_dataset
    ds = load_dataset("builtin")                       # shipped EMT clusters
    ds = load_dataset("qcd:../shared/data/qcd_gap_relaxed:gm")
    ds = load_dataset("../shared/data/c2db/train.csv")  # layer-group labels
    train, val = ds.split(0.1, seed=0)
    print(ds.summary())

Command line: ``python -m agedi_jax.data summary SPEC [SPEC ...]``.
"""

from agedi_jax.data.builtin import builtin_path, load_builtin
from agedi_jax.data.bulk import load_bulk_csv
from agedi_jax.data.c2db import (
    layer_group_labels,
    load_ase_db,
    load_c2db_csv,
    load_c2db_db,
    write_ase_db,
)
from agedi_jax.data.dataset import (
    DATA_PREFIX,
    DataError,
    Dataset,
    data_root,
    load_ase_file,
    validate_dataset,
)
from agedi_jax.data.qcd import load_qcd, read_qcd_file, subset_mask
from agedi_jax.data.specs import (
    load_dataset,
    portable_data_spec,
    resolve_data_spec,
    summary_main,
)

__all__ = [
    "DATA_PREFIX",
    "DataError",
    "Dataset",
    "builtin_path",
    "data_root",
    "layer_group_labels",
    "load_ase_db",
    "load_ase_file",
    "load_builtin",
    "load_bulk_csv",
    "load_c2db_csv",
    "load_c2db_db",
    "load_dataset",
    "load_qcd",
    "portable_data_spec",
    "read_qcd_file",
    "resolve_data_spec",
    "subset_mask",
    "summary_main",
    "validate_dataset",
    "write_ase_db",
]
