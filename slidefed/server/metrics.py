"""Per-round metrics: JSON lines, a PNG plot, and a readable progress line."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class MetricsLog:
    """``metrics.jsonl`` and ``metrics.png`` in the run folder."""

    def __init__(self, run_dir: Path, *, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            self.path.write_text("")

    def rows(self) -> list[dict[str, Any]]:
        """Rows written so far."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def append(self, row: dict[str, Any]) -> None:
        """Add one round and redraw the plot."""
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        self.plot()

    def plot(self) -> None:
        """Redraw ``metrics.png`` from all rows."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rows()
        if not rows:
            return
        rounds = [r["round"] for r in rows]
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        series = [
            ("sites_trained", "sites trained"),
            ("sites_evaluated", "sites evaluated"),
        ]
        for key, label in series:
            axes[0].plot(
                rounds, [_num(r.get(key)) for r in rows], marker="o", label=label
            )
        axes[0].set_title("sites per round")
        axes[0].legend()
        for key in ("auc", "accuracy"):
            axes[1].plot(
                rounds, [_num(r.get(key)) for r in rows], marker="o", label=key
            )
        axes[1].set_ylim(0, 1.02)
        axes[1].set_title("held-out patients (weighted by patients)")
        axes[1].legend()
        sites = sorted({s for r in rows for s in r.get("epsilon_per_site", {})})
        for site in sites:
            axes[2].plot(
                rounds,
                [_num(r.get("epsilon_per_site", {}).get(site)) for r in rows],
                marker="o",
                label=f"node …{site[-6:]}",
            )
        axes[2].set_title("cumulative epsilon per site")
        if 0 < len(sites) <= 12:  # past a dozen sites a legend hides the plot
            axes[2].legend(fontsize="small")
        from matplotlib.ticker import MaxNLocator

        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
        with warnings.catch_warnings():
            # With many sites the layout may not fit; the plot is still written.
            warnings.filterwarnings("ignore", message="Tight layout not applied")
            fig.tight_layout()
        fig.savefig(self.run_dir / "metrics.png", dpi=100)
        plt.close(fig)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def write_model_card(
    run_dir: Path, *, run: Any, rows: list[dict[str, Any]], config_hash: str
) -> Path:
    """``model-card.md`` next to ``final.safetensors``, from the same rows."""
    last = rows[-1] if rows else {}
    eps = last.get("epsilon_per_site", {})
    lines = [
        "# Model card",
        "",
        f"- task: {run.task} (encoder {run.encoder})",
        f"- strategy: {run.strategy}, rounds: {run.num_server_rounds}, "
        f"local epochs: {run.local_epochs}",
        f"- privacy: DP-SGD per patient, target epsilon {run.target_epsilon} per site "
        "(each site's own ledger and policy decide the delta and the cap)",
        f"- sites in the last round: {last.get('sites_trained', 0)}",
        f"- config sha256: {config_hash}",
        "",
        "## Epsilon spent per site (cumulative, after the last round)",
        "",
        "| site (node id) | epsilon |",
        "|---|---|",
        *[
            f"| {node} | {value:.3f} |"
            for node, value in sorted(eps.items())
            if value is not None
        ],
        "",
        "## Held-out metrics per round (from the sites' noised statistics)",
        "",
        "| round | sites trained | accuracy | AUC | patients (noised) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['round']} | {r.get('sites_trained', 0)} "
            f"| {_fmt(r.get('accuracy'))} | {_fmt(r.get('auc'))} "
            f"| {r.get('eval_patients', 0)} |"
        )
    path = run_dir / "model-card.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


__all__ = ["MetricsLog", "write_model_card"]
