"""Add to ``results/perov5.json`` the size of the edge template of one structure of each
bulk data set (what sampling and training of a lattice model pay for): perov_5 with the
trained run's fitted prior, carbon_24 with the ``carbon24`` preset's prior fitted on its
seed-0 training split (its largest, 24-atom, structures)::

    python -m experiments.bulk.edges
"""

from __future__ import annotations

import json
from pathlib import Path

from experiments.common import write_json

HERE = Path(__file__).resolve().parent


def _edges(cfg, structures, size: int) -> int:
    from agedi_jax.convert import encode_structures
    from agedi_jax.lattice import template_cell
    from agedi_jax.vocab import TypeVocab

    p = cfg.process
    atoms = next(a for a in structures if len(a) == size)
    enc = encode_structures([atoms], TypeVocab.from_atoms([atoms]), cfg.model.cutoff, max_atoms=size,
                            image_cells=[template_cell(p.lattice_scale, size, atoms.pbc, p.lattice_y_max)])
    return int(enc[0].senders.shape[0])


def main() -> None:
    from agedi_jax.config import Config, preset
    from agedi_jax.data.bulk import split_indices
    from agedi_jax.train import load_training_data, prepare_lattice

    path = HERE / "results" / "perov5.json"
    r = json.loads(path.read_text())
    out = {}
    for name, cfg in (("perov5", Config.from_dict(r["config"])), ("carbon24", preset("carbon24"))):
        ds = load_training_data(cfg)
        train_idx, _ = split_indices(len(ds), cfg.data.val_fraction, cfg.data.split_seed)
        structures, cfg = prepare_lattice(cfg, ds.structures, train_idx)
        size = cfg.data.max_atoms
        out[name] = {"n_atoms": size, "edges_per_structure": _edges(cfg, structures, size),
                     "cutoff": cfg.model.cutoff, "lattice_scale": cfg.process.lattice_scale,
                     "lattice_y_max": cfg.process.lattice_y_max}
    r["edge_templates"] = out
    write_json(path, r)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
