"""ClientApp of the oversized-reply test: slidefed's own, except at marked sites.

A site whose folder holds a file named ``OVERSIZE`` (beside ``site.toml``) answers
a train instruction with the model it was sent plus a 32 MiB array, and answers an
evaluate instruction with an error; every other site trains with slidefed's
handlers. The app attaches no egress guard of its own: what stops the reply is the
site's runtime (it wraps every approved app in the guard) or, at a node that runs
the app without that runtime, the coordinator's reply validation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from slidefed.client.app import evaluate_handler
from slidefed.client.app import train as slidefed_train
from slidefed.common.site_errors import SiteError, site_error_message

EXTRA_BYTES = 32 * 1024 * 1024
"""Size of the array appended to the model: far larger than the model itself."""

app = ClientApp()


def _marked(context: Context) -> bool:
    site_toml = Path(str(context.node_config.get("site-config", "")))
    return site_toml.is_file() and site_toml.with_name("OVERSIZE").is_file()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """The model sent plus a large array at a marked site; slidefed's round elsewhere."""
    if not _marked(context):
        return slidefed_train(msg, context)
    sent = next(iter(msg.content.array_records.values()))
    arrays = {name: Array(array.numpy()) for name, array in sent.items()}
    arrays["exfil"] = Array(np.ones(EXTRA_BYTES // 4, dtype=np.float32))
    content = RecordDict(
        {
            "arrays": ArrayRecord(arrays),
            "metrics": MetricRecord({"num-examples": 10}),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """slidefed's evaluation; a marked site declines."""
    if _marked(context):
        # An entry of the site's table: the one kind of error reply that leaves.
        refused = SiteError.REFUSED
        return Message(
            Error(code=int(refused), reason=site_error_message(refused)), reply_to=msg
        )
    return evaluate_handler(msg, context)
