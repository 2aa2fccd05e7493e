"""Helper Flower apps for the deployment tests (copied into app folders at test time)."""
