"""llvq's compressors on Flower: bytes on the wire, framing overhead and time per round.

Digits, ``--clients`` clients (Dirichlet alpha = 1), the ``--model`` client model, ``--rounds``
rounds of one local epoch, R = ``--rate`` bits per coordinate. For every compressor (``none`` is
the uncompressed FedAvg baseline) it runs

* the in-trainer simulator (:class:`llvq.modules.FederatedModule`, ``run_round``) and
* Flower's own FedAvg with uncompressed fp32 ``state_dict`` replies (the baseline), and
* the Flower apps (``CompressedFedAvg`` + the ``ClientApp``) through the in-process grid (no
  transport): per client and round the nominal rate ``ceil(bits / 8)`` bytes (``R L`` bits per
  index plus fp32 side information), the payload stream (:mod:`llvq.federated.wire`: + header),
  and the reply as Flower puts it on the wire: the sum of its deflated objects (message,
  records, arrays: what a SuperNode pushes to the SuperLink, before HTTP framing);

checks that both give the same global model bit for bit, and times a round (median over the
rounds after the first; Flower's first round also holds the roster query). ``--ray`` adds a run
on Flower's simulation engine (Ray) for ``--ray-compressor`` (start-up reported apart), and
``--deploy`` one on a SuperLink and SuperNodes started on 127.0.0.1
(:mod:`llvq.federated.flower.deploy`). Test accuracy is in the JSON only: after 3 rounds the
default CNN still predicts one or two classes, so it says nothing about the compressors.

    python bench/flower_wire.py                        # ~2 min on 2 busy cores
    python bench/flower_wire.py --model linear --deploy --name flower_wire_linear   # + loopback deployment
    python bench/flower_wire.py --rounds 2 --compressors none lattice --no-ray

Writes bench/results/flower_wire.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils import parameters_to_vector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, write_result

from llvq.federated.flower.client import client_app
from llvq.federated.flower.local import LocalGrid
from llvq.federated.flower.server import FlowerServer
from llvq.federated.flower.settings import FlowerSettings
from llvq.federated.flower.simulation import simulate
from llvq.federated.wire import unpack_payload
from llvq.modules.federated import FederatedModule


def deflated_bytes(msg: Any) -> int:
    """Bytes of a Flower message as its objects are pushed (message + records + arrays)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


