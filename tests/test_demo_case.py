"""The quick start's main job (``una-bundle demo``): the demo case through the shipped model, scored.

Runs once per session (about half a minute on 2 CPU cores) with the bundle's own ``models/model.pt``, as a user gets it.
"""

import nibabel as nib
import numpy as np
import pytest

from una_bundle.tools.cli import main
from una_bundle.tools.demo_case import run_demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("una_demo")
    return out, run_demo(str(out), seed=0)


def test_demo_writes_the_case_predictions_and_metrics(demo_run):
    out, table = demo_run
    assert "| mni152_lesion |" in table and "| mni152_healthy |" in table  # the lesion case and the template
    for name in ("metrics.md", "metrics.csv", "metrics_boxplots.png", "predictions/mni152_lesion_qc.png"):
        assert (out / name).stat().st_size > 0, name
    case = nib.load(out / "case" / "mni152_lesion.nii.gz")
    for name in ("mni152_lesion", "mni152_healthy"):
        for kind in ("healthy", "synthesized", "anomaly", "anomaly_mask"):
            output = nib.load(out / "predictions" / f"{name}_{kind}.nii.gz")
            assert output.shape == case.shape and np.allclose(output.affine, case.affine)
    lesion = np.asarray(nib.load(out / "case" / "lesion.nii.gz").dataobj)
    assert lesion.sum() > 0  # the demo case carries a simulated lesion


def test_shipped_model_gives_a_finite_brain_shaped_reconstruction(demo_run):
    out, _ = demo_run
    healthy = np.asarray(nib.load(out / "predictions" / "mni152_lesion_healthy.nii.gz").dataobj)
    brain = np.asarray(nib.load(out / "case" / "brain_mask.nii.gz").dataobj) > 0
    truth = np.asarray(nib.load(out / "case" / "mni152_healthy.nii.gz").dataobj)
    assert np.isfinite(healthy).all() and healthy.min() >= 0 and healthy.max() <= 1
    assert healthy[brain].mean() > 0.2 and healthy[~brain].mean() < 0.05  # bright brain, dark background
    foreground = healthy > 0.1
    dice = 2 * (foreground & brain).sum() / (foreground.sum() + brain.sum())
    assert dice > 0.9
    # anatomy, not a blob: the reconstruction follows the template's tissue contrast inside the brain
    assert np.corrcoef(healthy[brain], truth[brain])[0, 1] > 0.5
    synthesized = np.asarray(nib.load(out / "predictions" / "mni152_lesion_synthesized.nii.gz").dataobj)
    assert np.corrcoef(synthesized[brain], truth[brain])[0, 1] > 0.5


def test_demo_refuses_to_overwrite_and_cli_says_so(demo_run, capsys):
    out, _ = demo_run
    before = (out / "metrics.md").read_bytes()
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--output_dir", str(out)])
    assert exited.value.code == 2
    assert "output exists" in capsys.readouterr().err and (out / "metrics.md").read_bytes() == before


def test_demo_shows_progress_on_a_terminal_only(tmp_path, monkeypatch):
    """Issue 11, item 18: the demo says what it is doing (the inference lines follow), silent on a pipe."""
    import io
    import sys

    from una_bundle.tools import demo_case

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    calls = []

    def fake_evaluation(cases, out, overwrite=False, inference=None):  # the scoring is tested above
        calls.append(inference)
        (out / "metrics.md").write_text("table")
        return {"files": [str(out / "metrics.csv"), str(out / "metrics.md")]}

    monkeypatch.setattr(demo_case, "run_evaluation", fake_evaluation)
    for stream, out in ((Terminal(), tmp_path / "tty"), (io.StringIO(), tmp_path / "pipe")):
        monkeypatch.setattr(sys, "stderr", stream)
        assert run_demo(str(out), seed=0, healthy_case=False) == "table"
        monkeypatch.setattr(sys, "stderr", sys.__stderr__)
        lines = stream.getvalue().splitlines()
        if isinstance(stream, Terminal):
            assert [line.split(" ")[1] for line in lines] == ["simulating", "case"], lines
            assert "UNA on 1 case(s)" in lines[1]
        else:
            assert lines == []
    assert [c["quiet"] for c in calls] == [None, None]  # the inference decides the same way (terminal or not)
