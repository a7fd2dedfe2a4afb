"""Reliability: checked checkpoints, one writer per run directory, errors before work,
consistent exit codes, interruption and resume, portable committed files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from agedi_jax.checkpoint import (
    CheckpointIntegrityError,
    load_config_and_vocab,
    load_model,
    restore_state,
    save_checkpoint,
    verify_checkpoint,
)
from agedi_jax.cli import main as cli_main
from agedi_jax.config import replace
from agedi_jax.generate import prepare_request, sample_atoms
from agedi_jax.runlog import RunInUseError, RunLock, check_writable
from agedi_jax.train import fit
from agedi_jax.vocab import TypeVocab
from tests.conftest import REPO

VOCAB = TypeVocab(("Cu", "Pt"))


# --------------------------------------------------------------------------------------
# Checkpoint integrity
# --------------------------------------------------------------------------------------


def _small_checkpoint(tmp_path: Path, tiny_config) -> tuple[Path, dict]:
    state = {"w": np.linspace(-1.0, 1.0, 4096, dtype=np.float32).reshape(64, 64), "b": np.ones(7, np.float32)}
    return save_checkpoint(tmp_path / "ckpt", state, tiny_config, VOCAB, step=3), state


def test_flipped_bytes_give_a_named_integrity_error(tmp_path, tiny_config):
    ckpt, state = _small_checkpoint(tmp_path, tiny_config)
    assert verify_checkpoint(ckpt)
    np.testing.assert_array_equal(restore_state(ckpt, state)["w"], state["w"])
    biggest = max((p for p in (ckpt / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    size = len(data)
    data[size // 2: size // 2 + 64] = bytes((x ^ 0xFF) for x in data[size // 2: size // 2 + 64])
    biggest.write_bytes(bytes(data))
    assert biggest.stat().st_size == size
    with pytest.raises(CheckpointIntegrityError, match=f"file .*{biggest.name} is corrupt"):
        restore_state(ckpt, state)


def test_missing_file_and_non_finite_values_are_refused(tmp_path, tiny_config):
    ckpt, state = _small_checkpoint(tmp_path, tiny_config)
    victim = next(p for p in (ckpt / "state").rglob("*") if p.is_file() and p.name != "commit_success.txt")
    victim.unlink()
    with pytest.raises(CheckpointIntegrityError, match="is missing"):
        restore_state(ckpt, state)
    bad = {"w": np.full((2, 2), np.nan, np.float32)}
    ckpt2 = save_checkpoint(tmp_path / "nan", bad, tiny_config, VOCAB, step=1)
    with pytest.raises(CheckpointIntegrityError, match="non-finite values"):
        restore_state(ckpt2, bad)


def test_checkpoint_files_hold_no_absolute_path(tmp_path, tiny_config):
    ckpt, _ = _small_checkpoint(tmp_path, tiny_config)
    for f in ckpt.rglob("*"):
        if f.is_file() and f.stat().st_size < 100_000:
            assert str(tmp_path) not in f.read_bytes().decode("latin-1"), f


def test_committed_checkpoints_are_verified_and_portable():
    metas = sorted((REPO / "experiments").glob("*/runs/*/checkpoints/*/meta.json"))
    assert len(metas) >= 3
    for meta in metas:
        assert verify_checkpoint(meta.parent), meta
        config, _, _ = load_config_and_vocab(meta.parent)
        spec = config.data.dataset.split(":", 1)[1] if config.data.dataset.startswith("qcd:") else config.data.dataset
        assert not spec.startswith("/"), (meta, config.data.dataset)
    machine = f"{REPO.resolve().parent}/"  # the folder holding this checkout: no committed config names it
    for cfg in (REPO / "experiments").glob("*/runs/*/config.json"):
        assert machine not in cfg.read_text(), cfg


# --------------------------------------------------------------------------------------
# One writer per run directory
# --------------------------------------------------------------------------------------


def test_second_writer_is_refused_and_a_dead_holder_does_not_block(tmp_path, toy_data, tiny_config):
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(RunInUseError, match=f"run directory {run} is in use by process {os.getpid()}"):
            fit(tiny_config, run, progress=False, dataset=toy_data)
    # a process that took the lock and was killed: its lock file stays, its lock does not
    code = f"from agedi_jax.runlog import RunLock; import time; lock = RunLock({str(run)!r}).acquire(); print('locked', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(RunInUseError, match=f"process {proc.pid}"):
        RunLock(run).acquire()
    proc.kill()
    proc.wait()
    assert "process" in (run / ".lock").read_text()  # stale content left behind
    with RunLock(run):
        pass


# --------------------------------------------------------------------------------------
# Errors before work, exit codes
# --------------------------------------------------------------------------------------


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, trained, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="a_file"):
        check_writable(blocker / "out.extxyz")
    t0 = time.perf_counter()
    rc = cli_main(["sample", str(tmp_path / "no_such_run"), "--n-atoms", "4", "--out", str(blocker / "s.extxyz")])
    assert rc == 2 and time.perf_counter() - t0 < 5
    assert "cannot write the output file" in capsys.readouterr().err
    rc = cli_main(["train", "--out", str(blocker / "run"), "--quiet"])
    assert rc == 2 and "cannot write the run directory" in capsys.readouterr().err
    rc = cli_main(["evaluate", str(tmp_path / "none.extxyz"), "--reference", "builtin", "--out", str(blocker / "ev")])
    assert rc == 2 and "cannot write the output directory" in capsys.readouterr().err


def test_sample_arguments_are_checked(tmp_path, trained, capsys):
    out = tmp_path / "s.extxyz"
    for num in ("0", "-3"):
        rc = cli_main(["sample", str(trained.run_dir), "--n-atoms", "4", "--num", num, "--out", str(out), "--quiet"])
        assert rc == 2 and f"--num must be >= 1, got {num}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="num_samples must be a whole number >= 1, got 0"):
        sample_atoms(trained.model, trained.state.ema_params, n_atoms=4, num_samples=0)
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    rc = cli_main(["sample", str(trained.run_dir), "--template", str(empty), "--out", str(out), "--quiet"])
    assert rc == 2 and "'" + str(empty) + "' is empty (0 bytes)" in capsys.readouterr().err
    assert not out.exists()


def test_exit_codes_are_consistent(tmp_path, capsys, tiny_config):
    assert cli_main(["data", "summary", str(tmp_path / "missing.xyz")]) == 2
    assert cli_main(["train", "--config", str(tmp_path / "missing.json"), "--out", str(tmp_path / "r")]) == 2
    assert "config file" in capsys.readouterr().err
    run = tmp_path / "nodata"
    rc = cli_main(["train", "--set", f"data.dataset={tmp_path / 'no_data.xyz'}", "--out", str(run), "--quiet"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    assert not run.exists(), "a failed start must not leave an empty run directory"


# --------------------------------------------------------------------------------------
# Sampling options of the Python API
# --------------------------------------------------------------------------------------


def test_guidance_weights_zero_and_one_need_one_network_call(trained):
    model = trained.model._replace(config=replace(trained.model.config, model={"num_labels": 3}))
    r1 = prepare_request(model, n_atoms=4, num_samples=2, label=2, guidance=1.0)
    r0 = prepare_request(model, n_atoms=4, num_samples=2, label=2, guidance=0.0)
    r2 = prepare_request(model, n_atoms=4, num_samples=2, label=2, guidance=2.0)
    assert not r1.guided and [e.label for e in r1.encoded] == [2, 2]
    assert not r0.guided and [e.label for e in r0.encoded] == [0, 0]  # the unconditional score
    assert r2.guided and [e.label for e in r2.encoded] == [2, 2]
    assert r0.frame_info(model, 0)["guidance"] == 0.0 and r0.frame_info(model, 0)["label"] == 2


def test_grid_is_a_sample_atoms_option_and_chunks_change_nothing(trained, capsys):
    from agedi_jax.generate import make_sampler

    model, params = trained.model, trained.state.ema_params
    a = sample_atoms(model, params, n_atoms=4, num_samples=2, seed=3, grid="log")
    assert all(x.info["grid"] == "log" for x in a)
    b = sample_atoms(model, params, n_atoms=4, num_samples=2, seed=3, grid="log", progress=True)
    assert "compiling the sampler" in capsys.readouterr().err
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.positions, y.positions)
    # the chunked loop gives the numbers of one uninterrupted loop
    run = make_sampler(model)
    from agedi_jax.batch import collate
    from agedi_jax.convert import encode_structures

    batch = collate(encode_structures(a, model.vocab, model.config.model.cutoff))
    gen = np.zeros(batch.num_graphs, bool)
    key = jax.random.PRNGKey(0)
    one = run(params, key, batch, gen, 1.0, chunk=run.num_steps)
    many = run(params, key, batch, gen, 1.0, chunk=1)
    np.testing.assert_array_equal(np.asarray(one.positions), np.asarray(many.positions))


# --------------------------------------------------------------------------------------
# Interruption: SIGTERM saves and the run resumes; wall-time checkpoints
# --------------------------------------------------------------------------------------


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path, toy_data):
    from ase.io import write

    data = tmp_path / "toy.extxyz"
    write(data, toy_data.structures, format="extxyz")
    run = tmp_path / "run"
    from tests.conftest import TINY

    sets = [f"--set={s}.{k}={v}" for s, d in TINY.items() for k, v in d.items()]
    sets += ["--set=train.steps=100000", "--set=train.log_every=1", "--set=train.val_every=100000",
             "--set=train.checkpoint_every=100000", "--set=train.checkpoint_minutes=0.002", f"--set=data.dataset={data}"]
    cmd = [sys.executable, "-m", "agedi_jax.cli", "train", "--preset", "quickstart", *sets, "--out", str(run), "--quiet"]
    env = dict(os.environ, AGEDI_JAX_CACHE=str(jax.config.jax_compilation_cache_dir or ""))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    latest = run / "checkpoints" / "latest" / "meta.json"
    deadline = time.time() + 240
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert latest.exists(), "a wall-time checkpoint must appear before checkpoint_every steps"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "interrupted by signal" in err and "run the same command again to resume" in err
    step = json.loads(latest.read_text())["step"]
    assert step >= 1
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in lines) >= step
    assert not (run / ".lock").read_text().strip(), "the lock is released on exit"
    # resuming continues from the saved step
    cfg = load_config_and_vocab(run / "checkpoints" / "latest")[0]
    res = fit(replace(cfg, train={"steps": step + 2}), run, progress=False)
    assert int(res.state.step) == step + 2
    model, params, _ = load_model(run)
    assert len(sample_atoms(model, params, n_atoms=4, num_samples=1, steps=2)) == 1


def test_released_executables_change_nothing(tmp_path, toy_data, tiny_config, trained, monkeypatch, capsys):
    """Dropping JAX's compiled executables in the middle of a run (what the training loop
    does when the process nears the kernel's memory-map limit, where XLA:CPU would abort
    with "LLVM ERROR: Unable to allocate section memory") unmaps their code and leaves the
    run bitwise the same."""
    import agedi_jax.train as train_module
    from agedi_jax import runtime

    maps = runtime.memory_maps()
    if sys.platform.startswith("linux"):
        count, limit = maps
        assert 0 < count < limit
        assert not runtime.release_compiled(1.0), "never above the whole limit"
    else:
        assert maps is None and not runtime.release_compiled(0.0)
    calls = []
    monkeypatch.setattr(train_module, "release_compiled", lambda: calls.append(runtime.release_compiled(force=True)))
    res = fit(tiny_config, tmp_path / "run", progress=False, dataset=toy_data)
    assert len(calls) == 3 and all(calls)  # every log_every = 2 of 6 steps
    assert "cleared JAX's compiled executables" in capsys.readouterr().err
    for a, b in zip(jax.tree.leaves(res.state), jax.tree.leaves(trained.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # sample_atoms checks too (a notebook session): clearing before it changes no sample
    import agedi_jax.generate as generate_module

    before = sample_atoms(trained.model, trained.state.ema_params, n_atoms=5, num_samples=2, steps=4, seed=3)
    monkeypatch.setattr(generate_module, "release_compiled", lambda: calls.append(runtime.release_compiled(0.0)))
    after = sample_atoms(trained.model, trained.state.ema_params, n_atoms=5, num_samples=2, steps=4, seed=3)
    assert len(calls) == 4 and calls[-1] is (maps is not None)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.get_chemical_symbols() == b.get_chemical_symbols()
    if maps is not None:
        jax.jit(lambda x: x * 2.0 + 1.0)(np.ones(3, np.float32)).block_until_ready()
        before = runtime.memory_maps()[0]
        assert runtime.release_compiled(force=True, quiet=True)
        assert runtime.memory_maps()[0] < before, "the executables' code is unmapped"


def test_readme_commands_write_outside_the_repository_root():
    text = (REPO / "README.md").read_text()
    for line in text.splitlines():
        if line.startswith("agedi-jax ") and "--out" in line:
            out = line.split("--out", 1)[1].split()[0]
            assert out.startswith("runs/"), line
