"""Lightning callbacks: codebook utilization, reconstruction grids, lattice pictures, and the
resume machinery (periodic / on-signal ``last.ckpt``, random-generator states).

One callback per file, one YAML per callback under ``configs/callbacks/``; every one works
through the quantizer contract alone and skips (with an info log) modules it cannot serve.
"""

from llvq.callbacks.code_counter import CodeCounter, usage_stats
from llvq.callbacks.codebook_utilization import CodebookUtilization
from llvq.callbacks.lattice_view import LatticeView, lattice_basis
from llvq.callbacks.reconstruction_grid import ReconstructionGrid
from llvq.callbacks.resume_checkpoint import ResumeCheckpoint, resume_command
from llvq.callbacks.rng_state import RNGState

__all__ = ["CodeCounter", "CodebookUtilization", "LatticeView", "RNGState", "ReconstructionGrid",
           "ResumeCheckpoint", "lattice_basis", "resume_command", "usage_stats"]
