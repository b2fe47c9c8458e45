"""llvq's update compressors in Flower (``pip install 'llvq[flower]'``): simulation and deployment.

>>> from llvq.federated.flower import FlowerSettings, simulate
>>> simulate(FlowerSettings(compressor="olala", rate=2, num_clients=10, rounds=5))

* :mod:`~llvq.federated.flower.client` — the ``ClientApp``: local SGD with the in-trainer
  simulator's :func:`~llvq.federated.client.local_update`, the update compressed by any
  registered compressor and sent as a packed bit stream (:mod:`llvq.federated.wire`).
* :mod:`~llvq.federated.flower.strategy` — :class:`CompressedFedAvg`: roster, per-client bit
  budgets (uniform or FPLD), validation, FedAvg, failed / dropped / rejected counts.
* :mod:`~llvq.federated.flower.server` — the ``ServerApp``: evaluation, TensorBoard,
  checkpoints and resume.
* :mod:`~llvq.federated.flower.simulation` — :func:`simulate` on Flower's simulation engine
  (Ray) and :func:`~llvq.federated.flower.simulation.run_local` in this process;
  :mod:`~llvq.federated.flower.deploy` — a SuperLink and SuperNodes on this machine
  (``python -m llvq.federated.flower.deploy``).
* :mod:`~llvq.federated.flower.job` — ``python train.py experiment=olala_flower``: a Flower
  run as a trainer job, taking the Hydra groups of the in-trainer simulator.
* :mod:`~llvq.federated.flower.local` — an in-process ``Grid`` (tests, the bench).

``docs/federated.md`` has the commands.
"""

try:
    import flwr  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("llvq.federated.flower needs Flower: pip install 'llvq[flower]' "
                      "(or 'flwr[simulation]')") from err

from llvq.federated.flower.settings import FlowerSettings
from llvq.federated.flower.simulation import simulate
from llvq.federated.flower.strategy import CompressedFedAvg

__all__ = ["CompressedFedAvg", "FlowerSettings", "simulate"]
