"""The table and the plot of a ``slidefed bench utility`` result."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def setting_name(row: dict[str, Any]) -> str:
    """A setting as the table and the plot name it."""
    if row["setting"] == "centralised":
        return "centralised, no DP"
    if row["setting"] == "federated":
        return "federated, no DP"
    return f"federated, DP eps {row['target_epsilon']:g}"


def table(result: dict[str, Any]) -> str:
    """The result as plain text: what was run, one line per setting, the verdict."""
    split, labels = result["split"], result["labels"]
    unit, folds = result["unit"], result.get("folds", 1)
    lines = [
        f"data {result['data']} ({len(labels)} labels, unit: {unit}"
        + ("" if unit != "tile" else ", no groups file: each tile is its own unit")
        + ")",
        (
            f"{folds}-fold cross-validation by {unit}: every unit held out once; fold 1: "
            if folds > 1
            else f"split by {unit}: "
        )
        + f"train {split['train_units']} + val {split['val_units']} "
        f"units, test {split['test_units']} units ({split['test_tiles']} tiles); "
        f"scored on {split['evaluated_on']} ({split['held_out_units']} units)",
    ]
    for site in result["sites"]:
        mix = ", ".join(f"{k} {v}" for k, v in site["units_per_label"].items())
        lines.append(
            f"{site['site']}: {site['units']} units, {site['tiles']} tiles ({mix})"
        )
    head = f"{'setting':<24} {'accuracy':>8} {'macro-F1':>8} " + " ".join(
        f"{lab[:10]:>10}" for lab in labels
    )
    lines += ["", head + "  epsilon per site", "-" * len(head)]
    for row in result["settings"]:
        f1 = " ".join(f"{row['class_f1'][lab]:>10.3f}" for lab in labels)
        eps = ""
        if row["dp"]:
            eps = "  " + " / ".join(f"{s['epsilon']:.2f}" for s in row["sites"])
            eps += f" ({row['sites'][0]['bound']}, delta {row['sites'][0]['delta']:g})"
        lines.append(
            f"{setting_name(row):<24} {row['accuracy']:>8.3f} {row['macro_f1']:>8.3f} "
            f"{f1}{eps}"
        )
    summary = result["summary"]
    ratios = ", ".join(
        f"eps {k}: {v:.3f}"
        for k, v in summary["dp_macro_f1_ratio_to_centralised"].items()
    )
    lines += ["", f"DP macro-F1 / centralised macro-F1: {ratios}"]
    for fold in result.get("by_fold", []):
        each = fold["summary"]["dp_macro_f1_ratio_to_centralised"]
        lines.append(
            f"  fold {fold['split']['fold']}: "
            + ", ".join(f"eps {k}: {v:.3f}" for k, v in each.items())
        )
    lines += [
        f"target ({summary['target']}): {'met' if summary['target_met'] else 'NOT met'}",
        f"{result['seconds']} s",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    """Bar chart of macro-F1 per setting, with the 0.9 x centralised line; ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["settings"]
    names = [setting_name(r).replace(", ", "\n", 1) for r in rows]
    values = [r["macro_f1"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    colours = ["#4c72b0" if not r["dp"] else "#dd8452" for r in rows]
    # Error bars: the lowest and highest macro-F1 of the setting's runs (seeds).
    spread = [
        [v - r["macro_f1_range"][0] for v, r in zip(values, rows, strict=True)],
        [r["macro_f1_range"][1] - v for v, r in zip(values, rows, strict=True)],
    ]
    bars = ax.bar(names, values, color=colours, yerr=spread, capsize=3)
    for bar, value in zip(bars, values, strict=True):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            0.03,
            f"{value:.3f}",
            ha="center",
            fontsize=8,
            color="white",
        )
    central = result["summary"]["centralised_macro_f1"]
    ax.axhline(
        0.9 * central,
        color="grey",
        linestyle="--",
        linewidth=1,
        label="0.9 x centralised",
    )
    ax.legend(loc="upper right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"macro-F1, held-out {result['unit']}s")
    ax.set_title(
        f"{Path(result['data']).name}: macro-F1 per setting (mean of "
        + (
            f"{result['folds']} folds x {result['repeats']} runs"
            if result.get("folds", 1) > 1
            else f"{result['repeats']} runs"
        )
        + ", range)",
        fontsize=10,
    )
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["plot", "setting_name", "table"]
