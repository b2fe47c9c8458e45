"""Run by test_codebook_utilization.py: CodebookUtilization under 2-process CPU DDP (gloo).

Rank 0 sees the even samples of ``hand_made_latents`` (one distinct code), rank 1 the odd ones
(four); after the reduction both ranks must report the union: 5 distinct, H = 2 bits.
Each rank writes its callback history to ``<out>/rank<r>.json``.
"""

import json
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.strategies import DDPStrategy

from llvq.callbacks import CodebookUtilization
from tests.callbacks._fake import CodesModel, hand_made_latents, loaders, unit_lattice

if __name__ == "__main__":
    out = Path(sys.argv[1])
    cb = CodebookUtilization(histogram=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, max_epochs=1, limit_train_batches=1,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
                        strategy=DDPStrategy(process_group_backend="gloo"))
    train, val = loaders(hand_made_latents(), batch_size=2)
    trainer.fit(CodesModel(unit_lattice(2)), train, val)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(cb.history))
