"""The experiments of agedi_jax: case studies (``clusters``, ``two_d``, ``surfaces``),
benchmarks and checks. Run scripts from the repository root as modules, e.g.
``python -m experiments.clusters.train``; shared helpers are in :mod:`experiments.common`."""
