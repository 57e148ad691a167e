"""Score the bundle's model on the held-out set (``benchmarks/heldout_set.py``), beside the identity baseline.

Builds the set into ``--set_dir`` unless it holds a ``cases.json`` already (then reuses it), runs
``scripts.workflows.evaluation.run_evaluation`` on it (inference with ``--checkpoint``, default the bundle's
``models/model.pt``, into ``OUTPUT_DIR/predictions``; or ``--predictions`` from an earlier run) and prints, as
markdown, the machine, the per-kind table (means over the cases of each kind, model / identity)

    kind | n | L1 brain | L1 brain (gain) | L1 lesion | SSIM | Dice | false-positive mL

and the per-case table with each case's lesion generator and volume. The same text goes to
``OUTPUT_DIR/heldout_report.md`` beside ``metrics.csv`` / ``metrics.md`` / ``metrics_boxplots.png``. Metric
definitions: ``una_bundle/scripts/workflows/evaluation.py``. Inference settings pass through (``--spacing``,
``--roi_size``, ``--overlap``, ``--levels``, ``--features``, ``--config``, ``--override KEY=JSON``).

    python benchmarks/evaluate_heldout.py --output_dir outputs/heldout_eval [--checkpoint una_bundle/models/model.pt]
        [--device cpu] [--set_dir outputs/heldout_set] [--kinds t1_lesion t1_healthy] [--cases t1_lesion_00]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # heldout_set beside this file

from heldout_set import KINDS, build_heldout_set  # noqa: E402

from una_bundle.scripts.workflows.evaluation import run_evaluation  # noqa: E402
from una_bundle.scripts.workflows.evaluation_report import kind_summary, write_text  # noqa: E402

#: Per-kind table printed here: (title, model column, identity column or None).
TABLE = (
    ("L1 brain model / identity", "l1", "baseline_l1"),
    ("L1 brain (gain) model / identity", "l1_gain", "baseline_l1_gain"),
    ("L1 lesion model / identity", "l1_lesion", "baseline_l1_lesion"),
    ("SSIM model / identity", "ssim", "baseline_ssim"),
    ("Dice", "dice", None),
    ("false-positive mL", "fp_ml", None),
)


def machine(device: str) -> str:
    """One line: CPU model, cores, torch threads, torch version, and the GPU when the device is CUDA."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if str(device).startswith("cuda") and torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(torch.device(device))}"
    return f"{platform.system()} {platform.machine()}: {text}; device {device}"


