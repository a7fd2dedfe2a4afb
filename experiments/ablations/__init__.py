"""The sample-quality ablations (issue 16): one driver (:mod:`experiments.ablations.run`),
the rows it can run (:mod:`experiments.ablations.rows`), one results page (README.md)."""
