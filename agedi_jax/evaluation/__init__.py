"""Evaluation of generated structures (paper Sec. II G, III A, III B).

* :mod:`.prd` — precision–recall for distributions (Sajjadi et al. 2018), AUC, F_β;
* :mod:`.baselines` — subsampled / position-noised copies of the reference set;
* :mod:`.descriptors` — atom-averaged SOAP features, t-SNE maps;
* :mod:`.validity` — distances, connectivity, cell, composition, layer / space / point groups;
* :mod:`.energetics` — ASE relaxation (EMT default), formation energy (Eq. 21), RSS;
* :mod:`.plots` — PRD curves, embeddings, energy histograms;
* :mod:`.report` — :func:`evaluate` and the ``agedi-jax evaluate`` command-line arguments.

Everything works on lists of ``ase.Atoms`` on the host (numpy); nothing here needs JAX.
"""

from agedi_jax.evaluation.baselines import (
    baseline_family,
    baseline_label,
    noised_baseline,
)
from agedi_jax.evaluation.descriptors import (
    SOAP_DEFAULTS,
    soap_features,
    species_of,
    tsne_map,
)
from agedi_jax.evaluation.energetics import (
    EMT_ELEMENTS,
    formation_energy,
    get_calculator,
    parse_composition,
    random_cluster,
    random_structure_search,
    reference_energies,
    relax,
)
from agedi_jax.evaluation.plots import (
    plot_embedding,
    plot_energy_distributions,
    plot_prd_curves,
)
from agedi_jax.evaluation.prd import (
    cluster_histograms,
    compute_prd,
    compute_prd_from_embedding,
    f_beta,
    max_f_beta_pair,
    prd_auc,
)
from agedi_jax.evaluation.report import (
    add_evaluate_arguments,
    evaluate,
    load_structures,
    run_evaluate,
)
from agedi_jax.evaluation.validity import (
    composition_stats,
    layer_group_accuracy,
    layer_groups,
    point_groups,
    space_groups,
    structure_validity,
    validity,
)

__all__ = [
    "EMT_ELEMENTS",
    "SOAP_DEFAULTS",
    "add_evaluate_arguments",
    "baseline_family",
    "baseline_label",
    "cluster_histograms",
    "composition_stats",
    "compute_prd",
    "compute_prd_from_embedding",
    "evaluate",
    "f_beta",
    "formation_energy",
    "get_calculator",
    "layer_group_accuracy",
    "layer_groups",
    "load_structures",
    "max_f_beta_pair",
    "noised_baseline",
    "parse_composition",
    "plot_embedding",
    "plot_energy_distributions",
    "plot_prd_curves",
    "point_groups",
    "prd_auc",
    "random_cluster",
    "random_structure_search",
    "reference_energies",
    "relax",
    "run_evaluate",
    "soap_features",
    "space_groups",
    "species_of",
    "structure_validity",
    "tsne_map",
    "validity",
]
