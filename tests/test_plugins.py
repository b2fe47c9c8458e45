"""Outside plugins: a throwaway distribution trains, exports and reloads through llvq.

The plugin is a real distribution on a temporary ``sys.path`` entry: a package with a quantizer
module, its configs, and a ``*.dist-info`` folder whose ``entry_points.txt`` declares the group
``llvq.plugins``. Everything that must discover it runs in a subprocess with ``PYTHONPATH``
pointing there (entry points are read once per process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, compose_train

PLUGIN = "llvq_plugin_demo"  # unlikely to clash with anything installed

QUANTIZER = '''
"""A rounding quantizer with a fixed step, registered from outside llvq."""
import os  # noqa: F401  (so that `<module>.os.system` resolves: a checkpoint must not use it)

import torch

from llvq.quantizers import Quantizer, QuantizerOutput, register


@register("myq")
class StepQuantizer(Quantizer):
    vector_codes = True

    def __init__(self, dim: int, step: float = 0.5) -> None:
        super().__init__(dim)
        self.register_buffer("step", torch.tensor(float(step)))

    def quantize(self, z):
        codes = self.encode_impl(z)
        q = self.decode(codes)
        return QuantizerOutput(z + (q - z).detach(), codes, ((q.detach() - z) ** 2).mean())

    def encode_impl(self, z):
        return torch.round(z / self.step).long()

    def decode(self, codes):
        return codes.float() * self.step
'''

VERIFY = '''
import sys
import torch
from llvq.checkpoints import UntrustedTargetError, load_checkpoint
from llvq.export import decode_export, load_autoencoder, load_export
from llvq.testing import check_quantizer

ckpt, export_dir = sys.argv[1], sys.argv[2]
export = load_export(export_dir)
q = export.quantizer()                      # `myq` is found through the entry point
assert type(q).__module__ == "{plugin}.quant", type(q)
check_quantizer(q, empty_batch=True)
model = load_autoencoder(ckpt)
assert model.hparams.quantizer["name"] == "myq"
with torch.no_grad():
    size = export.manifest["batch_size"]
    reference = torch.cat([model.decode(c) for c in export.codes.split(size)])
assert torch.equal(decode_export(model, export), reference)
assert torch.equal(q.decode(export.codes), model.quantizer.decode(export.codes))

# a checkpoint naming the plugin's class directly loads; one reaching os.system through it not
raw = torch.load(ckpt, map_location="cpu", weights_only=True)
raw["hyper_parameters"]["quantizer"] = {"_target_": "{plugin}.quant.StepQuantizer", "dim": 8}
torch.save(raw, "direct.ckpt")
assert type(load_autoencoder("direct.ckpt").quantizer).__name__ == "StepQuantizer"
raw["hyper_parameters"]["quantizer"] = {"_target_": "{plugin}.quant.os.system", "command": "x"}
torch.save(raw, "evil.ckpt")
try:
    load_checkpoint("evil.ckpt")
except UntrustedTargetError as err:
    assert "os.system" in str(err) or "posix" in str(err), err
else:
    raise SystemExit("a target resolving to os.system was accepted")
print("VERIFIED", export.manifest["num_samples"])
'''.replace("{plugin}", PLUGIN)


def _distribution(site: Path, package: str, files: dict[str, str], entry: str) -> Path:
    """A minimal installed distribution under ``site``: package files + dist-info metadata."""
    for rel, text in files.items():
        path = site / package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    info = site / f"{package}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[llvq.plugins]\n{package} = {entry}\n")
    return site


def _run(args: list[str], site: Path, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([sys.executable, *args], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def plugin_site(tmp_path: Path) -> Path:
    myq_yaml = "_target_: llvq.quantizers.build\nname: myq\ndim: ${model.latent_dim}\nstep: 0.5\n"
    return _distribution(tmp_path / "site", PLUGIN, {
        "__init__.py": "",
        "quant.py": QUANTIZER,
        "conf/__init__.py": "",
        "conf/model/quantizer/myq.yaml": myq_yaml,
    }, f"{PLUGIN}.quant")


def test_plugin_quantizer_trains_exports_and_reloads(plugin_site: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train = _run([str(ROOT / "train.py"), f"hydra.searchpath=[pkg://{PLUGIN}.conf]",
                  "model/quantizer=myq", "data=digits", "model.encoder.channels=[8]",
                  "model.encoder.num_residual=1", "model.latent_dim=8", "logger=csv",
                  "~callbacks.rich_progress_bar", "~callbacks.model_summary",
                  "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                  "trainer.limit_val_batches=1", f"paths.log_dir={tmp_path / 'logs'}",
                  f"hydra.run.dir={run_dir}"], plugin_site, ROOT)
    assert train.returncode == 0, train.stderr[-3000:]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    export_dir = tmp_path / "export"
    export = _run(["-m", "llvq.export", str(ckpt), "--out", str(export_dir), "--split", "val",
                   "--no-progress", "data.batch_size=128"], plugin_site, ROOT)
    assert export.returncode == 0, export.stderr[-3000:]
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert manifest["quantizer"]["name"] == "myq" and manifest["code_shape"] == [4, 4, 8]

    verify = _run(["-c", VERIFY, str(ckpt), str(export_dir)], plugin_site, tmp_path)
    assert verify.returncode == 0, verify.stderr[-3000:]
    assert f"VERIFIED {manifest['num_samples']}" in verify.stdout


def test_plugin_selected_without_a_config_file(tmp_path: Path) -> None:
    """No YAML: take any quantizer config and change its registry name (composition only; the
    name is looked up when the model is built, see the training test)."""
    cfg = compose_train(["model/quantizer=identity", "model.quantizer.name=myq",
                         "+model.quantizer.step=0.25"], tmp_path)
    assert dict(cfg.model.quantizer) == {"_target_": "llvq.quantizers.build", "name": "myq",
                                         "dim": 64, "step": 0.25}


def test_a_broken_plugin_is_named(tmp_path: Path) -> None:
    site = _distribution(tmp_path / "site", "llvq_plugin_broken",
                         {"__init__.py": "raise ImportError('missing dependency foo')\n"},
                         "llvq_plugin_broken")
    for args in (["-c", "from llvq.plugins import load_plugins; load_plugins()"],
                 ["-m", "llvq.export", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "e")],
                 ["-c", "from llvq.quantizers import build; build('no_such_q', dim=4)"]):
        result = _run(args, site, ROOT, timeout=120)
        assert result.returncode != 0
        assert "PluginError" in result.stderr, result.stderr[-2000:]
        assert "llvq_plugin_broken" in result.stderr and "missing dependency foo" in result.stderr