class MeasuringGrid(LocalGrid):
    """The in-process grid, recording the deflated size of every train message and reply."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.down: list[int] = []
        self.up: list[int] = []
        self.metrics: list[int] = []

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list:
        messages = list(messages)
        train = [m for m in messages if m.metadata.message_type == "train"]
        self.down += [deflated_bytes(m) for m in train]
        replies = list(super().send_and_receive(messages, timeout=timeout))
        if train:
            ok = [r for r in replies if not r.has_error()]
            self.up += [deflated_bytes(r) for r in ok]
            self.metrics += [len(r.content["metrics"].deflate()) for r in ok]
        return replies


def in_trainer(opts: dict[str, Any], rounds: int) -> tuple[torch.Tensor, list[float]]:
    m = FederatedModule(**opts, rounds=rounds)
    times = []
    for r in range(rounds):
        t0 = time.perf_counter()
        avg, _ = m.run_round(r)
        m.apply_update(avg)
        times.append(time.perf_counter() - t0)
    return parameters_to_vector(m.net.parameters()).detach().clone(), times


def flower_local(s: FlowerSettings) -> dict[str, Any]:
    server = FlowerServer(s)
    grid = MeasuringGrid(client_app(s), s.num_clients)
    w = server.run(grid)
    rounds = [server.rounds[r] for r in sorted(server.rounds)]
    payloads = list(server.strategy.payloads.values())  # the last round's streams
    nominal = [math.ceil(unpack_payload(p).bits / 8) for p in payloads]
    return {"weights": w, "times": [r["round/seconds"] for r in rounds],
            "payload_bytes": statistics.mean(len(p) for p in payloads),
            "nominal_bytes": statistics.mean(nominal),
            "message_bytes": statistics.mean(grid.up), "down_bytes": statistics.mean(grid.down),
            "metrics_bytes": statistics.mean(grid.metrics),
            "acc": rounds[-1]["test/acc"]}


def stock_fedavg(s: FlowerSettings) -> dict[str, Any]:
    """Flower's own FedAvg, uncompressed: each client replies its fp32 ``state_dict`` as an
    ``ArrayRecord`` plus ``num-examples`` (the baseline); the same local SGD as llvq's clients."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp.strategy import FedAvg
    from torch.nn.utils import vector_to_parameters

    from llvq.federated.client import local_update, round_seed
    from llvq.federated.compressors import NoneCompressor
    from llvq.federated.flower.settings import client_data, initial_model, test_data

    app = ClientApp()
    net = initial_model(s)

    @app.train()
    def train(msg: Message, context: Any) -> Message:
        u = int(context.node_config["partition-id"])
        x, y = client_data(s, u)
        net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        vec = parameters_to_vector(net.parameters()).detach().clone()
        seed = round_seed(s.seed, int(msg.content["config"]["server-round"]) - 1, u)
        _, h = local_update(net, vec, x, y, NoneCompressor(), seed, s.local_lr, s.local_epochs,
                            s.local_steps, s.batch_size)
        vector_to_parameters(vec + h, net.parameters())
        return Message(RecordDict({"arrays": ArrayRecord(net.state_dict()),
                                   "metrics": MetricRecord({"num-examples": len(y)})}),
                       reply_to=msg)

    x_test, y_test = test_data(s)
    server_net = initial_model(s)
    times: list[float] = []
    acc: list[float] = []
    clock = [time.perf_counter()]

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round > 0:
            times.append(time.perf_counter() - clock[0])
            server_net.load_state_dict(arrays.to_torch_state_dict())
            with torch.no_grad():
                acc.append(float((server_net(x_test).argmax(1) == y_test).float().mean()))
        clock[0] = time.perf_counter()
        return None

    grid = MeasuringGrid(app, s.num_clients)
    grid.metrics = []
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=s.num_clients,
                      min_available_nodes=s.num_clients)
    strategy.start(grid, ArrayRecord(initial_model(s).state_dict()), num_rounds=s.rounds,
                   timeout=s.timeout, evaluate_fn=evaluate)
    nominal = 4 * sum(p.numel() for p in server_net.parameters())
    return {"times": times, "acc": acc[-1], "message_bytes": statistics.mean(grid.up),
            "down_bytes": statistics.mean(grid.down), "nominal_bytes": nominal}


