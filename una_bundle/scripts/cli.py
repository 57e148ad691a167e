"""Command line: ``una-bundle COMMAND --flag value`` (python-fire). ``una-bundle --help`` lists the commands,
``una-bundle COMMAND --help`` describes each flag with its default (printed, no pager).

User errors (missing or unreadable files, outputs that exist, bad parameters, unknown flags) end with a one-line
message on stderr and exit code 2 instead of a traceback. Flags are checked against the command's arguments before
anything runs (python-fire alone would run the command, then complain about a misspelt flag).
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
import sys
import textwrap

import fire

from . import training
from .anomaly_gallery import generate_anomalies
from .datalist import load_datalist
from .demo_case import run_demo
from .demo_data import prepare_demo
from .evaluation import evaluate
from .inference import infer
from .pipeline_preview import preview_pipeline

USER_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, ValueError)


def demo(output_dir: str = "una_demo", seed: int = 0, device: str = "cpu", overwrite: bool = False) -> str:
    """The bundle's main job on its embedded data: the MNI152 template with a simulated lesion, reconstructed by the
    shipped model, anomaly map and QC figure written, scored against the truth (prints the metrics table).

    Args:
        output_dir: folder for the case, the predictions and the metrics.
        seed: random seed of the simulated lesion.
        device: torch device of the network, e.g. ``cuda``.
        overwrite: replace the outputs of an earlier run.
    """
    return run_demo(output_dir=output_dir, seed=seed, device=device, overwrite=overwrite)


def prepare_demo_data(
    out_dir: str = "una_demo_data",
    n_train: int = 4,
    n_val: int = 2,
    spacing: float = 1.0,
    seed: int = 0,
    overwrite: bool = False,
) -> str:
    """Build the demo dataset from the MNI152 template shipped in nilearn; prints the datalist path.

    Args:
        out_dir: folder for the subjects and ``datalist.json``.
        n_train: number of training subjects.
        n_val: number of validation subjects.
        spacing: voxel size in mm.
        seed: random seed of the subjects' deformations.
        overwrite: write into a non-empty ``out_dir`` (files are replaced).
    """
    return str(prepare_demo(out_dir, n_train=n_train, n_val=n_val, spacing=spacing, seed=seed, overwrite=overwrite))


def check_datalist(path: str, section: str = "all", check_files: bool = True) -> str:
    """Validate a datalist as training will use it (files, shapes, modalities, integer label maps, no empty list);
    prints how many subjects each section holds.

    Args:
        path: the datalist JSON file.
        section: the list to check, e.g. ``training`` or ``validation``; ``all``: both, as training needs them.
        check_files: also open every file listed (NIfTI headers, one grid per subject, label values when float).
    """
    sections = ("training", "validation") if section == "all" else (section,)
    counts = [f"'{name}' {len(load_datalist(path, name, check_files, require_subjects=True))}" for name in sections]
    return f"{path}: valid; subjects in {', '.join(counts)}"


def train(
    dataset_dir: str,
    output_dir: str = "una_training",
    profile: str = "full",
    tracking: str | None = None,
    max_epochs: int | None = None,
    epoch_length: int | None = None,
    resume: bool = True,
    overrides: dict | str | None = None,
) -> str:
    """Train UNA (configs/train.yaml); prints the output folder (models/model.pt: best validation model).

    Args:
        dataset_dir: folder with datalist.json (e.g. from ``una-bundle prepare-demo``).
        output_dir: checkpoints, QC images and the MLflow store; re-running in it resumes training.
        profile: ``full`` (1 mm, 160^3 crops, GPU) or ``cpu`` (2 mm demo data, small network).
        tracking: ``mlflow`` to record the run in ``<output_dir>/mlruns.db``.
        max_epochs: number of epochs (overrides the profile's).
        epoch_length: iterations per epoch (overrides the profile's).
        resume: continue from the newest checkpoint in ``<output_dir>/models`` (``--noresume``: start afresh).
        overrides: other config ids, a dict or JSON string, e.g. ``'{"network_def#levels": 3}'``.
    """
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as err:
            raise ValueError(f"--overrides must be a dict or a JSON object, got {overrides!r} ({err}).") from err
    if not isinstance(overrides, (dict, type(None))):
        raise ValueError(f"--overrides must be a dict or a JSON object, got {overrides!r}.")
    if not isinstance(resume, bool):
        raise ValueError(f"--resume takes True or False (or use --noresume), got {resume!r}.")
    settings = dict(overrides or {})
    settings.update({k: v for k, v in (("max_epochs", max_epochs), ("epoch_length", epoch_length)) if v is not None})
    return training.train(
        dataset_dir, output_dir=output_dir, profile=profile, tracking=tracking, resume=resume, **settings
    )


COMMANDS = {
    "demo": demo,
    "anomalies": generate_anomalies,
    "prepare-demo": prepare_demo_data,
    "check-datalist": check_datalist,
    "preview": preview_pipeline,
    "infer": infer,
    "evaluate": evaluate,
    "train": train,
}


#: flags python-fire itself understands (after a lone ``--``, or ``--help`` anywhere)
_FIRE_FLAGS = ("help", "interactive", "trace", "verbose", "completion", "separator")


def _args_section(doc: str) -> list[tuple[list[str], str]]:
    """``[(names, description)]`` of the ``Args:`` section of a (dedented) Google-style docstring."""
    entries: list[tuple[list[str], str]] = []
    inside = False
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:"):
            inside = True
        elif inside and not line.startswith(" "):  # a blank or unindented line ends the section
            inside = False
        elif inside:
            entry = re.match(r"^ {4}(\*{0,2}\w+(?:, \w+)*): ?(.*)$", line)
            if entry:
                entries.append(([n.strip().lstrip("*") for n in entry.group(1).split(",")], entry.group(2).strip()))
            elif entries:
                entries[-1] = (entries[-1][0], f"{entries[-1][1]} {line.strip()}")
    return entries


def _flag_docs(func) -> dict[str, str]:
    """Descriptions of ``func``'s arguments: its docstring's ``Args:``, completed from the functions of its module it
    refers to (``:func:`name```), e.g. ``infer`` from ``run_inference``."""
    doc = inspect.getdoc(func) or ""
    sources = [doc]
    module = sys.modules.get(getattr(func, "__module__", ""), None)
    for name in re.findall(r":func:`[~.]?([\w.]+)`", doc):
        target = getattr(module, name.split(".")[-1], None)
        if callable(target):
            sources.append(inspect.getdoc(target) or "")
    docs: dict[str, str] = {}
    for source in sources:
        for names, text in _args_section(source):
            for name in names:
                docs.setdefault(name, text)
    return docs


def _summary(func) -> str:
    """The docstring of ``func`` up to its ``Args:`` section."""
    return (inspect.getdoc(func) or "").split("\nArgs:")[0].split("\nArguments:")[0].strip()


def command_help(name: str) -> str:
    """The ``--help`` text of command ``name``: what it does, then every flag with its default and description."""
    func = COMMANDS[name]
    docs = _flag_docs(func)
    for other in re.findall(r"una-bundle ([\w-]+)", inspect.getdoc(func) or ""):  # evaluate: "as for una-bundle infer"
        for flag, text in _flag_docs(COMMANDS[other]).items() if other in COMMANDS else ():
            docs.setdefault(flag, text)
    params = list(inspect.signature(func).parameters.values())
    required = " ".join(f"--{p.name} VALUE" for p in params if p.default is p.empty and p.kind is not p.VAR_KEYWORD)
    lines = [f"usage: una-bundle {name} {required} [flags]".replace("  ", " "), "", _summary(func), "", "flags:"]
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            continue
        if p.kind is p.VAR_KEYWORD:
            flag, default = "--KEY VALUE", f"further keyword arguments ({p.name})"
        else:
            flag = f"--{p.name}"
            default = "required" if p.default is p.empty else f"default: {p.default!r}"
            if isinstance(p.default, bool):
                default += f"; --{p.name} / --no{p.name}"
        lines.append(f"  {flag}  ({default})")
        text = docs.get(p.name) or "(not documented)"
        lines += textwrap.wrap(text, 116, initial_indent="      ", subsequent_indent="      ")
    lines += ["", "Flags may also be given in order, without their names; lists as '[1,2]', dicts as JSON."]
    return "\n".join(lines)


def overview_help() -> str:
    """The ``una-bundle --help`` text: the commands with the first line of their description."""
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: una-bundle COMMAND [--flag VALUE ...]", "", "commands:"]
    for name, func in COMMANDS.items():
        first = re.split(r"(?<=[.;:])\s", " ".join(_summary(func).split()), maxsplit=1)[0].rstrip(".;:")
        lines.append(f"  {name.ljust(width)}  {textwrap.shorten(first, 116 - width, placeholder=' ...')}")
    lines += ["", "una-bundle COMMAND --help describes the command's flags and their defaults."]
    return "\n".join(lines)


def check_flags(argv: list[str]) -> None:
    """Refuse (``ValueError``) an unknown command or an unknown ``--flag`` of the command, before anything runs."""
    if not argv or argv[0].startswith("-"):
        return
    command = argv[0]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown command {command!r}{hint}; commands: {', '.join(COMMANDS)}.")
    params = inspect.signature(COMMANDS[command]).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        names = None  # takes any keyword
    else:
        names = set(params)
    for token in argv[1:]:
        if token == "--":  # python-fire's own flags follow
            break
        if not token.startswith("--"):
            continue
        flag = token[2:].split("=", 1)[0]
        key = flag.replace("-", "_")
        if flag in _FIRE_FLAGS or names is None or key in names or (key.startswith("no") and key[2:] in names):
            continue
        close = difflib.get_close_matches(key, sorted(names), n=1)
        hint = f" (did you mean --{close[0]}?)" if close else ""
        raise ValueError(
            f"{command}: unknown flag --{flag}{hint}; its flags: {', '.join('--' + n for n in params)} "
            f"(una-bundle {command} --help describes them)."
        )


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    head = argv[: argv.index("--")] if "--" in argv else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(overview_help())
        return
    if argv[0] in COMMANDS and ("--help" in head or "-h" in head):
        print(command_help(argv[0]))
        return
    try:
        check_flags(argv)
        fire.Fire(COMMANDS, command=argv, name="una-bundle")
    except USER_ERRORS as err:
        print(f"una-bundle: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