def _fmt(value: float, col: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return f"{value:.1f}" if col.endswith("_ml") else f"{value:.3f}"


def kind_markdown(rows: list[dict]) -> str:
    """The per-kind table (:data:`TABLE`) of evaluation rows."""
    header = ["kind", "n"] + [title for title, _, _ in TABLE]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind, means in kind_summary(rows).items():
        cells = [kind or "(none)", str(means["n"])]
        for _, col, base in TABLE:
            values = [means[col]] + ([means[base]] if base else [])
            cells.append("" if all(math.isnan(v) for v in values) else " / ".join(_fmt(v, col) for v in values))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def case_markdown(rows: list[dict], manifest: dict) -> str:
    """Per case: kind, lesion generator and volume, and the main metrics (model / identity)."""
    info = {c["name"]: c for c in manifest.get("cases", [])}
    header = ["case", "kind", "lesion", "lesion mL", "L1 brain", "L1 brain (gain)", "L1 lesion", "SSIM", "Dice"]
    header += ["anomaly mL", "false-positive mL"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        case = info.get(row["case"], {})
        cells = [row["case"], row.get("kind", ""), case.get("generator") or "none", f"{case.get('volume_ml', 0):.2f}"]
        for col in ("l1", "l1_gain", "l1_lesion", "ssim"):
            pair = (row[col], row[f"baseline_{col}"])
            cells.append("" if all(math.isnan(v) for v in pair) else " / ".join(_fmt(v, col) for v in pair))
        cells += [_fmt(row["dice"], "dice"), _fmt(row["anomaly_ml"], "anomaly_ml"), _fmt(row["fp_ml"], "fp_ml")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_overrides(items) -> dict:
    """``["KEY=JSON", ...]`` (``--override``) as inference config overrides; a value that is not JSON stays a string."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--override expects KEY=VALUE, got {item!r}.")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def _selected_cases(set_dir: Path, kinds, names) -> list[dict]:
    """The set's cases (paths made absolute), restricted to ``kinds`` and ``names`` when given."""
    entries = json.loads((set_dir / "cases.json").read_text())
    chosen = []
    for entry in entries:
        if kinds and entry.get("kind") not in kinds:
            continue
        if names and entry["name"] not in names:
            continue
        files = ("image", "truth", "lesion", "mask")
        chosen.append({k: (str((set_dir / v).resolve()) if k in files else v) for k, v in entry.items()})
    missing = sorted(set(names or ()) - {e["name"] for e in entries})
    if missing:
        raise ValueError(f"no case(s) {missing} in {set_dir / 'cases.json'}.")
    if not chosen:
        raise ValueError(f"no case of {set_dir / 'cases.json'} matches kinds={kinds} names={names}.")
    return chosen


def _inference_seconds(predictions: Path, rows: list[dict]) -> list[float]:
    """Total seconds per case from the inference reports ``NAME.json`` (where they say so)."""
    out = []
    for row in rows:
        try:
            report = json.loads((predictions / f"{row['case']}.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        timings = report.get("timings_s") or report.get("timings") or {}
        total = timings.get("total_s", timings.get("total")) if isinstance(timings, dict) else None
        if isinstance(total, (int, float)):
            out.append(float(total))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/heldout_eval")
    parser.add_argument("--set_dir", default="outputs/heldout_set", help="built here when it has no cases.json")
    parser.add_argument("--n_per_kind", type=int, default=4, help="when the set is built here")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, help="evaluate only these kinds")
    parser.add_argument("--cases", nargs="+", help="evaluate only these case names")
    parser.add_argument("--checkpoint", help="weights (default: the bundle's models/model.pt)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--predictions", help="score the outputs of an earlier run instead of running inference")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier metrics and predictions")
    parser.add_argument("--config", help="inference config (default the bundle's configs/inference.yaml)")
    parser.add_argument("--spacing", type=float, nargs="+")
    parser.add_argument("--roi_size", type=int, nargs="+")
    parser.add_argument("--overlap", type=float)
    parser.add_argument("--levels", type=int)
    parser.add_argument("--features", type=int)
    parser.add_argument("--override", action="append", default=[], metavar="KEY=JSON", help="inference config id")
    parser.add_argument("--no_qc", action="store_true", help="skip the QC figures")
    parser.add_argument("--threads", type=int, help="torch threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    set_dir = Path(args.set_dir)
    try:
        if not (set_dir / "cases.json").is_file():
            print(f"building the held-out set into {set_dir} ...", file=sys.stderr)
            build_heldout_set(set_dir, args.n_per_kind)
        built = time.perf_counter()
        cases = _selected_cases(set_dir, args.kinds, args.cases)
        inference = {"device": args.device}
        for key in ("checkpoint", "config", "spacing", "roi_size", "overlap", "levels", "features"):
            if getattr(args, key) is not None:
                inference[key] = getattr(args, key)
        overrides = parse_overrides(args.override)
        if overrides:
            inference["overrides"] = overrides
        if args.no_qc:
            inference["qc"] = False
        out = Path(args.output_dir)
        result = run_evaluation(cases, out, args.predictions, args.overwrite, inference)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"evaluate_heldout: error: {err}", file=sys.stderr)
        return 2
    rows = result["cases"]
    manifest_path = set_dir / "heldout.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    predictions = Path(args.predictions) if args.predictions else out / "predictions"
    seconds = _inference_seconds(predictions, rows)
    timing = f"{len(rows)} case(s) in {time.perf_counter() - built:.0f} s"
    if seconds:
        timing += f" (inference {sum(seconds) / len(seconds):.1f} s per case, from the reports)"
    checkpoint = args.checkpoint or "una_bundle/models/model.pt (default)"
    text = "\n".join(
        [
            "# Held-out evaluation",
            "",
            f"- machine: {machine(args.device)}",
            f"- model: {checkpoint}; set: {set_dir} (seed {manifest.get('seed', '?')}); {timing}",
            "- means over the cases of each kind, model / identity (the input itself); L1 on [0, 1] in the brain, "
            "'(gain)' after a least-squares gain onto the truth; false-positive mL: anomaly mask outside the lesion "
            "dilated by 2 voxels (all of it on a healthy brain)",
            "",
            kind_markdown(rows),
            case_markdown(rows, manifest),
        ]
    )
    write_text(text, out / "heldout_report.md")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
