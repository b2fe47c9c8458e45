"""``LocalGrid``: a Flower ``Grid`` that runs the ``ClientApp`` in this process, one node per client.

It delivers each message to ``client_app(message, context)`` of the destination node, in turn,
with the node's ``partition-id``; an exception becomes an error reply (as a SuperNode sends one),
and a client that takes longer than the round's timeout is treated as not having answered (its
late reply is dropped). No engine, no sockets: the fast tests and the bench's "no transport"
column drive :class:`~llvq.federated.flower.strategy.CompressedFedAvg` through it, with the
same strategy and ClientApp code as a real SuperLink.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["LocalGrid"]


class LocalGrid(Grid):
    """``num_nodes`` in-process nodes with ids ``1000 + partition`` running ``client_app``.

    Args:
        client_app: the ``ClientApp`` each node runs.
        num_nodes: nodes; node ``i`` gets ``partition-id = i``.
    """

    def __init__(self, client_app: ClientApp, num_nodes: int) -> None:
        self.app = client_app
        self.nodes = {1000 + i: i for i in range(num_nodes)}
        self.contexts = {n: Context(run_id=1, node_id=n, state=RecordDict(), run_config={},
                                    node_config={"partition-id": p, "num-partitions": num_nodes})
                         for n, p in self.nodes.items()}
        self._run = None
        if TaskIdentity._run_id is None:  # outside an engine: the identity run_simulation sets
            TaskIdentity.task_id, TaskIdentity.run_id = 1, 1
            TaskIdentity.node_id = SUPERLINK_NODE_ID

    def set_run(self, run: object) -> None:
        self._run = run

    @property
    def run(self) -> object:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("LocalGrid answers through send_and_receive only")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("LocalGrid answers through send_and_receive only")

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            msg.metadata.__dict__["_src_node_id"] = 0
            start = time.perf_counter()
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as err:  # noqa: BLE001 - a client's failure is its reply
                reason = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
                reply = Message(Error(code=0, reason=reason), reply_to=msg)
            if timeout is not None and time.perf_counter() - start > timeout:
                continue  # answered too late: as good as never
            reply.metadata.__dict__["_src_node_id"] = node
            replies.append(reply)
        return replies
