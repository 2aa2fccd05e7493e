"""An app whose ClientApp sends a reply far larger than the model at marked sites."""
