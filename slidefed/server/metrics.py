"""Per-round metrics: JSON lines, a PNG plot, and a readable progress line.

Sites appear in the plot and the model card by name where the run folder's
``site-names.json`` (node id -> site name) knows them: ``server start`` records
the registered sites there, a simulation the sites it plays. Elsewhere a site is
``node ...`` and the last digits of its node id.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slidefed.common.fileio import atomic_write_text

logger = logging.getLogger(__name__)

SITE_NAMES = "site-names.json"
"""File in the run folder: ``{node id: site name}``."""


def site_names(run_dir: Path) -> dict[str, str]:
    """Node id (as text) -> site name, from the run folder; empty when unknown."""
    try:
        data = json.loads((Path(run_dir) / SITE_NAMES).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def write_site_names(run_dir: Path, names: Mapping[int | str, str]) -> None:
    """Add ``names`` (node id -> site name) to the run folder's ``site-names.json``."""
    merged = {**site_names(run_dir), **{str(k): v for k, v in names.items()}}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        Path(run_dir) / SITE_NAMES, json.dumps(merged, indent=2, sort_keys=True)
    )


def site_label(node: str, names: Mapping[str, str]) -> str:
    """A site's name where known, else ``node ...`` and its node id's last digits."""
    return names.get(str(node)) or f"node …{str(node)[-6:]}"


class MetricsLog:
    """``metrics.jsonl`` and ``metrics.png`` in the run folder."""

    def __init__(
        self,
        run_dir: Path,
        *,
        resume: bool = False,
        target_epsilon: float | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.target_epsilon = target_epsilon
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

    def plot(self, exact: list[dict[str, Any]] | None = None) -> None:
        """Redraw ``metrics.png`` from all rows.

        Parameters
        ----------
        exact : list of dict, optional
            Exact held-out figures per round (``round``, ``auc``, ``accuracy``),
            which only a party holding every site's data can compute (the demo):
            drawn dashed beside the federation's noised ones.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rows()
        if not rows:
            return
        rounds = [r["round"] for r in rows]
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
        series = [
            ("sites_trained", "sites trained"),
            ("sites_evaluated", "sites evaluated"),
        ]
        for key, label in series:
            axes[0].plot(
                rounds, [_num(r.get(key)) for r in rows], marker="o", label=label
            )
        counts = [_num(r.get(k)) for r in rows for k, _ in series]
        top = max((c for c in counts if not math.isnan(c)), default=1.0)
        axes[0].set_ylim(0, top + 0.5)
        axes[0].set_title("sites per round")
        noised = " (noised)" if exact else ""
        for key, colour in (("auc", "tab:blue"), ("accuracy", "tab:orange")):
            axes[1].plot(
                rounds,
                [_num(r.get(key)) for r in rows],
                marker="o",
                color=colour,
                label=f"{key}{noised}",
            )
            if exact:
                axes[1].plot(
                    [e["round"] for e in exact],
                    [_num(e.get(key)) for e in exact],
                    marker="s",
                    linestyle="--",
                    color=colour,
                    label=f"{key} (exact, demo only)",
                )
        axes[1].set_ylim(0, 1.02)
        axes[1].set_title("held-out patients (weighted by patients)")
        self._plot_epsilon(axes[2], rows, rounds)
        from matplotlib.ticker import MaxNLocator

        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
            _legend_below(ax)
        with warnings.catch_warnings():
            # With many sites the layout may not fit; the plot is still written.
            warnings.filterwarnings("ignore", message="Tight layout not applied")
            fig.tight_layout()
        fig.savefig(self.run_dir / "metrics.png", dpi=100)
        plt.close(fig)

    def _plot_epsilon(
        self, ax: Any, rows: list[dict[str, Any]], rounds: list[int]
    ) -> None:
        """Cumulative epsilon per site, by name, against the run's target."""
        names = site_names(self.run_dir)
        sites = sorted({s for r in rows for s in r.get("epsilon_per_site", {})})
        sites.sort(key=lambda node: site_label(node, names))
        for site in sites:
            ax.plot(
                rounds,
                [_num(r.get("epsilon_per_site", {}).get(site)) for r in rows],
                marker="o",
                # Past a dozen sites a legend hides the plot: no labels then.
                label=site_label(site, names) if len(sites) <= 12 else None,
            )
        if self.target_epsilon is not None:
            ax.axhline(
                self.target_epsilon,
                color="tab:red",
                linestyle="--",
                linewidth=1,
                label=f"target ε {self.target_epsilon:g}",
            )
            ax.set_ylim(0, self.target_epsilon * 1.08)
        ax.set_title("cumulative epsilon per site")


def _legend_below(ax: Any) -> None:
    """The axes' legend under it, where it covers no point."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles,
            labels,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
            ncol=min(len(labels), 2),
            fontsize="small",
            frameon=False,
        )


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def write_model_card(
    run_dir: Path, *, run: Any, rows: list[dict[str, Any]], config_hash: str
) -> Path:
    """``model-card.md`` next to ``final.safetensors``, from the same rows."""
    last = rows[-1] if rows else {}
    eps = last.get("epsilon_per_site", {})
    names = site_names(run_dir)
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
        "## Epsilon spent per site (cumulative, after the last round's training)",
        "",
        "Each evaluation is charged on top of this (noised statistics are a release "
        "too): a site's full spend is in its ledger (`slidefed site budget`) and in "
        "the audit report.",
        "",
        "| site | node id | epsilon |",
        "|---|---|---|",
        *[
            f"| {names.get(node, '-')} | {node} | {value:.3f} |"
            for node, value in sorted(
                eps.items(), key=lambda kv: site_label(kv[0], names)
            )
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


__all__ = [
    "SITE_NAMES",
    "MetricsLog",
    "site_label",
    "site_names",
    "write_model_card",
    "write_site_names",
]
