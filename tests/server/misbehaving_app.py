"""A ClientApp for tests: partition 1 sends NaNs, partition 2 a wrong shape."""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from slidefed.client.app import app as honest

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = honest(msg, context)
    partition = int(context.node_config.get("partition-id", 0))
    if reply.has_error() or partition == 0:
        return reply
    arrays = {k: v.numpy() for k, v in reply.content["arrays"].items()}  # type: ignore[union-attr]
    if partition == 1:
        arrays = {k: np.full_like(v, np.nan) for k, v in arrays.items()}
    else:
        first = next(iter(arrays))
        arrays[first] = np.zeros((3, 3), np.float32)
    reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return honest(msg, context)
