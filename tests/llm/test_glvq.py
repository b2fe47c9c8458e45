"""GLVQ on the tiny Llama: exact packing, honest bits, beats RTN, allocation, resume, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from llvq.llm.allocation import allocate_bits
from llvq.llm.baselines import rtn_quantize
from llvq.llm.glvq import quantize_layer
from llvq.llm.groups import dequantize
from llvq.llm.io import load_quantized, pack_bits, save_quantized, unpack_bits
from llvq.llm.models import ByteTokenizer, load_causal_lm, quantizable_linears
from llvq.llm.ptq import BlockwisePTQ, layer_storage_bits
from llvq.llm.settings import GLVQSettings
from llvq.runner import run

TINY = GLVQSettings(group_size=64, lattice_dim=4, row_scale=False, max_outer=4, inner_steps=5)


def _calib(n: int = 4, t: int = 64, seed: int = 0) -> torch.Tensor:
    from llvq.data.text import pydoc_documents

    ids = torch.tensor(list("\n".join(pydoc_documents()[:40]).encode()), dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - t, (n,), generator=g)
    return torch.stack([ids[s:s + t] for s in starts.tolist()])


def _quantized_tiny(bits: float, settings: GLVQSettings = TINY, salience: bool = True):
    model, tok = load_causal_lm("tiny-llama", seed=0)
    ptq = BlockwisePTQ(model, _calib(), bits, settings, salience=salience, batch_size=2)
    ptq.capture_inputs()
    for i in range(len(ptq.blocks)):
        list(ptq.quantize_block(i))
    return model, tok, ptq


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_pack_unpack_round_trip(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    v = torch.randint(0, 2**bits, (1001,), generator=g)
    packed = pack_bits(v, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(1001 * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, 1001), v)


@pytest.mark.parametrize("bits", [2, 3])
def test_export_load_is_exact_and_bits_are_honest(bits: int, tmp_path: Path) -> None:
    model, tok, ptq = _quantized_tiny(bits)
    numel = sum(r.weight.numel() for r in ptq.results.values())
    used = sum(layer_storage_bits(r) for r in ptq.results.values())
    assert used / numel <= bits + 1e-9  # the budget counts the side information
    assert used / numel > bits - 0.25  # and most of it is used
    for res in ptq.results.values():  # dequantize(codes, side info) is the weight we measured
        out = res.weight.shape[0]
        w = dequantize(res.codes, res.generator, res.mu, res.scale, res.row_scale, res.bits,
                       res.compand, out, TINY.group_size)
        assert torch.equal(w, res.weight)
    manifest = save_quantized(tmp_path / "q", model, ptq.results, tok, TINY.group_size)
    loaded, tok2 = load_quantized(tmp_path / "q")
    assert isinstance(tok2, ByteTokenizer)
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), name
    # bytes on disk: codes + side information (+ the safetensors header)
    size = manifest["size"]
    assert size["quantized_bytes"] * 8 >= used
    x = _calib(1, 32, seed=3)
    assert torch.equal(loaded(x).logits, model(x).logits)


def test_tampered_export_is_refused(tmp_path: Path) -> None:
    model, tok, ptq = _quantized_tiny(2)
    save_quantized(tmp_path / "q", model, ptq.results, tok, TINY.group_size)
    path = tmp_path / "q" / "quantized.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_quantized(tmp_path / "q")
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    load_quantized(tmp_path / "q")  # restored: accepted again

    tokenizer_files = [p for p in (tmp_path / "q" / "tokenizer").rglob("*") if p.is_file()]
    assert tokenizer_files
    original = tokenizer_files[0].read_bytes()
    tokenizer_files[0].write_bytes(original + b" ")
    with pytest.raises(ValueError, match="tokenizer.*sha256"):
        load_quantized(tmp_path / "q")
    tokenizer_files[0].write_bytes(original)

    manifest_file = tmp_path / "q" / "manifest.json"
    text = manifest_file.read_text()
    edited = json.loads(text)
    edited["group_size"] = edited["group_size"] * 2
    manifest_file.write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="modified after export"):
        load_quantized(tmp_path / "q")
    del edited["manifest_sha256"], edited["sha256"]
    manifest_file.write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="carries no checksums"):
        load_quantized(tmp_path / "q")
    manifest_file.write_text(text[:100])
    with pytest.raises(ValueError, match="damaged"):
        load_quantized(tmp_path / "q")


@pytest.mark.parametrize("bits", [2, 3])
def test_glvq_output_error_below_rtn(bits: int) -> None:
    """Block 0 on real calibration activations, at equal bits per weight (sum of the layers'
    relative output errors; per layer, a layer with a single group cannot use the budget's
    fractional part, so RTN can win one such layer at 3 bits on this random model).

    RTN with ``bits``-bit codes stores a float16 scale and a ``bits``-wide zero per row and 64
    columns, so it costs ``bits + (16 + bits) / 64`` bits per weight; GLVQ gets the same budget
    *including* its side information (its allocation mixes ``bits`` and ``bits + 1``-bit groups).
    """
    model, _ = load_causal_lm("tiny-llama", seed=0)
    ptq = BlockwisePTQ(model, _calib(8), bits, TINY, batch_size=4)
    ptq.capture_inputs()
    hs = ptq.hessians(0)
    ptq.bits = bits + (16 + bits) / 64
    glvq_err = rtn_err = glvq_bits = rtn_total = 0.0
    for n, lin in ptq.layers[0].items():
        w, h = lin.weight.detach().float(), hs[n].float()
        w_rtn, rtn_bits = rtn_quantize(w, bits, 64)
        alloc, _ = ptq.layer_bits(w, h, n)  # carries the model-wide budget, as in a run
        res = quantize_layer(w, h, alloc, TINY)
        glvq_bits += layer_storage_bits(res)
        rtn_total += rtn_bits * w.numel()
        for w_hat, acc in ((res.weight, "glvq"), (w_rtn, "rtn")):
            d = w - w_hat
            e = float(torch.trace(d @ h @ d.T) / torch.trace(w @ h @ w.T))
            if acc == "glvq":
                glvq_err += e
            else:
                rtn_err += e
        assert res.error <= res.error_init * 1.01  # never worse (up to float16 side info)
    assert glvq_bits <= rtn_total
    assert glvq_err < rtn_err


def test_glvq_at_two_code_bits_beats_rtn_with_fewer_bits() -> None:
    """At 2 bits GLVQ wins even with equal *code* bits (so fewer bits in all than RTN)."""
    model, _ = load_causal_lm("tiny-llama", seed=1)
    ptq = BlockwisePTQ(model, _calib(8), 2, TINY, batch_size=4)
    ptq.capture_inputs()
    hs = ptq.hessians(0)
    for n, lin in ptq.layers[0].items():
        w, h = lin.weight.detach().float(), hs[n].float()
        res = quantize_layer(w, h, torch.full((w.shape[1] // 64,), 2), TINY)
        w_rtn, _ = rtn_quantize(w, 2, 64)
        d1, d2 = w - res.weight, w - w_rtn
        assert torch.trace(d1 @ h @ d1.T) < torch.trace(d2 @ h @ d2.T), n


def test_act_order_is_left_to_right_on_the_group_permuted_problem() -> None:
    """``act_order`` only changes the order of the feedback pass: quantizing with it equals
    quantizing the problem whose groups were sorted by input energy left to right, with every
    group put back in place; and the stored codes dequantize to the returned weight."""
    from dataclasses import replace

    g = torch.Generator().manual_seed(3)
    out, gs, m = 16, 64, 4
    w = torch.randn(out, gs * m, generator=g)
    x = torch.randn(512, gs * m, generator=g) * torch.tensor([0.2, 3.0, 1.0, 0.5]).repeat_interleave(gs)
    h = x.T @ x
    bits = torch.tensor([2, 3, 2, 3])
    ordered = replace(TINY, act_order=True)
    res = quantize_layer(w, h, bits, ordered)
    order = torch.tensor([1, 2, 3, 0])  # decreasing energy
    cols = (order[:, None] * gs + torch.arange(gs)).flatten()
    ref = quantize_layer(w[:, cols], h[cols][:, cols], bits[order], TINY)
    torch.testing.assert_close(res.weight[:, cols], ref.weight)
    assert torch.equal(res.codes[order], ref.codes)
    assert torch.equal(res.bits, bits)
    rebuilt = dequantize(res.codes, res.generator, res.mu, res.scale, res.row_scale, res.bits,
                         res.compand, out, gs)
    torch.testing.assert_close(rebuilt, res.weight)
    plain = quantize_layer(w, h, bits, TINY)
    assert not torch.equal(plain.weight, res.weight)  # the order did change something


def test_salience_allocation_keeps_the_average() -> None:
    g = torch.Generator().manual_seed(0)
    m, n = 16, 1000
    sal = torch.rand(m, generator=g)
    est = {1: sal * 4, 2: sal * 1, 3: sal * 0.25}
    bits = allocate_bits(sal, 2 * m * n, n, estimate=est)
    assert bits.sum() == 2 * m
    assert (bits == 3).sum() == (bits == 1).sum() > 0
    assert bits[sal.argmax()] == 3 and bits[sal.argmin()] == 1
    plain = allocate_bits(sal, 2 * m * n, n)
    assert torch.equal(plain, torch.full((m,), 2))
    frac = allocate_bits(sal, 1.5 * m * n, n, estimate=est)  # fractional target
    assert frac.sum() == 24 and set(frac.tolist()) <= {1, 2, 3}
    assert bits.sum() * n <= 2 * m * n
    tight = allocate_bits(sal, 2 * m * n - 10, n, estimate=est)  # side info must be paid for
    assert tight.sum() * n <= 2 * m * n - 10


@pytest.mark.parametrize("bits", [1.5, 2])
def test_model_average_matches_target(bits: float) -> None:
    _, _, ptq = _quantized_tiny(bits, salience=True)
    numel = sum(r.weight.numel() for r in ptq.results.values())
    used = sum(layer_storage_bits(r) for r in ptq.results.values())
    assert bits - 0.25 < used / numel <= bits


def _tiny_cfg(compose_cfg, *extra: str):
    return compose_cfg("experiment=glvq_tiny", "logger=csv", "~callbacks.rich_progress_bar",
                       "~callbacks.model_summary", "model.eval.fp=false", "model.eval.baselines=[]",
                       "model.glvq.max_outer=3", "model.text.eval_tokens=512", *extra)


@pytest.mark.parametrize("case", ["plain", "incoherence+tune", "codebook+offload"])
def test_resume_after_an_interrupted_block_gives_the_same_result(compose_cfg, tmp_path: Path,
                                                                  case: str) -> None:
    incoherence = case != "plain"
    opt = [f"model.glvq.incoherence={incoherence}"]
    if incoherence:  # and tuning (norms and scales) after the last block: re-run after a
        # resume, the same
        opt += ["model.tune.steps=4", "model.tune.seq_len=64", "model.tune.scales=true"]
    if case == "codebook+offload":  # the generators and µ too; hidden states in files
        opt += ["model.tune.codebook=true", f"model.calib_offload={tmp_path / 'offload'}"]
    full = _tiny_cfg(compose_cfg, *opt, f"model.export_dir={tmp_path / 'full'}")
    run(full)
    crash = _tiny_cfg(compose_cfg, *opt, "callbacks.resume_checkpoint.every_n_steps=1",
                      "+callbacks.crash._target_=tests.test_train._CrashAt",
                      "+callbacks.crash.step=1", f"model.export_dir={tmp_path / 'crashed'}")
    crash.paths.output_dir = str(tmp_path / "crash_run")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(crash)
    saved = tmp_path / "crash_run" / "checkpoints" / "last.ckpt"  # written after block 0
    state = torch.load(saved, weights_only=False)
    assert state["glvq"]["done"] == [0]
    resumed = _tiny_cfg(compose_cfg, *opt, f"ckpt_path={saved}",
                        f"model.export_dir={tmp_path / 'resumed'}")
    resumed.paths.output_dir = str(tmp_path / "resumed_run")
    run(resumed)
    for f in ("quantized.safetensors", "rest.safetensors"):  # codes; norms (tuned or not)
        assert (tmp_path / "full" / f).read_bytes() == (tmp_path / "resumed" / f).read_bytes()
    metrics = json.loads((tmp_path / "full" / "manifest.json").read_text())["metrics"]
    assert ("final/ppl_untuned" in metrics) == incoherence


@pytest.mark.parametrize(("overrides", "error", "match"), [
    (["model.bits=0.5"], ValueError, "model.bits"),
    (["model.glvq.group_size=48"], ValueError, "model.glvq.group_size=48 does not divide"),
    (["model.lm.name=/no/such/model"], Exception, "model.lm.name"),
    (["model.glvq.lattice_dim=3"], ValueError, "model.glvq.lattice_dim"),
    (["+model.glvq.lattice=8"], ValueError, "model.glvq.lattice"),
    (["model.glvq.lr=0"], ValueError, "model.glvq.lr"),
    (["model.eval.baselines=[nope]"], ValueError, "unknown LLM baseline 'nope'.*rtn"),
    (["model.glvq.code=e8p"], ValueError, "set model.glvq.lattice_dim=8"),
    (["model.glvq.code=e8p", "model.glvq.lattice_dim=8", "model.bits=3"], ValueError,
     "model.glvq.code=e8p codes exactly 2 bits"),
])
def test_bad_settings_give_one_clear_error(overrides, error, match, compose_cfg) -> None:
    cfg = _tiny_cfg(compose_cfg, "++trainer.fast_dev_run=true", *overrides)
    with pytest.raises(error, match=match):
        run(cfg)


def test_model_without_linear_layers_is_refused() -> None:
    model, _ = load_causal_lm("tiny-llama", seed=0)
    for block in model.model.layers:
        for name, child in list(block.named_children()):
            if any(isinstance(m, torch.nn.Linear) for m in child.modules()):
                setattr(block, name, torch.nn.Identity())
    with pytest.raises(ValueError, match="no linear layers"):
        quantizable_linears(model, "stripped")
    with pytest.raises(ValueError, match="no linear layers"):
        BlockwisePTQ(model, _calib(), 2, TINY, name="stripped")


@pytest.mark.parametrize("feedback", [
    pytest.param(True, marks=pytest.mark.slow),  # the ranks share out the layers of each block
    pytest.param(False, marks=pytest.mark.slow),  # the ranks share out the groups of each layer
])
def test_ddp_cpu_shares_out_work_and_matches_one_process(feedback: bool, tmp_path: Path) -> None:
    """Two gloo processes: calibration windows and layers/groups are shared out; same quality."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    common = ["experiment=glvq_tiny", "callbacks=none", "logger=csv", "model.eval.fp=false",
              "model.eval.baselines=[]", "model.glvq.max_outer=3", "model.text.eval_tokens=512",
              f"model.glvq.error_feedback={str(feedback).lower()}", "model.glvq.group_size=32",
              f"paths.log_dir={tmp_path}", f"paths.data_dir={ROOT / 'data'}"]
    exports = {}
    for label, extra in (("one", []), ("ddp", ["trainer=ddp_cpu"])):
        exports[label] = tmp_path / label
        cmd = [sys.executable, str(ROOT / "train.py"), *common, *extra,
               f"model.export_dir={exports[label]}"]
        proc = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        if label == "ddp":
            assert "[rank 0/2] finished" in out and "[rank 1/2] finished" in out, out[-3000:]
    one, ddp = (json.loads((exports[k] / "manifest.json").read_text()) for k in ("one", "ddp"))
    for name, layer in one["layers"].items():  # H sums differ only in float rounding order
        assert ddp["layers"][name]["bits"] == layer["bits"], name
        assert abs(ddp["layers"][name]["error"] - layer["error"]) < 0.1 * layer["error"], name
    loaded, _ = load_quantized(exports["ddp"])  # rank 0's export is whole and consistent
    assert sum(p.numel() for p in loaded.parameters()) > 0


