"""The evaluation's report: ``metrics.csv`` (one row per case, full precision), ``metrics.md`` (the table with mean and
std, and a per-kind table when cases have a ``kind``) and ``metrics_boxplots.png``."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from ..data.atomic_io import write_atomic

__all__ = [
    "summarize",
    "csv_text",
    "markdown",
    "boxplots",
    "write_text",
    "kind_summary",
    "kind_table",
    "COLUMNS",
    "CSV_COLUMNS",
    "KIND_TABLE",
    "METRICS",
]


#: Reported metrics: (column, title, higher is better).
METRICS = (
    ("l1", "L1", False),
    ("psnr", "PSNR (dB)", True),
    ("ssim", "SSIM", True),
    ("dice", "Dice", True),
    ("l1_lesion", "L1 in the lesion", False),
    ("fp_ml", "false positives (mL)", False),
)
#: Numeric columns after ``case``; the original eight first, in their order, ``kind`` (text) last.
COLUMNS = (
    "case",
    "l1",
    "psnr",
    "ssim",
    "dice",
    "baseline_l1",
    "baseline_psnr",
    "baseline_ssim",
    "l1_gain",
    "baseline_l1_gain",
    "l1_lesion",
    "baseline_l1_lesion",
    "anomaly_ml",
    "fp_ml",
)
CSV_COLUMNS = COLUMNS + ("kind",)
#: Per-kind table of metrics.md: (title, model column, identity column or None).
KIND_TABLE = (
    ("L1 brain", "l1", "baseline_l1"),
    ("L1 brain (gain)", "l1_gain", "baseline_l1_gain"),
    ("L1 lesion", "l1_lesion", "baseline_l1_lesion"),
    ("PSNR", "psnr", "baseline_psnr"),
    ("SSIM", "ssim", "baseline_ssim"),
    ("Dice", "dice", None),
    ("anomaly mL", "anomaly_ml", None),
    ("false-positive mL", "fp_ml", None),
)


def summarize(rows: list[dict]) -> dict:
    """``{column: {"mean", "std", "n"}}`` over the finite values (sample std; 0 for one value)."""
    out = {}
    for col in COLUMNS[1:]:
        values = np.array([r[col] for r in rows], dtype=np.float64)
        values = values[np.isfinite(values)]
        n = len(values)
        out[col] = {
            "mean": float(values.mean()) if n else float("nan"),
            "std": float(values.std(ddof=1)) if n > 1 else 0.0 if n else float("nan"),
            "n": n,
        }
    return out


def _fmt(value: float, col: str) -> str:
    if not math.isfinite(value):
        return "" if math.isnan(value) else str(value)
    return f"{value:.2f}" if "psnr" in col or col.endswith("_ml") else f"{value:.4f}"


def _csv_value(value: float) -> str:
    """Full precision; empty for NaN (no lesion), ``inf`` for a perfect PSNR."""
    return "" if math.isnan(value) else repr(float(value))


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([row["case"]] + [_csv_value(row[c]) for c in COLUMNS[1:]] + [row.get("kind", "")])
    return buffer.getvalue()


_HEADERS = {
    "l1": "L1",
    "psnr": "PSNR",
    "ssim": "SSIM",
    "dice": "Dice",
    "baseline_l1": "L1 (baseline)",
    "baseline_psnr": "PSNR (baseline)",
    "baseline_ssim": "SSIM (baseline)",
    "l1_gain": "L1 gain",
    "baseline_l1_gain": "L1 gain (baseline)",
    "l1_lesion": "L1 lesion",
    "baseline_l1_lesion": "L1 lesion (baseline)",
    "anomaly_ml": "anomaly mL",
    "fp_ml": "false-pos. mL",
}


def kind_summary(rows: list[dict]) -> dict:
    """``{kind: {"n": cases, column: mean over the non-NaN values (NaN if none)}}`` in order of first appearance;
    cases without a kind are grouped under ``""``. An infinite PSNR (a perfect case) makes the mean infinite."""
    out = {}
    for kind in dict.fromkeys(str(r.get("kind", "")) for r in rows):
        group = [r for r in rows if str(r.get("kind", "")) == kind]
        means = {"n": len(group)}
        for col in COLUMNS[1:]:
            values = np.array([r[col] for r in group], dtype=np.float64)
            values = values[~np.isnan(values)]
            means[col] = float(values.mean()) if len(values) else float("nan")
        out[kind] = means
    return out


def kind_table(rows: list[dict]) -> str:
    """The per-kind markdown table (means over the cases of each kind): model / identity per metric of
    :data:`KIND_TABLE` (identity ``-`` where it has none)."""
    header = ["kind", "n"] + [title + (" model / identity" if base else "") for title, _, base in KIND_TABLE]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind, means in kind_summary(rows).items():
        cells = [kind or "(none)", str(means["n"])]
        for _, col, base in KIND_TABLE:
            both = [means[col]] + ([means[base]] if base else [])
            cells.append("" if all(math.isnan(v) for v in both) else " / ".join(_fmt(v, col) for v in both))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], summary: dict) -> str:
    with_kind = any(r.get("kind") for r in rows)
    header = ["case"] + (["kind"] if with_kind else []) + [_HEADERS[c] for c in COLUMNS[1:]]
    lines = [
        "# Evaluation",
        "",
        "Reconstruction vs healthy truth inside the brain (intensities normalised to [0, 1]; SSIM: Gaussian window "
        "sigma 5). Baseline: the input itself as the reconstruction (no baseline Dice: its anomaly map is zero). "
        "Dice: anomaly mask vs lesion (blank without a lesion mask). L1 gain: L1 after a least-squares gain of the "
        "prediction onto the truth in the brain. L1 lesion: L1 inside the true lesion. False-pos. mL: anomaly mask "
        "outside the lesion dilated by 2 voxels (the whole anomaly mask without a lesion).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        kind = [str(row.get("kind", ""))] if with_kind else []
        lines.append("| " + " | ".join([str(row["case"])] + kind + [_fmt(row[c], c) for c in COLUMNS[1:]]) + " |")
    stats = [
        f"{_fmt(summary[c]['mean'], c)} ± {_fmt(summary[c]['std'], c)}" if summary[c]["n"] else "" for c in COLUMNS[1:]
    ]
    lines.append(f"| **mean ± std** (n={len(rows)}) | " + ("| " if with_kind else "") + " | ".join(stats) + " |")
    if with_kind:
        lines += ["", "## Per kind", "", "Means over the cases of each kind, model / identity.", "", kind_table(rows)]
    return "\n".join(lines).rstrip("\n") + "\n"


def boxplots(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.6))
    for ax, (col, title, higher) in zip(axes, METRICS):
        series, labels = [], []
        for prefix, label in (("", "model"), ("baseline_", "baseline")):
            if prefix + col not in rows[0]:
                continue
            values = np.array([r[prefix + col] for r in rows], dtype=np.float64)
            series.append(values[np.isfinite(values)])
            labels.append(label)
        if all(len(s) == 0 for s in series):
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.boxplot(series, showmeans=True)
            ax.set_xticks(range(1, len(labels) + 1), labels)
        ax.set_title(f"{title} ({'higher' if higher else 'lower'} is better)", fontsize=9)
    fig.suptitle(f"Brain-masked metrics, {len(rows)} case(s)", fontsize=10)
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def write_text(text: str, path: Path) -> None:
    """``text`` to ``path`` atomically (``atomic_io.write_atomic``: the umask's mode, nothing left on failure)."""
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))
