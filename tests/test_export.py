"""Export → load → decode is exact; tampering is refused; export → prior → sample end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from torch.utils.data import DataLoader, Subset

from llvq.checkpoints import UntrustedTargetError, check_targets, trusted_packages
from llvq.codes_format import ExportExistsError, manifest_digest, prepare_out_dir
from llvq.export import (
    ExportIntegrityError,
    decode_export,
    export_codes,
    load_autoencoder,
    load_checkpoint,
    load_export,
    split_loader,
)
from llvq.export import run_cli as export_main
from llvq.runner import run
from llvq.sample import grid_size
from llvq.sample import run_cli as sample_main
from tests.conftest import compose_train

TINY = ["data=digits", "model.encoder.channels=[8]", "model.encoder.num_residual=1",
        "model.latent_dim=8"]  # 8×8 digits -> 4×4 grid of 8-wide latents
QUANTIZERS = {"llvq": [], "vq": ["model.quantizer.codebook_size=16"],
              "e8": ["model.quantizer.dither=true", "model.quantizer.scale=0.3"],
              "projected": ["model.quantizer.inner.scale=0.3"]}  # E8 on 8 projected coordinates


def _model_and_loader(name: str, tmp_path: Path):
    cfg = compose_train([*TINY, f"model/quantizer={name}", *QUANTIZERS.get(name, [])], tmp_path)
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    full = split_loader(instantiate(cfg.data), "val", batch_size=64)
    return model, DataLoader(Subset(full.dataset, range(160)), batch_size=64)  # 3 batches


def _save_ckpt(model, path: Path) -> Path:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_round_trip_reproduces_reconstructions_exactly(name: str, tmp_path: Path) -> None:
    model, loader = _model_and_loader(name, tmp_path)
    manifest = export_codes(model, loader, tmp_path / "export", progress=False)
    export = load_export(tmp_path / "export")

    with torch.no_grad():
        reference = torch.cat([model.decode(model.encode(x)) for x, _ in loader])
        forward = torch.cat([model(x)[0] for x, _ in loader])
    assert torch.equal(decode_export(model, export), reference)
    torch.testing.assert_close(reference, forward, rtol=1e-4, atol=1e-5)

    # the same through a model rebuilt from a checkpoint, read with weights_only=True
    reloaded = load_autoencoder(_save_ckpt(model, tmp_path / "ae.ckpt"))
    assert torch.equal(decode_export(reloaded, export), reference)
    # and through the quantizer rebuilt from quantizer.safetensors alone
    q = export.quantizer()
    assert torch.equal(q.decode(export.codes[:64]), model.quantizer.decode(export.codes[:64]))

    n = len(loader.dataset)
    assert manifest["num_samples"] == n and manifest["grid"] == [4, 4]
    assert manifest["quantizer"]["name"] == name and manifest["dtype"] == "int64"
    assert torch.equal(export.vocab[export.tokens], export.codes)
    assert int(export.vocab_counts.sum()) == n * 16
    assert export.labels.shape == (n,) and bool((export.labels >= 0).all())  # digits are labelled
    vector = name != "vq"
    assert export.codes.shape == ((n, 4, 4, 8) if vector else (n, 4, 4))
    if vector:  # the vocabulary holds exactly the lattice points used, most frequent first
        assert manifest["vocabulary"]["size"] == manifest["counts"]["distinct"]
        assert bool((export.vocab_counts[:-1] >= export.vocab_counts[1:]).all())


def test_tampered_or_missing_files_are_refused(tmp_path: Path) -> None:
    model, loader = _model_and_loader("llvq", tmp_path)
    out = tmp_path / "export"
    export_codes(model, loader, out, progress=False)
    for name in ("codes.safetensors", "quantizer.safetensors"):
        data = bytearray((out / name).read_bytes())
        original = bytes(data)
        data[-1] ^= 0x01
        (out / name).write_bytes(bytes(data))
        with pytest.raises(ExportIntegrityError, match=f"{name} does not match its manifest"):
            load_export(out)
        (out / name).write_bytes(original)
    load_export(out)  # restored: accepted again
    (out / "quantizer.safetensors").unlink()
    with pytest.raises(ExportIntegrityError, match="missing"):
        load_export(out)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_export(tmp_path)


def test_manifest_is_covered_by_its_own_checksum(tmp_path: Path) -> None:
    """Editing the manifest (its quantizer config, its checksums) or damaging it is refused."""
    model, loader = _model_and_loader("llvq", tmp_path)
    out = tmp_path / "export"
    export_codes(model, loader, out, progress=False)
    file = out / "manifest.json"
    original = file.read_text()
    manifest = json.loads(original)
    assert manifest["manifest_sha256"] == manifest_digest(manifest)

    edited = json.loads(original)
    edited["quantizer"]["config"] = {**edited["quantizer"].get("config", {}), "beta": 123.0}
    file.write_text(json.dumps(edited))
    with pytest.raises(ExportIntegrityError, match="modified after export"):
        load_export(out)

    stripped = json.loads(original)
    del stripped["manifest_sha256"]
    for entry in stripped["files"].values():
        entry.pop("sha256")
    file.write_text(json.dumps(stripped))
    with pytest.raises(ExportIntegrityError, match="carries no checksums"):
        load_export(out)

    file.write_text(original[: len(original) // 2])
    with pytest.raises(ExportIntegrityError, match="damaged"):
        load_export(out)
    file.write_text(original)
    load_export(out)  # restored: accepted again


def test_an_existing_export_is_not_replaced_without_force(tmp_path: Path) -> None:
    model, loader = _model_and_loader("llvq", tmp_path)
    out = tmp_path / "export"
    export_codes(model, loader, out, progress=False)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(ExportExistsError, match="already holds an export"):
        export_codes(model, loader, out, progress=False)
    assert (out / "manifest.json").read_bytes() == before
    export_codes(model, loader, out, progress=False, overwrite=True)
    load_export(out)
    with pytest.raises(NotADirectoryError, match="is a file"):
        prepare_out_dir(out / "manifest.json")


def test_cli_checks_out_before_loading_and_prints_one_line(tmp_path: Path, capsys) -> None:
    """``llvq-export`` refuses an existing --out before reading the checkpoint (which here does
    not even load) and reports bad input in one line with exit status 1."""
    model, loader = _model_and_loader("llvq", tmp_path)
    out = tmp_path / "export"
    export_codes(model, loader, out, progress=False)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ExportExistsError, match="--force"):
        export_main([str(junk), "--out", str(out)])
    import llvq.export

    with pytest.raises(SystemExit) as exit_info:
        llvq.export.main([str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "new")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("llvq-export: error: checkpoint") and "does not exist" in err
    assert len(err.strip().splitlines()) == 1


def test_identity_has_nothing_to_export(tmp_path: Path) -> None:
    model, loader = _model_and_loader("identity", tmp_path)
    with pytest.raises(ValueError, match="no integer codes"):
        export_codes(model, loader, tmp_path / "export", progress=False)


@pytest.mark.parametrize("target", ["os.system", "llvq.cli.os.system", "llvq.codes_format.json",
                                    "llvq.no_such_module.Thing"])
def test_checkpoint_may_only_name_llvq_classes(target: str, tmp_path: Path) -> None:
    """A target must start with a trusted package AND resolve to a class or function defined
    there: ``llvq.cli.os.system`` names llvq but is :func:`os.system`."""
    model, _ = _model_and_loader("vq", tmp_path)
    hparams = {**dict(model.hparams), "encoder": {"_target_": target, "command": "true"}}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams}, tmp_path / "x.ckpt")
    with pytest.raises(UntrustedTargetError, match="_target_="):
        load_checkpoint(tmp_path / "x.ckpt")


def test_trusted_targets_are_llvq_and_loaded_plugins() -> None:
    check_targets({"_target_": "llvq.quantizers.build", "q": [{"_target_": "llvq.nn.ConvEncoder"}]},
                  "cfg")
    with pytest.raises(UntrustedTargetError, match="refusing to instantiate"):
        check_targets({"a": [{"_target_": "json.loads"}]}, "cfg")
    # a plugin's package is trusted once loaded (the subprocess test in test_plugins.py loads one)
    check_targets({"_target_": "json.loads"}, "cfg", trusted={"llvq", "json"})
    assert "llvq" in trusted_packages()


def test_export_prior_sample_end_to_end(tmp_path: Path) -> None:
    common = ["logger=csv", "~callbacks.rich_progress_bar", "~callbacks.model_summary",
              "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    cfg = compose_train([*TINY, *common], tmp_path / "ae")
    run(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"

    export_dir = tmp_path / "export"
    manifest = export_main([str(ckpt), "--out", str(export_dir), "--data", "digits",
                            "--split", "train", "--no-progress", "data.batch_size=128"])
    assert manifest["checkpoint"] == str(ckpt.resolve())
    assert json.loads((export_dir / "manifest.json").read_text())["split"] == "train"

    dev = compose_train(["experiment=prior", f"data.path={export_dir}", "logger=csv",
                         "++trainer.fast_dev_run=true"], tmp_path / "dev")
    assert "val/bits_per_latent" in run(dev)

    prior_cfg = compose_train(["experiment=prior", f"data.path={export_dir}", *common],
                              tmp_path / "prior")
    metrics = run(prior_cfg)
    assert 0 < metrics["val/bits_per_latent"] < 20
    prior_ckpt = Path(prior_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"

    png = sample_main([str(prior_ckpt), "--num", "6", "--out", str(tmp_path / "s.png"),
                       "--no-progress"])
    with Image.open(png) as image:
        assert image.size == grid_size(6, 8, 8)[::-1]  # PIL: (width, height)
        assert image.size == (3 * 10 + 2, 2 * 10 + 2)


def test_console_entry_points_return_none(monkeypatch) -> None:
    """Console scripts run ``sys.exit(main())``: a returned manifest would exit with status 1."""
    import llvq.export
    import llvq.sample

    monkeypatch.setattr(llvq.export, "run_cli", lambda argv=None: {"manifest": 1})
    monkeypatch.setattr(llvq.sample, "run_cli", lambda argv=None: Path("x.png"))
    assert llvq.export.main([]) is None
    assert llvq.sample.main([]) is None


def test_codes_are_stored_narrow_and_loaded_as_int64(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from llvq.codes_format import load_export
    from tests.callbacks._fake import write_tiny_export

    path = write_tiny_export(tmp_path / "export")
    stored = load_file(str(path / "codes.safetensors"))
    assert stored["codes"].dtype == torch.int8  # small lattice coordinates
    assert json.loads((path / "manifest.json").read_text())["stored_dtypes"]["codes"] == "int8"
    loaded = load_export(path)
    assert loaded.codes.dtype == torch.int64 and torch.equal(loaded.codes, stored["codes"].long())


def test_export_loads_the_plugins_of_the_checkpoint_run(tmp_path: Path) -> None:
    from llvq.export import run_plugins

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    assert run_plugins(ckpt) == []  # no saved config: nothing to add
    (tmp_path / "run" / ".hydra").mkdir()
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("plugins: [mypkg.quantizers]\n")
    assert run_plugins(ckpt) == ["mypkg.quantizers"]
