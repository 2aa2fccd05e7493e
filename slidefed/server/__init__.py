"""The coordinator side: the ServerApp, aggregation, checkpoints and metrics."""
