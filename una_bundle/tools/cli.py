"""Command line: ``una-bundle COMMAND --flag value`` (python-fire). ``una-bundle --help`` lists the commands,
``una-bundle COMMAND --help`` describes each flag with its default (printed, no pager).

User errors (missing or unreadable files, outputs that exist, bad parameters, unknown flags) end with a one-line
message on stderr and exit code 2 instead of a traceback, Ctrl-C with one line and exit code 130. Flags are checked
against the command's arguments before anything runs (python-fire alone would run the command, then complain about a
misspelt flag). Help and the flag check read the commands' signatures and docstrings from their source (``ast``), so
they import neither torch nor MONAI and answer at once; a command's module is imported only to run it.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib
import json
import os
import re
import sys
import textwrap
from pathlib import Path

import fire

USER_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, ValueError)


def demo(
    output_dir: str = "una_demo", seed: int = 0, device: str = "cpu", overwrite: bool = False, quiet: bool | None = None
) -> str:
    """The bundle's main job on its embedded data: the MNI152 template with a simulated lesion, reconstructed by the
    shipped model, anomaly map and QC figure written, scored against the truth (prints the metrics table).

    Args:
        output_dir: folder for the case, the predictions and the metrics.
        seed: random seed of the simulated lesion.
        device: torch device of the network, e.g. ``cuda``.
        overwrite: replace the outputs of an earlier run.
        quiet: no progress lines on stderr; ``--noquiet``: always; default: only when stderr is a terminal.
    """
    from .demo_case import run_demo

    return run_demo(output_dir=output_dir, seed=seed, device=device, overwrite=overwrite, quiet=quiet)


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
    from ..scripts.data.demo_data import prepare_demo

    return str(prepare_demo(out_dir, n_train=n_train, n_val=n_val, spacing=spacing, seed=seed, overwrite=overwrite))


def check_datalist(path: str, section: str = "all", check_files: bool = True) -> str:
    """Validate a datalist as training will use it (files, shapes, modalities, integer label maps, no empty list);
    prints how many subjects each section holds.

    Args:
        path: the datalist JSON file.
        section: the list to check, e.g. ``training`` or ``validation``; ``all``: both, as training needs them.
        check_files: also open every file listed (NIfTI headers, one grid per subject, label values when float).
    """
    from ..scripts.data.datalist import load_datalist

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
        profile: ``full`` (the paper's: 1 mm, 160^3 crops, GPU), ``cpu`` (the shipped weights' recipe: 1 mm, 64^3
            crops, small network) or ``gpu`` (that recipe with 8 patches per step and a loader on every core).
        tracking: ``mlflow`` to record the run in ``<output_dir>/mlruns.db``.
        max_epochs: number of epochs (overrides the profile's).
        epoch_length: iterations per epoch (overrides the profile's).
        resume: continue from the newest checkpoint in ``<output_dir>/models`` (``--noresume``: start afresh).
        overrides: other config ids, a dict or JSON string, e.g. ``'{"network_def#levels": 3}'``.
    """
    from ..scripts.workflows import training

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


#: command -> ``module:function`` of ``una_bundle``; the module is imported only when the command runs
COMMANDS = {
    "demo": "tools.cli:demo",
    "anomalies": "tools.anomaly_gallery:generate_anomalies",
    "prepare-demo": "tools.cli:prepare_demo_data",
    "check-datalist": "tools.cli:check_datalist",
    "preview": "tools.pipeline_preview:preview_pipeline",
    "infer": "scripts.workflows.inference:infer",
    "evaluate": "scripts.workflows.evaluation:evaluate",
    "train": "tools.cli:train",
}
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # una_bundle/


def command_function(name: str):
    """The function behind command ``name`` (imports its module)."""
    module, function = COMMANDS[name].split(":")
    return getattr(importlib.import_module(f"{__package__.rpartition('.')[0]}.{module}"), function)