def _median_after_first(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--compressors", nargs="+", default=["none", "uniform", "lattice", "olala"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--model", default="cnn")
    p.add_argument("--rate", type=float, default=2.0)
    p.add_argument("--olala-steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ray", dest="ray", action="store_false")
    p.add_argument("--ray-compressor", default="lattice")
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--deploy", action="store_true",
                   help="also a SuperLink + SuperNodes on loopback for --ray-compressor (slow)")
    p.add_argument("--name", default="flower_wire")
    args = p.parse_args()
    torch.set_num_threads(1)
    base = {"dataset": "digits", "model": args.model, "num_clients": args.clients, "alpha": 1.0,
            "rate": args.rate, "local_epochs": 1, "olala_steps": args.olala_steps, "seed": args.seed}
    rows = []
    for comp in args.compressors:
        opts = {**base, "compressor": comp}
        w_ref, t_ref = in_trainer(opts, args.rounds)
        s = FlowerSettings(**opts, rounds=args.rounds, timeout=600.0)
        fl = flower_local(s)
        numel = int(w_ref.numel())
        row = {
            "compressor": comp, "P": numel, "nominal B": fl["nominal_bytes"],
            "payload B": fl["payload_bytes"], "header B": fl["payload_bytes"] - fl["nominal_bytes"],
            "Flower reply B": fl["message_bytes"],
            "Flower framing B": fl["message_bytes"] - fl["payload_bytes"],
            "of it metrics B": fl["metrics_bytes"],
            "reply / nominal": fl["message_bytes"] / fl["nominal_bytes"],
            "down B": fl["down_bytes"],
            "in-trainer s/round": _median_after_first(t_ref),
            "Flower local s/round": _median_after_first(fl["times"]),
            "identical": bool(torch.equal(w_ref.float(), fl["weights"].float())),
            "acc": fl["acc"],
        }
        rows.append(row)
        print(row, flush=True)
    stock = stock_fedavg(FlowerSettings(**{**base, "compressor": "none"}, rounds=args.rounds,
                                        timeout=600.0))
    rows.append({"compressor": "Flower FedAvg (fp32 state_dict)", "nominal B": stock["nominal_bytes"],
                 "Flower reply B": stock["message_bytes"],
                 "Flower framing B": stock["message_bytes"] - stock["nominal_bytes"],
                 "reply / nominal": stock["message_bytes"] / stock["nominal_bytes"],
                 "down B": stock["down_bytes"], "Flower local s/round": _median_after_first(stock["times"]),
                 "acc": stock["acc"]})
    print(rows[-1], flush=True)
    ray: dict[str, Any] | None = None
    if args.ray:
        s = FlowerSettings(**{**base, "compressor": args.ray_compressor}, rounds=args.rounds,
                           timeout=600.0)
        out = simulate(s, num_cpus=args.ray_cpus)
        times = [out["server"].rounds[r]["round/seconds"] for r in sorted(out["server"].rounds)]
        w_ref, _ = in_trainer({**base, "compressor": args.ray_compressor}, args.rounds)
        ray = {"compressor": args.ray_compressor, "total_s": out["seconds"],
               "round_s": times, "median_round_s_after_first": _median_after_first(times),
               "identical": bool(torch.equal(w_ref.float(), out["server"].final.float()))}
        print("ray:", ray, flush=True)
    deploy: dict[str, Any] | None = None
    if args.deploy:
        import json
        import tempfile

        from llvq.federated.flower.deploy import LocalDeployment

        with tempfile.TemporaryDirectory() as tmp:
            s = FlowerSettings(**{**base, "compressor": args.ray_compressor}, rounds=args.rounds,
                               timeout=600.0, output_dir=f"{tmp}/results")
            t0 = time.perf_counter()
            with LocalDeployment(s, f"{tmp}/deploy") as dep:
                dep.run(timeout=1200)
            total = time.perf_counter() - t0
            hist = json.loads(Path(f"{tmp}/results/history.json").read_text())
            w = torch.load(f"{tmp}/results/checkpoints/last.pt", weights_only=True)["weights"]
        times = [hist[k]["round/seconds"] for k in sorted(hist, key=int)]
        w_ref, _ = in_trainer({**base, "compressor": args.ray_compressor}, args.rounds)
        deploy = {"compressor": args.ray_compressor, "total_s": total, "round_s": times,
                  "median_round_s_after_first": _median_after_first(times),
                  "payload_bytes_per_client": hist[str(args.rounds - 1)]["wire/bytes_per_client"],
                  "identical": bool(torch.equal(w_ref.float(), w.float()))}
        print("deploy:", deploy, flush=True)
    cols = ["compressor", "nominal B", "payload B", "header B", "Flower reply B", "Flower framing B",
            "of it metrics B", "reply / nominal", "in-trainer s/round", "Flower local s/round", "identical"]
    table = markdown_table(rows, cols)
    print(table)
    path = write_result(args.name, {"command": "python " + " ".join(sys.argv), "settings": {
        **base, "rounds": args.rounds}, "rows": rows, "ray": ray, "deploy": deploy, "table": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
