"""The joint model end to end: training, exact resume, sampling API, guidance,
interpolation, checkpoints, command line and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.io import read

from agedi_jax.batch import StructureError
from agedi_jax.checkpoint import CheckpointError, load_config_and_vocab, load_model
from agedi_jax.cli import main as cli_main
from agedi_jax.config import Config, config_hash, override, preset, replace
from agedi_jax.convert import batch_from_atoms
from agedi_jax.data import Dataset
from agedi_jax.generate import sample_atoms
from agedi_jax.model import build_model, init_state
from agedi_jax.train import fit
from agedi_jax.vocab import TypeVocab
from tests.conftest import TINY
from tests.conftest import cluster as _cluster


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_training_writes_run_directory(trained):
    run = trained.run_dir
    for name in ("config.json", "metrics.jsonl", "loss.png", "checkpoints/latest/meta.json", "checkpoints/best/meta.json"):
        assert (run / name).exists(), name
    cfg = Config.from_json((run / "config.json").read_text())
    assert cfg.model.avg_num_neighbors > 0 and cfg.process.data_scale > 0  # filled in from data
    saved, vocab, meta = load_config_and_vocab(run / "checkpoints" / "latest")
    assert saved == cfg and meta["step"] == 6 and meta["config_hash"] == config_hash(cfg)
    assert vocab.symbols == ("Cu", "Ag", "Pt")
    splits = {r["split"] for r in trained.metrics}
    assert splits == {"train", "val"}
    assert all(np.isfinite(r["loss"]) for r in trained.metrics)


def test_resume_gives_the_same_parameters(tmp_path, toy_data, tiny_config, trained):
    run = tmp_path / "interrupted"
    first = fit(tiny_config, run, progress=False, dataset=toy_data, stop_at=3)
    assert int(first.state.step) == 3
    resumed = fit(tiny_config, run, progress=False, dataset=toy_data)
    assert int(resumed.state.step) == 6
    for a, b in zip(_leaves(resumed.state), _leaves(trained.state)):
        np.testing.assert_array_equal(a, b)
    # the metrics log continues without duplicated steps
    steps = [r["step"] for r in resumed.metrics if r["split"] == "train"]
    assert steps == sorted(set(steps))


def test_parameters_only_export_samples_alike_and_cannot_resume(tmp_path, toy_data, tiny_config, trained):
    run = tmp_path / "shared"
    assert cli_main(["export", str(trained.run_dir / "checkpoints" / "latest"), str(run / "checkpoints" / "params")]) == 0
    full = load_model(trained.run_dir / "checkpoints" / "latest")
    slim = load_model(run)  # a run directory holding only the export
    for a, b in zip(_leaves(full[1]), _leaves(slim[1])):
        np.testing.assert_array_equal(a, b)
    assert slim[2] == full[2]
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())  # noqa: E731
    assert size(run / "checkpoints" / "params" / "state") < 0.5 * size(trained.run_dir / "checkpoints" / "latest" / "state")
    with pytest.raises(CheckpointError, match="EMA parameters only"):
        load_model(run, use_ema=False)
    (run / "checkpoints" / "params").rename(run / "checkpoints" / "latest")
    with pytest.raises(CheckpointError, match="parameters only"):
        fit(tiny_config, run, progress=False, dataset=toy_data)


def test_same_seed_same_samples_and_info(trained):
    model, params = trained.model, trained.state.ema_params
    a = sample_atoms(model, params, n_atoms=[4, 6], num_samples=2, seed=3)
    b = sample_atoms(model, params, n_atoms=[4, 6], num_samples=2, seed=3)
    c = sample_atoms(model, params, n_atoms=[4, 6], num_samples=2, seed=4)
    assert [len(x) for x in a] == [4, 4, 6, 6]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.positions, y.positions)
        assert x.get_chemical_symbols() == y.get_chemical_symbols()
    assert not np.allclose(a[0].positions, c[0].positions)
    for x in a:
        assert "X" not in x.get_chemical_symbols()  # every MASK resolved
        assert np.all(np.isfinite(x.positions))
        assert x.info["seed"] == 3 and x.info["config_hash"] == config_hash(model.config)
        assert np.allclose(x.positions.mean(0), 0.0, atol=1e-4)  # zero centre of mass


def test_compositions_and_templates(trained):
    model, params = trained.model, trained.state.ema_params
    # sizes 4 and 6, two each, as in the other tests: one bucket, no new compilation
    out = sample_atoms(model, params, compositions=["Pt4", "CuAg5"], num_samples=2, seed=0)
    assert [x.get_chemical_formula() for x in out] == ["Pt4", "Pt4", "Ag5Cu", "Ag5Cu"]
    from ase.constraints import FixAtoms

    tmpl = _cluster("Cu", 6, 2.5, seed=1)
    tmpl.set_constraint(FixAtoms(indices=[0, 1, 2]))
    free = _cluster("Ag", 4, 2.85, seed=2)
    out = sample_atoms(model, params, templates=[free, tmpl], num_samples=2, generate_types=True, seed=0)
    for x in out[2:]:
        np.testing.assert_allclose(x.positions[:3], tmpl.positions[:3], atol=1e-5)
        assert x.get_chemical_symbols()[:3] == ["Cu"] * 3
        assert not np.allclose(x.positions[3:], tmpl.positions[3:], atol=1e-2)


def test_interpolation_yields_only_the_two_elements(trained):
    model, params = trained.model, trained.state.ema_params
    out = sample_atoms(model, params, n_atoms=[4, 6], num_samples=2, interpolate=("Pt", "Cu"), seed=0)
    symbols = set().union(*(set(x.get_chemical_symbols()) for x in out))
    assert symbols <= {"Pt", "Cu"}
    assert all(x.info["interpolate"] == "Pt:Cu" for x in out)


def test_guidance_weight_one_equals_the_conditional_model(tmp_path):
    """w = 1 through the guidance wrapper equals the plain conditional model; w = 0 equals
    the unconditional one (null label)."""
    cfg = replace(preset("quickstart"), **TINY)
    cfg = replace(cfg, model={"num_labels": 3, "types": False}, process={"data_scale": 0.5})
    vocab = TypeVocab(("Cu",))
    model = build_model(cfg, vocab, avg_num_neighbors=4.0)
    template = [_cluster("Cu", 5, 2.5, 0)]
    state = init_state(model, jax.random.PRNGKey(0), batch_from_atoms(template, vocab, 4.0))
    params = state.params
    base = dict(compositions=["Cu4", "Cu6"], num_samples=2, seed=1)
    plain = sample_atoms(model, params, label=2, **base)  # w = 1 (config default): no wrapper
    guided = sample_atoms(model, params, label=2, guidance=1.0, **base)  # explicit: guided path
    for a, b in zip(plain, guided):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-4)
    uncond = sample_atoms(model, params, label=0, **base)
    w0 = sample_atoms(model, params, label=2, guidance=0.0, **base)
    for a, b in zip(uncond, w0):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-4)
    assert not np.allclose(plain[0].positions, uncond[0].positions, atol=1e-4)
    with pytest.raises(ValueError, match="label 4 out of range: this model has labels 1..3"):
        sample_atoms(model, params, label=4, **base)


def test_bad_input_gives_clear_errors(trained, tmp_path, tiny_config, toy_data):
    model, params = trained.model, trained.state.ema_params
    with pytest.raises(StructureError, match="'Au' is not in the type vocabulary"):
        sample_atoms(model, params, compositions=["Au4"], num_samples=1)
    with pytest.raises(StructureError, match="9 atoms is more than the model's configured maximum of 8"):
        sample_atoms(model, params, n_atoms=[9], num_samples=1)
    with pytest.raises(ValueError, match="unconditional"):
        sample_atoms(model, params, n_atoms=[4], num_samples=1, label=2)
    with pytest.raises(ValueError, match="give exactly one of"):
        sample_atoms(model, params, n_atoms=[4], compositions=["Cu4"])
    # a checkpoint from another config
    other = override(tiny_config, ["model.features=16"])
    with pytest.raises(CheckpointError, match="model.features: checkpoint .* has 8, config has 16"):
        fit(other, trained.run_dir, progress=False, dataset=toy_data)
    # a corrupt checkpoint
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(trained.run_dir / "checkpoints" / "latest", broken)
    (broken / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(broken)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    # a missing data path
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fit(override(tiny_config, ["data.dataset=/no/such/data.xyz"]), tmp_path / "x", progress=False)


def test_load_model_round_trip(trained):
    model, params, cfg = load_model(trained.run_dir / "checkpoints" / "latest", overrides=["sample.steps=4"])
    assert cfg.sample.steps == 4 and cfg.model == trained.model.config.model
    for a, b in zip(_leaves(params), _leaves(trained.state.ema_params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="only sample.\\* fields"):
        load_model(trained.run_dir, overrides=["model.features=4"])


def test_command_line_train_and_sample(tmp_path, toy_data, capsys):
    data = tmp_path / "toy.extxyz"
    from ase.io import write

    write(data, toy_data.structures, format="extxyz")
    run = tmp_path / "cli_run"
    sets = [f"--set={s}.{k}={v}" for s, d in TINY.items() for k, v in d.items()]
    rc = cli_main(["train", "--preset", "quickstart", *sets, f"--set=data.dataset={data}", "--out", str(run), "--quiet"])
    assert rc == 0 and (run / "checkpoints" / "latest").exists()
    out = tmp_path / "samples.extxyz"
    rc = cli_main(["sample", str(run), "--n-atoms", "4,5", "--num", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    frames = read(out, ":")
    assert len(frames) == 4 and all("config_hash" in f.info and f.info["seed"] == 0 for f in frames)
    meta = json.loads(Path(str(out) + ".config.json").read_text())
    assert meta["config_hash"] == frames[0].info["config_hash"]
    # user errors: one line on stderr, exit code 2, no traceback
    rc = cli_main(["sample", str(run), "--composition", "Au4", "--out", str(out), "--quiet"])
    assert rc == 2
    assert "not in the type vocabulary" in capsys.readouterr().err
    rc = cli_main(["train", "--set", "model.nope=1", "--out", str(run)])
    assert rc == 2


def test_config_overrides_and_presets():
    cfg = override(preset("quickstart"), ["model.num_layers=4", "train.steps=10", "process.independent_t=false"])
    assert cfg.model.num_layers == 4 and cfg.train.steps == 10
    assert Config.from_json(cfg.to_json()) == cfg
    assert config_hash(cfg) != config_hash(preset("quickstart"))
    # a config saved before a field existed (the field at its default) keeps its hash
    old = cfg.to_dict()
    del old["process"]["lattice_layer_c"], old["model"]["energy_head"]
    assert config_hash(Config.from_dict(old)) == config_hash(cfg)
    assert config_hash(override(cfg, ["process.lattice_layer_c=20"])) != config_hash(cfg)
    with pytest.raises(ValueError, match="model has no field 'foo'"):
        override(cfg, ["model.foo=1"])
    with pytest.raises(ValueError, match="expected an integer"):
        override(cfg, ["train.steps=ten"])
    with pytest.raises(ValueError, match="'ve' SDE: schedule 'cosine' unknown"):
        override(cfg, ["process.schedule=cosine"])
    assert override(cfg, ["sample.grid=log"]).sample.grid == "log"
    with pytest.raises(ValueError, match="sample.grid='cosine'"):
        override(cfg, ["sample.grid=cosine"])
    for name in ("qcd_gm", "qcd_de200", "c2db"):
        p = preset(name)
        assert p.process.sde == "ve" and p.process.schedule == ("geometric" if name == "c2db" else "linear")
    assert preset("c2db").model.types is False and preset("c2db").model.num_labels == 80


def _aligned_rmsd(a: Atoms, b: Atoms) -> float:
    """RMSD (Å) after the best permutation of equal species and Kabsch rotation."""
    from itertools import permutations

    p = a.positions - a.positions.mean(0)
    q = b.positions - b.positions.mean(0)
    best = np.inf
    for perm in permutations(range(len(a))):
        x = p[list(perm)]
        u, _, vt = np.linalg.svd(x.T @ q)
        d = np.sign(np.linalg.det(vt.T @ u.T))
        r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
        best = min(best, float(np.sqrt(((x @ r.T - q) ** 2).sum(1).mean())))
    return best


def test_overfit_two_clusters_are_sampled_back(tmp_path):
    """A joint model trained on a Cu4 tetrahedron and a Pt6 octahedron generates them back
    from the number of atoms alone: types exact, RMSD < 0.2 Å after alignment."""
    from ase.calculators.emt import EMT
    from ase.optimize import BFGS

    def relaxed(atoms):
        atoms.calc = EMT()
        BFGS(atoms, logfile=None).run(fmax=0.01)
        atoms.calc = None
        atoms.positions -= atoms.positions.mean(0)
        return atoms

    d = 2.5
    tet = relaxed(Atoms("Cu4", positions=[[0, 0, 0], [d, 0, 0], [d / 2, d * 0.866, 0], [d / 2, d * 0.289, d * 0.816]]))
    octa = relaxed(Atoms("Pt6", positions=[[2, 0, 0], [-2, 0, 0], [0, 2, 0], [0, -2, 0], [0, 0, 2], [0, 0, -2]]))
    cfg = replace(
        preset("quickstart"),
        data={"val_fraction": 0.0, "max_atoms": 8},
        model={"network": "painn", "features": 32, "num_layers": 2, "cutoff": 5.0},
        process={"sigma_max": 3.0},
        train={"steps": 2500, "batch_size": 2, "learning_rate": 3e-3, "warmup_steps": 20, "log_every": 500,
               "val_every": 10**6, "checkpoint_every": 10**6, "ema_decay": 0.99},
        sample={"steps": 200},
    )
    run = fit(cfg, tmp_path / "overfit", progress=False, dataset=Dataset([tet, octa], name="toy"))
    samples = sample_atoms(run.model, run.state.ema_params, n_atoms=[4, 6], num_samples=4, seed=0)
    rmsd = []
    for s in samples:
        ref = tet if len(s) == 4 else octa
        assert s.get_chemical_formula() == ref.get_chemical_formula()
        rmsd.append(_aligned_rmsd(s, ref))
    # Observed: all 8 below 0.2 Å (max 0.17); a wrong Pt6 shape appears in ~1 of 10 samples of
    # shorter trainings, so one outlier is tolerated rather than making the test flaky.
    assert sum(r < 0.2 for r in rmsd) >= 7 and np.median(rmsd) < 0.1, np.round(rmsd, 3)