@functools.lru_cache(maxsize=None)
def _functions(module: str) -> dict[str, ast.FunctionDef]:
    """The top-level functions of ``una_bundle/<module as a path>.py``, parsed, not imported."""
    path = _PACKAGE_ROOT.joinpath(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def _source(name: str) -> tuple[str, ast.FunctionDef]:
    module, function = COMMANDS[name].split(":")
    return module, _functions(module)[function]


def _parameters(node: ast.FunctionDef) -> list[tuple[str, str | None, object]]:
    """``[(name, kind, default node)]`` of a parsed function: kind ``None`` for a plain argument (default node or
    ``None`` when required), ``"**"`` for ``**kwargs``."""
    args = node.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    params = [(a.arg, None, d) for a, d in zip(positional, defaults)]
    params += [(a.arg, None, d) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg is not None:
        params.append((args.kwarg.arg, "**", None))
    return params


def _default(node) -> tuple[str, bool]:
    """``(shown default, is a bool)`` of a default's expression."""
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node), False
    return repr(value), isinstance(value, bool)


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


def _flag_docs(name: str) -> dict[str, str]:
    """Descriptions of command ``name``'s arguments: its docstring's ``Args:``, completed from the functions of its
    module it refers to (``:func:`name```, e.g. ``infer`` from ``run_inference``), then from the commands it refers
    to (``una-bundle NAME``, e.g. ``evaluate``: "as for una-bundle infer")."""
    module, node = _source(name)
    doc = ast.get_docstring(node) or ""
    sources = [doc]
    for ref in re.findall(r":func:`[~.]?([\w.]+)`", doc):
        target = _functions(module).get(ref.split(".")[-1])
        if target is not None:
            sources.append(ast.get_docstring(target) or "")
    docs: dict[str, str] = {}
    for source in sources:
        for names, text in _args_section(source):
            for flag in names:
                docs.setdefault(flag, text)
    for other in re.findall(r"una-bundle ([\w-]+)", doc):
        if other in COMMANDS and other != name:
            for flag, text in _flag_docs(other).items():
                docs.setdefault(flag, text)
    return docs


def _summary(name: str) -> str:
    """The docstring of command ``name`` up to its ``Args:`` section."""
    doc = ast.get_docstring(_source(name)[1]) or ""
    return doc.split("\nArgs:")[0].split("\nArguments:")[0].strip()


def command_help(name: str) -> str:
    """The ``--help`` text of command ``name``: what it does, then every flag with its default and description."""
    docs = _flag_docs(name)
    params = _parameters(_source(name)[1])
    required = " ".join(f"--{flag} VALUE" for flag, kind, default in params if kind is None and default is None)
    lines = [f"usage: una-bundle {name} {required} [flags]".replace("  ", " "), "", _summary(name), "", "flags:"]
    for flag, kind, node in params:
        if kind == "**":
            option, default = "--KEY VALUE", f"further keyword arguments ({flag})"
        else:
            option, default = f"--{flag}", "required"
            if node is not None:
                shown, is_bool = _default(node)
                default = f"default: {shown}" + (f"; --{flag} / --no{flag}" if is_bool else "")
        lines.append(f"  {option}  ({default})")
        text = docs.get(flag) or "(not documented)"
        lines += textwrap.wrap(text, 116, initial_indent="      ", subsequent_indent="      ")
    lines += ["", "Flags may also be given in order, without their names; lists as '[1,2]', dicts as JSON."]
    return "\n".join(lines)


def overview_help() -> str:
    """The ``una-bundle --help`` text: the commands with the first sentence of their description."""
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: una-bundle COMMAND [--flag VALUE ...]", "", "commands:"]
    for name in COMMANDS:
        first = re.split(r"(?<=[.;:])\s", " ".join(_summary(name).split()), maxsplit=1)[0].rstrip(".;:")
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
    params = _parameters(_source(command)[1])
    names = [flag for flag, kind, _ in params if kind is None]
    if any(kind == "**" for _, kind, _ in params):
        return  # takes any keyword
    for token in argv[1:]:
        if token == "--":  # python-fire's own flags follow
            break
        if not token.startswith("--"):
            continue
        flag = token[2:].split("=", 1)[0]
        key = flag.replace("-", "_")
        if flag in _FIRE_FLAGS or key in names or (key.startswith("no") and key[2:] in names):
            continue
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean --{close[0]}?)" if close else ""
        raise ValueError(
            f"{command}: unknown flag --{flag}{hint}; its flags: {', '.join('--' + n for n in names)} "
            f"(una-bundle {command} --help describes them)."
        )


def _print_help(text: str) -> None:
    """Print help; a reader that stops early (``una-bundle --help | head``) ends it quietly, as ``man`` does."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    head = argv[: argv.index("--")] if "--" in argv else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_help(overview_help())
        return
    if argv[0] in COMMANDS and ("--help" in head or "-h" in head):
        _print_help(command_help(argv[0]))
        return
    try:
        check_flags(argv)
        names = [argv[0]] if argv[0] in COMMANDS else list(COMMANDS)
        fire.Fire({name: command_function(name) for name in names}, command=argv, name="una-bundle")
    except USER_ERRORS as err:
        print(f"una-bundle: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:  # Ctrl-C: one line (training says where its checkpoint is), no traceback
        print(f"una-bundle: {err or 'interrupted'}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
