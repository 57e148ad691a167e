"""The command line: flags checked before anything runs, help printed (no pager) with every flag described."""

import inspect
import subprocess
import sys

import pytest

from una_bundle.scripts.workflows import inference
from una_bundle.tools import cli


def test_a_misspelt_flag_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inference, "run_inference", lambda *a, **k: pytest.fail("ran with a misspelt flag"))
    out = tmp_path / "out"
    argv = ["infer", "--image", str(tmp_path / "scan.nii.gz"), "--output_dir", str(out), "--modalty", "T1"]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("una-bundle: error: infer: unknown flag --modalty (did you mean --modality?)")
    assert not out.exists()
    for argv in (["trian", "data"], ["train", "data", "--max-epoch", "3"], ["prepare-demo", "--n_trian=2"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2 and "did you mean" in capsys.readouterr().err


def test_known_flags_in_every_spelling_pass_the_check():
    cli.check_flags(["infer", "scan.nii.gz", "out", "--noqc", "--overwrite", "--roi-size", "[32,32,32]"])
    cli.check_flags(["infer", "--image=scan.nii.gz", "--output_dir", "out", "--", "--trace"])
    cli.check_flags(["anomalies", "--nt_range", "[10,10]"])  # **fluid_kwargs: any keyword


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_help_is_printed_and_describes_every_flag_with_its_default(name, monkeypatch, capsys):
    monkeypatch.setattr(cli.fire, "Fire", lambda *a, **k: pytest.fail("help went through python-fire (pager)"))
    cli.main([name, "--help"])  # returns: printed, no pager, no exit
    text = capsys.readouterr().out
    assert text.startswith(f"usage: una-bundle {name}")
    for param in inspect.signature(cli.command_function(name)).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            assert "--KEY VALUE" in text
            continue
        default = "required" if param.default is param.empty else f"default: {param.default!r}"
        block = text.split(f"\n  --{param.name}  ({default}", 1)
        assert len(block) == 2, f"--{param.name} ({default}) missing from:\n{text}"
        description = block[1].split("\n")[1]
        assert description.startswith("      ") and description.strip() and "not documented" not in description


def test_help_imports_neither_torch_nor_monai():
    """Help and the flag check read the sources: no torch / MONAI import (seconds), python-fire's pager never used."""
    code = (
        "import sys; from una_bundle.tools import cli\n"
        "for argv in ([], ['infer', '--help'], ['train', '--help']): cli.main(argv)\n"
        "heavy = sorted(m for m in ('torch', 'monai', 'nibabel') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--output_dir" in done.stdout and "--max_epochs" in done.stdout


def test_overview_help_lists_every_command(capsys):
    for argv in ([], ["--help"], ["-h"]):
        cli.main(argv)
        text = capsys.readouterr().out
        assert all(f"\n  {name} " in text for name in cli.COMMANDS), text


def test_help_into_a_closed_pipe_ends_quietly():
    """``una-bundle --help | head -1``: no BrokenPipeError traceback when the reader has stopped reading."""
    import subprocess

    process = subprocess.Popen(
        [sys.executable, "-m", "una_bundle.tools.cli", "infer", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # the reader is gone before the help is printed
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0 and "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
