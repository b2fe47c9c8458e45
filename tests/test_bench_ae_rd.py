"""bench/ae_rd.py's command line: extra runs parse into labels and overrides, bad timing is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from ae_rd import parse_run


def test_run_items_split_outside_brackets_and_label_by_last_key() -> None:
    label, name, overrides = parse_run(
        "vqp_fsq:++model.quantizer.levels=[8,5,5],model.quantizer.inner.beta=0.05")
    assert name == "vqp_fsq"
    assert overrides == ["++model.quantizer.levels=[8,5,5]", "model.quantizer.inner.beta=0.05"]
    assert label == "vqp_fsq levels=[8,5,5] beta=0.05"  # values keep their dots
    assert parse_run("myq") == ("myq", "myq", [])
    assert parse_run("projected:++model.quantizer.bound=1.0@projected_bounded") == (
        "projected_bounded bound=1.0", "projected", ["++model.quantizer.bound=1.0"])


def test_too_few_overhead_steps_is_an_error_naming_the_flag() -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "ae_rd.py"), "--overhead-steps", "2", "--no-save"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "--overhead-steps 2" in proc.stderr


def _result(path: Path, labels: list[str], steps: int = 2000) -> Path:
    summary = [{"label": lab, "quantizer": lab.split()[0], "val_mse": 0.002 + i / 1000,
                "val_mse_sd": 1e-4, "bits_per_vector": 3.0 + i, "bits_per_vector_sd": 0.1}
               for i, lab in enumerate(labels)]
    path.write_text(json.dumps({"machine": {}, "settings": {"steps": steps, "seeds": [0, 1, 2]},
                                "summary": summary, "runs": [{"label": lab} for lab in labels]}))
    return path


def test_merged_results_share_one_plot_and_json(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from ae_rd import replot

    a = _result(tmp_path / "a.json", ["vqp_vq K=16", "projected beta=0.05"])
    b = _result(tmp_path / "b.json", ["projected_bounded bound=1.0"])
    replot(str(tmp_path / "m"), [a, b])
    merged = json.loads((tmp_path / "m.json").read_text())
    assert [s["label"] for s in merged["summary"]] == [
        "vqp_vq K=16", "projected beta=0.05", "projected_bounded bound=1.0"]
    assert merged["merged_from"] == [str(a), str(b)] and len(merged["runs"]) == 3
    assert (tmp_path / "m.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="different --steps"):
        replot(str(tmp_path / "m2"), [a, _result(tmp_path / "c.json", ["x y"], steps=400)])
    with pytest.raises(SystemExit, match="appears in two files"):
        replot(str(tmp_path / "m3"), [a, a])
