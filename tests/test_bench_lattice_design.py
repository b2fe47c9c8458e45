"""Smoke test of bench/lattice_design.py: a tiny run writes its table, JSON and generators."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from llvq.lattices import load_generator

ROOT = Path(__file__).resolve().parents[1]


def test_lattice_design_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "res"
    cmd = [sys.executable, str(ROOT / "bench" / "lattice_design.py"), "--dims", "4", "--check-dims",
           "--steps", "20", "--batch", "64", "--eval-samples", "2000", "--rebase",
           "--methods", "householder", "--parts", "A2", "A2", "--threads", "2",
           "--save", str(tmp_path / "gens"), "--name", str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "| 4 | A2 + A2 |" in proc.stdout
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert rows[0]["parts"] == "A2 + A2" and rows[0]["householder"] > 0.0766  # D4 is the optimum
    g = load_generator(tmp_path / "gens" / "lattice_dim4_householder.safetensors")
    assert g.shape == (4, 4) and abs(float(torch.linalg.det(g).abs()) - 1.0) < 1e-9


def test_lattice_design_bench_parts_need_one_dim() -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "lattice_design.py"), "--dims", "4", "5",
           "--parts", "A2", "A2"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "--parts needs exactly one dimension" in proc.stderr


def test_lattice_design_bench_seeds_in_parallel(tmp_path: Path) -> None:
    """--seeds 0 1 --jobs 2: one row per seed (each its own generator file) and the spread."""
    out = tmp_path / "res"
    cmd = [sys.executable, str(ROOT / "bench" / "lattice_design.py"), "--dims", "5", "--check-dims",
           "--steps", "10", "--batch", "64", "--eval-samples", "1000", "--methods", "matrix_exp",
           "--seeds", "0", "1", "--jobs", "2", "--save", str(tmp_path / "gens"), "--name", str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "best / median / worst" in proc.stdout
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["dim"], r["seed"]) for r in rows] == [(5, 0), (5, 1)]
    assert rows[0]["matrix_exp"] != rows[1]["matrix_exp"]
    for seed in (0, 1):
        assert (tmp_path / "gens" / f"lattice_dim5_matrix_exp_seed{seed}.safetensors").is_file()


def test_lattice_design_bench_glue(tmp_path: Path) -> None:
    """--glue: the glued lattice's column and index, a fusion started from it, its generator."""
    out = tmp_path / "res"
    cmd = [sys.executable, str(ROOT / "bench" / "lattice_design.py"), "--dims", "8", "--check-dims",
           "--glue", "--glue-trials", "2", "--parts", "D4", "D4", "--steps", "5", "--batch", "64",
           "--eval-samples", "4000", "--methods", "householder", "--save", str(tmp_path / "gens"),
           "--name", str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "| index | glue |" in proc.stdout and "| 2^2 |" in proc.stdout
    row = json.loads(out.with_suffix(".json").read_text())["rows"][0]
    assert row["glue_index_bits"] == 2 and row["glue"] < row["splice"] - 0.002  # E8 vs D4 + D4
    assert abs(row["householder"] - row["glue"]) < 0.001  # 5 small steps from the glued start
    assert (tmp_path / "gens" / "lattice_dim8_glue.safetensors").is_file()