def test_offloaded_calibration_states_give_the_same_model(tmp_path) -> None:
    """model.calib_offload: hidden states in files between blocks, the same codes as in memory;
    the files are gone when the walk is."""
    import gc

    from llvq.llm.baselines import LLM_BASELINES
    from llvq.llm.ptq import quantize_with_baseline

    pytest.importorskip("transformers")
    ref, _, ref_ptq = _quantized_tiny(2)
    model, _ = load_causal_lm("tiny-llama", seed=0)
    ptq = BlockwisePTQ(model, _calib(), 2, TINY, batch_size=2, offload=tmp_path / "calib")
    ptq.capture_inputs()
    files = sorted(f.name for f in ptq.offload.iterdir())  # 4 windows / 2: hidden + kwargs each
    assert files == ["chunk_000000.pt", "chunk_000001.pt", "kwargs_000000.pt", "kwargs_000001.pt"]
    assert all(isinstance(c, Path) for c in ptq.chunks)
    kwargs_written = {f: f.stat().st_mtime_ns for f in ptq.offload.glob("kwargs_*")}
    for i in range(len(ptq.blocks)):
        list(ptq.quantize_block(i))
    assert {f: f.stat().st_mtime_ns for f in ptq.offload.glob("kwargs_*")} == kwargs_written
    assert set(ptq.results) == set(ref_ptq.results)
    for n, r in ptq.results.items():
        assert torch.equal(r.codes, ref_ptq.results[n].codes)
        assert torch.equal(r.weight, ref_ptq.results[n].weight)
    where = ptq.offload
    del ptq
    gc.collect()
    assert not where.exists() and (tmp_path / "calib").is_dir()
    # a calibrated baseline walks the same way
    outs = []
    for offload in (None, tmp_path / "gptq"):
        m, _ = load_causal_lm("tiny-llama", seed=0)
        quantize_with_baseline(m, _calib(), LLM_BASELINES.build("gptq", bits=3, group_size=64),
                               batch_size=2, offload=offload)
        outs.append({k: v.clone() for k, v in m.state_dict().items()})
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    del ref


def test_offload_must_be_a_directory(tmp_path) -> None:
    pytest.importorskip("transformers")
    model, _ = load_causal_lm("tiny-llama", seed=0)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="model.calib_offload"):
        BlockwisePTQ(model, _calib(), 2, TINY, offload=tmp_path / "f")
