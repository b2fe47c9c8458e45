"""GPTQModel (the maintained GPTQ library) on a saved model, for ``bench/llm_ptq.py``.

Runs in its own virtual environment, because GPTQModel needs protobuf >= 7 and Flower (llvq's
``flower`` extra) needs protobuf < 7, so the two cannot share one::

    python -m venv .venv-gptq && .venv-gptq/bin/pip install "gptqmodel>=7.7"

``bench/llm_ptq.py`` saves the model it evaluates (Hugging Face format) and its calibration
windows, calls this script with that environment's Python, and reads back the dequantized
weights, so GPTQModel sees exactly the model and tokens GLVQ sees and the perplexity is computed
by the same code for every method::

    .venv-gptq/bin/python bench/gptqmodel_peer.py --model-dir M --calib calib.pt --bits 3 \\
        --group-size 64 --out weights.safetensors

Writes ``weights.safetensors`` (each quantized linear layer's dequantized weight, float32, by
module name) and ``weights.json`` (options, seconds, and the bits of every layer as GPTQModel
stores it: packed ``qweight`` and ``qzeros``, float16 ``scales``, int32 ``g_idx``). On a 2-core
machine GPTQModel needs ``GPTQMODEL_CPU_WORKERS=2`` (set here when unset).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(min(os.cpu_count() or 1, 2)))


def _bits(t) -> int:
    return t.numel() * t.element_size() * 8


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--calib", required=True, help="a torch file holding an (N, T) int64 tensor")
    p.add_argument("--bits", type=int, required=True)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--desc-act", action="store_true", help="act-order (GPTQ's column order)")
    p.add_argument("--asym", action="store_true", help="asymmetric grid (default: GPTQModel's sym)")
    p.add_argument("--damp", type=float, default=0.01)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import torch
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    from gptqmodel import __version__ as version
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ids = torch.load(args.calib)
    calib = [{"input_ids": row.tolist(), "attention_mask": [1] * row.numel()} for row in ids]
    qcfg = QuantizeConfig(bits=args.bits, group_size=args.group_size, desc_act=args.desc_act,
                          sym=not args.asym, damp_percent=args.damp,
                          offload_to_disk=False)  # keep the quantized layers in memory
    start = time.perf_counter()
    model = GPTQModel.load(args.model_dir, qcfg, device="cpu")
    model.quantize(calib, batch_size=4)
    seconds = time.perf_counter() - start
    # Save and load back, as a user deploys it: right after quantize() on CPU, GPTQModel 7.7's
    # in-memory layers dequantize with every zero point one step off (their own forward too:
    # SmolLM2 perplexity ~1e9); the saved checkpoint loads correctly.
    saved = tempfile.mkdtemp(prefix="gptqmodel-")
    model.save(saved)
    del model
    model = GPTQModel.load(saved, device="cpu", backend=BACKEND.TORCH)
    weights, layers = {}, {}
    for name, m in model.model.named_modules():
        if not hasattr(m, "qweight"):
            continue
        w = m.dequantize_weight().T.float().contiguous()  # (out, in)
        weights[name] = w
        stored = {k: _bits(getattr(m, k)) for k in ("qweight", "qzeros", "scales", "g_idx")
                  if isinstance(getattr(m, k, None), torch.Tensor)}
        layers[name] = {"weights": w.numel(), "bits": sum(stored.values()), "stored": stored}
    if not weights:
        raise SystemExit("GPTQModel produced no quantized layers")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".tmp", delete=False) as tmp:
        pass
    save_file(weights, tmp.name)
    os.replace(tmp.name, out)
    total = sum(v["bits"] for v in layers.values())
    numel = sum(v["weights"] for v in layers.values())
    out.with_suffix(".json").write_text(json.dumps({
        "gptqmodel": version, "torch": torch.__version__, "bits": args.bits,
        "group_size": args.group_size, "desc_act": args.desc_act, "sym": not args.asym,
        "damp": args.damp, "seconds": seconds, "bits_per_weight": total / numel,
        "weights": numel, "layers": layers}, indent=1) + "\n")
    print(f"GPTQModel {version}: {len(weights)} layers, {total / numel:.4f} bits/weight, "
          f"{seconds:.0f} s")


if __name__ == "__main__":
    main()
