"""The training workflow (configs/train.yaml, multi_gpu_train.yaml, scripts/workflows) on a tiny crop of the 3 mm
demo data: 32^3 patches, a 2-level U-Net with 8 features, so every run takes seconds on 2 CPU cores."""

import copy
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.data import MetaTensor

from una_bundle.scripts.data.datalist import load_datalist
from una_bundle.scripts.scoring.metrics import BrainMetric
from una_bundle.scripts.workflows import training as training_module
from una_bundle.scripts.workflows.checkpoints import latest_checkpoint
from una_bundle.scripts.workflows.training import BUNDLE_ROOT, PrepareBatch, train, training_workflow
from una_bundle.tools import cli

#: Overrides on top of the CPU profile: a tiny network on 32^3 crops, no loader workers.
TINY = {
    "roi_size": [32, 32, 32],
    "crop_size": [32, 32, 32],
    "network_def#levels": 2,
    "network_def#features": 8,
    "num_workers": 0,
    "log_interval": 1,
}
CLI_TINY = [arg for key, value in TINY.items() for arg in (f"--{key}", json.dumps(value))]


@pytest.fixture
def restore_threads():
    """The CPU profile sets torch's thread count in-process (num_threads: 1); put it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def flip_cache(tmp_path_factory):
    """One flip-registration cache for all runs of this module (the matrices depend only on the subjects)."""
    return str(tmp_path_factory.mktemp("flip_cache"))


def _workflow(dataset, output_dir, flip_cache, tracking=None, **overrides):
    settings = {**TINY, "flip_cache_dir": flip_cache, **overrides}
    return training_workflow(dataset.parent, output_dir, profile="cpu", tracking=tracking, **settings)


# --- small pieces -----------------------------------------------------------------------------------------------------


def test_prepare_batch_gives_plain_tensors_and_a_label_dict():
    batch = {
        "image": MetaTensor(torch.rand(1, 2, 4, 4, 4)),
        "target": MetaTensor(torch.rand(1, 1, 4, 4, 4)),
        "weight": torch.ones(1, 1, 4, 4, 4),
        "mask": torch.ones(1, 1, 4, 4, 4),
        "modality": ["T1"],
    }
    image, label = PrepareBatch(label_keys=["target", "weight", "lesion", "mask"])(batch, device="cpu")
    assert type(image) is torch.Tensor and torch.equal(image, batch["image"].as_tensor())
    assert set(label) == {"target", "weight", "mask", "image"}  # "lesion" is absent from the batch: skipped
    assert all(type(v) is torch.Tensor for v in label.values())
    assert label["image"] is image and torch.equal(label["target"], batch["target"].as_tensor())
    with pytest.raises(ValueError, match="no 'image' key"):
        PrepareBatch()({"target": batch["target"]})


def test_brain_metric_counts_only_brain_voxels():
    target = torch.zeros(1, 1, 16, 16, 16)
    mask = torch.zeros_like(target)
    mask[..., 4:12, 4:12, 4:12] = 1
    target[mask > 0] = 0.5
    pred = target.clone()
    pred[mask > 0] += 0.1  # error 0.1 inside the brain ...
    pred[mask == 0] = 1.0  # ... and a huge one outside, which must not count
    y = torch.cat([target, mask], dim=1)
    values = {}
    for name in ("l1", "psnr", "ssim"):
        metric = BrainMetric(metric=name)
        metric(y_pred=pred, y=y)
        values[name] = float(metric.aggregate())
    assert values["l1"] == pytest.approx(0.1, abs=1e-6)
    assert values["psnr"] == pytest.approx(20.0, abs=1e-4)  # -10 log10(0.1^2)
    perfect = BrainMetric(metric="ssim")
    perfect(y_pred=target, y=y)
    assert float(perfect.aggregate()) == pytest.approx(1.0, abs=1e-5) and values["ssim"] < 1.0
    empty = BrainMetric(metric="l1")
    empty(y_pred=pred, y=torch.cat([target, torch.zeros_like(mask)], dim=1))
    assert torch.isnan(empty.get_buffer()).all()  # an empty mask gives NaN, skipped by the mean
    with pytest.raises(ValueError, match="target \\+ brain mask"):
        BrainMetric()(y_pred=pred, y=target)


def test_latest_checkpoint_skips_incomplete_files(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    torch.save({"x": torch.zeros(1)}, tmp_path / "checkpoint_epoch=1.pt")
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(b"PK\x03\x04 cut short")  # newer, but truncated
    (tmp_path / "model.pt").write_bytes(b"")  # not a resume checkpoint
    os.utime(tmp_path / "checkpoint_epoch=1.pt", (1, 1))
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=1.pt")
    torch.save({"x": torch.ones(1)}, tmp_path / "checkpoint_final.pt")
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_final.pt")


def test_training_workflow_rejects_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="datalist.json"):
        training_workflow(tmp_path, tmp_path / "out")
    (tmp_path / "datalist.json").write_text("{}")
    with pytest.raises(ValueError, match="profile"):
        training_workflow(tmp_path, tmp_path / "out", profile="tpu")


# --- training runs ----------------------------------------------------------------------------------------------------


def test_seeded_smoke_training_loss_decreases(demo_3mm, flip_cache, tmp_path, restore_threads):
    workflow = _workflow(
        demo_3mm, tmp_path / "run", flip_cache, learning_rate=3e-3, epoch_length=30, max_epochs=1, val_interval=10
    )
    trainer = workflow.parser.get_parsed_content("train#trainer")
    losses = []
    terms = []

    def record(engine):
        out = engine.state.output[0]
        losses.append(float(out["loss"]))
        terms.append(float(out["loss_l1"]) + float(out["loss_gradient"]))

    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    workflow.run()
    workflow.finalize()
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    # the reconstruction terms fall fast; the anomaly head's Dice term takes longer, so the total falls less
    first, last = sum(terms[:5]) / 5, sum(terms[-5:]) / 5
    assert last < 0.7 * first, terms
    assert sum(losses[-5:]) < 0.85 * sum(losses[:5]), losses


def test_resume_continues_iteration_and_optimiser_state_and_logs_to_mlflow(
    demo_3mm, flip_cache, tmp_path, restore_threads
):
    mlflow = pytest.importorskip("mlflow")
    out = tmp_path / "run"
    settings = dict(epoch_length=3, val_interval=1, tracking="mlflow")
    train(demo_3mm.parent, out, profile="cpu", **{**TINY, "flip_cache_dir": flip_cache, "max_epochs": 1, **settings})
    saved_path = latest_checkpoint(out / "models")
    assert saved_path is not None and Path(saved_path).name == "checkpoint_final.pt"
    saved = torch.load(saved_path, map_location="cpu", weights_only=False)
    assert saved["trainer"]["iteration"] == 3 and saved["optimizer"]["state"]

    # the "interrupted" run goes on to 2 epochs in the same output folder
    workflow = _workflow(demo_3mm, out, flip_cache, max_epochs=2, **settings)
    assert workflow.parser.get_parsed_content("resume_from") == saved_path
    trainer = workflow.parser.get_parsed_content("train#trainer")
    restored = {}

    def record(engine):  # attached after the checkpoint loader: sees the restored state
        restored.update(
            iteration=engine.state.iteration,
            epoch=engine.state.epoch,
            optimizer=copy.deepcopy(engine.optimizer.state_dict()),
            model={k: v.clone() for k, v in engine.network.state_dict().items()},
        )

    trainer.add_event_handler(Events.STARTED, record)
    workflow.run()
    workflow.finalize()
    assert (restored["iteration"], restored["epoch"]) == (3, 1)
    assert trainer.state.iteration == 6 and trainer.state.epoch == 2
    opt_saved, opt_restored = saved["optimizer"], restored["optimizer"]
    assert opt_restored["param_groups"] == opt_saved["param_groups"]
    assert opt_restored["state"].keys() == opt_saved["state"].keys()
    for index, state in opt_saved["state"].items():
        for name, value in state.items():
            assert torch.equal(opt_restored["state"][index][name], value), (index, name)
    for name, value in saved["model"].items():
        assert torch.equal(restored["model"][name], value), name

    # MLflow: one run per invocation in <output_dir>/mlruns.db, with losses, validation metrics, params and QC images
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("una_training")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], order_by=["attribute.start_time ASC"])
    assert len(runs) == 2
    for run in runs:
        for metric in ("train_loss", "train_loss_l1", "train_loss_gradient", "val_l1", "val_psnr", "val_ssim"):
            assert metric in run.data.metrics, (metric, sorted(run.data.metrics))
        assert run.data.params["roi_size"] == "[32, 32, 32]" and run.data.params["levels"] == "2"
        assert run.data.params["learning_rate"] == "0.001"  # configs/train_cpu.yaml learning_rate
        config = [a.path for a in client.list_artifacts(run.info.run_id, "config")]
        assert len(config) == 1 and config[0].startswith("config/config_") and config[0].endswith(".json")
    resumed = client.get_metric_history(runs[1].info.run_id, "train_loss")
    assert sorted(m.step for m in resumed) == [4, 5, 6]  # the second run logs iterations 4-6 only
    val_l1 = client.get_metric_history(runs[1].info.run_id, "val_l1")
    assert 0 < val_l1[-1].value < 1
    assert [a.path for a in client.list_artifacts(runs[1].info.run_id, "qc")] == ["qc/validation_epoch_0002.png"]
    assert (out / "models" / "model.pt").is_file()


def test_monai_bundle_run_training_exits_0(demo_3mm, flip_cache, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "monai.bundle", "run", "training"]
    command += ["--config_file", str(BUNDLE_ROOT / "configs" / "train.yaml")]
    command += ["--logging_file", str(BUNDLE_ROOT / "configs" / "logging.conf"), "--bundle_root", str(BUNDLE_ROOT)]
    command += ["--dataset_dir", str(demo_3mm.parent), "--output_dir", str(out), "--flip_cache_dir", flip_cache]
    command += CLI_TINY + ["--epoch_length", "2", "--max_epochs", "1", "--val_interval", "1", "--num_threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(BUNDLE_ROOT))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "models" / "checkpoint_final.pt").is_file() and (out / "models" / "model.pt").is_file()
    assert (out / "qc" / "validation_epoch_0001.png").is_file()


def test_two_process_gloo_training(demo_3mm, flip_cache, tmp_path):
    # two validation subjects, one per process (the demo fixture has one: add a training subject)
    data = json.loads(demo_3mm.read_text())
    subjects = {s: load_datalist(demo_3mm, s, check_files=False) for s in ("training", "validation")}
    data.update(training=subjects["training"], validation=subjects["validation"] + subjects["training"][:1])
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps(data))
    out = tmp_path / "run"
    configs = [str(BUNDLE_ROOT / "configs" / name) for name in ("train.yaml", "multi_gpu_train.yaml")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    command += ["-m", "monai.bundle", "run", "training", "--config_file", json.dumps(configs)]
    command += ["--logging_file", str(BUNDLE_ROOT / "configs" / "logging.conf"), "--bundle_root", str(BUNDLE_ROOT)]
    command += ["--dataset_dir", str(demo_3mm.parent), "--datalist", str(datalist), "--output_dir", str(out)]
    command += ["--flip_cache_dir", flip_cache, "--tracking", "mlflow"]
    command += CLI_TINY + ["--epoch_length", "2", "--max_epochs", "2", "--val_interval", "2", "--num_threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(BUNDLE_ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    # rank 0 alone saves (the saver is disabled on rank 1) and tracks: one "Saved checkpoint" line per epoch, one run
    assert log.count("Saved checkpoint at epoch: 1") == 1 and log.count("Saved checkpoint at epoch: 2") == 1
    assert log.count("Got new best metric of val_l1") == 2  # each process gathers the metrics of both cases
    saved = torch.load(out / "models" / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert saved["trainer"]["iteration"] == 4
    assert not any(key.startswith("module.") for key in saved["model"])  # the DDP wrapper is not saved
    mlflow = pytest.importorskip("mlflow")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("una_training").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["world_size"] == "2"


# --- command line -----------------------------------------------------------------------------------------------------


def test_cli_train_passes_arguments_and_maps_user_errors(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(training_module, "train", lambda *args, **kwargs: calls.append((args, kwargs)) or "out")
    cli.main(["train", "--dataset_dir", "data", "--output_dir", "out", "--profile", "cpu", "--max_epochs", "3"])
    cli.main(["train", "data", "--overrides", '{"network_def#levels": 3}', "--noresume", "--tracking", "mlflow"])
    assert calls[0][1]["profile"] == "cpu" and calls[0][1]["max_epochs"] == 3 and calls[0][0] == ("data",)
    assert calls[1][1]["network_def#levels"] == 3 and calls[1][1]["resume"] is False
    assert calls[1][1]["tracking"] == "mlflow" and "max_epochs" not in calls[1][1]
    monkeypatch.undo()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--dataset_dir", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and "datalist.json" in capsys.readouterr().err


def _bundle_run(demo_3mm, out, flip_cache, *extra):
    """``python -m monai.bundle run training`` of the tiny CPU profile (arguments after ``extra`` win)."""
    configs = json.dumps([str(BUNDLE_ROOT / "configs" / name) for name in ("train.yaml", "train_cpu.yaml")])
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", configs]
    command += ["--logging_file", str(BUNDLE_ROOT / "configs" / "logging.conf"), "--bundle_root", str(BUNDLE_ROOT)]
    command += ["--dataset_dir", str(demo_3mm.parent), "--output_dir", str(out), "--flip_cache_dir", flip_cache]
    command += CLI_TINY + ["--val_interval", "1", "--num_threads", "1", *extra]
    return command, dict(os.environ, PYTHONPATH=str(BUNDLE_ROOT), OMP_NUM_THREADS="1")


def test_rerun_of_a_finished_training_is_one_line_and_no_empty_mlflow_run(
    demo_3mm, flip_cache, tmp_path, restore_threads, capsys
):
    mlflow = pytest.importorskip("mlflow")
    out = tmp_path / "run"
    tiny = {**TINY, "flip_cache_dir": flip_cache, "epoch_length": 2, "max_epochs": 1}
    train(demo_3mm.parent, out, profile="cpu", **tiny)
    command, env = _bundle_run(demo_3mm, out, flip_cache, "--epoch_length", "2", "--max_epochs", "1")
    result = subprocess.run(command + ["--tracking", "mlflow"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "already finished" in line and str(out / "models" / "model.pt") in line and "--max_epochs" in line, line
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("una_training")
    assert experiment is None or not client.search_runs([experiment.experiment_id])  # no empty run
    # the Python API raises it, una-bundle train gives the line with exit code 2
    with pytest.raises(training_module.TrainingFinishedError, match="max_epochs"):
        train(demo_3mm.parent, out, profile="cpu", **tiny)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            [
                "train",
                str(demo_3mm.parent),
                "--output_dir",
                str(out),
                "--profile",
                "cpu",
                "--max_epochs",
                "1",
                "--epoch_length",
                "2",
                "--overrides",
                json.dumps({**TINY, "flip_cache_dir": flip_cache}),
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].startswith("una-bundle: error: training in"), err[-3:]


def test_ctrl_c_during_training_says_where_the_checkpoint_is_and_exits_130(demo_3mm, flip_cache, tmp_path):
    out = tmp_path / "run"
    command, env = _bundle_run(demo_3mm, out, flip_cache, "--epoch_length", "1000", "--max_epochs", "2")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = []
    for line in process.stdout:  # the iteration lines of StatsHandler (log_interval 1)
        log.append(line)
        if "Iter: 2/1000" in line:
            break
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    output = "".join(log) + stdout + stderr
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "due to exception" not in output, output[-3000:]  # ignite's empty exception line is dropped
    line = stderr.strip().splitlines()[-1]
    checkpoint = out / "models" / "checkpoint_final.pt"
    assert line.startswith("training interrupted at epoch 1") and str(checkpoint) in line, line
    assert "run the same command again" in line
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["trainer"]["iteration"] >= 2


def test_ctrl_c_while_preparing_is_one_line_and_exit_130(tmp_path):
    """Before the first iteration (configs, dataset caching) a SIGINT to the process gives one line, no traceback."""
    script = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as on a terminal (a background job ignores it)
        "from una_bundle.scripts.workflows.training import guard_preparation\n"
        "guard_preparation(True)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(30)\n"
        "print('not interrupted')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 130 and "not interrupted" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("training interrupted while preparing"), result.stderr[-2000:]
    # the Python API (exit_on_error false) keeps KeyboardInterrupt
    script = script.replace("guard_preparation(True)", "guard_preparation(False)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode != 130 and "KeyboardInterrupt" in result.stderr


def test_epoch_timer_shows_progress_within_an_epoch_on_a_terminal_only(monkeypatch, caplog):
    import io
    import logging

    from ignite.engine import Engine

    from una_bundle.scripts.workflows.tracking import EpochTimer

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    lines = {}
    for name, stream in (("tty", Terminal()), ("pipe", io.StringIO())):
        engine = Engine(lambda engine, batch: [{"loss": torch.tensor(0.5)}])
        EpochTimer(every_s=0).attach(engine)
        monkeypatch.setattr(sys, "stderr", stream)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="una.training"):
            engine.run([0, 1, 2], max_epochs=2)
        monkeypatch.undo()
        lines[name] = [r.getMessage() for r in caplog.records if r.name == "una.training"]
    within = [line for line in lines["tty"] if " done: " not in line]
    assert [line.split(",")[0] for line in within] == [
        f"epoch {e}/2: iteration {i}/6" for e, i in ((1, 1), (1, 2), (2, 4), (2, 5))
    ], lines["tty"]
    assert "loss 0.5000" in within[0] and "min left" in within[0]
    assert len(lines["pipe"]) == 2 and all(" done: " in line for line in lines["pipe"])  # per epoch only


def test_cli_maps_ctrl_c_to_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise training_module.TrainingInterrupted("training interrupted at epoch 1: the latest checkpoint is X")

    monkeypatch.setattr(training_module, "train", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--dataset_dir", "data"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 130 and err == [
        "una-bundle: training interrupted at epoch 1: the latest checkpoint is X"
    ]


# --- checkpoints: atomic saves, damaged files skipped on resume, n_saved across a resume -----------------------------
_SAVE_FOREVER = """
import sys, torch
from ignite.engine import Engine, Events
from una_bundle.scripts.workflows import checkpoints
net = torch.nn.Linear(2048, 2048)  # 16 MB per save: a kill lands inside a write most of the time
saver = checkpoints.{saver}
engine = Engine(lambda engine, batch: None)

@engine.on(Events.ITERATION_COMPLETED)
def better(engine):  # every epoch improves the key metric, so the best model is saved every epoch
    engine.state.metrics = {{"l1": 1.0 / engine.state.epoch}}

saver.attach(engine)
engine.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: print("saved", flush=True))
engine.run([0], max_epochs=10**6)
"""


@pytest.mark.parametrize(
    "saver, name",
    [
        (
            "BestCheckpointSaver(sys.argv[1], {{'model': net}}, key_metric_name='l1', key_metric_negative_sign=True)",
            "model.pt",
        ),
        ("TrainerCheckpointSaver(sys.argv[1], {{'model': net}}, save_interval=1, n_saved=1, save_final=False)", None),
    ],
    ids=["best_model", "interval_n_saved_1"],
)
def test_checkpoints_survive_sigkill_during_a_save(tmp_path, saver, name):
    """SIGKILL a process that saves checkpoints back to back, at several moments: every checkpoint file under its
    final name loads, and resuming finds one (MONAI's saver left a 0-byte or truncated models/model.pt)."""
    import signal
    import time

    for delay in (0.05, 0.13, 0.31):
        folder = tmp_path / f"kill_{delay}"
        code = _SAVE_FOREVER.format(saver=saver.format())
        child = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "saved"
            time.sleep(delay)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
        final = [p for p in folder.iterdir() if not p.name.startswith(".")]
        assert final, "no checkpoint under a final name"
        for path in final:
            state = torch.load(path, map_location="cpu", weights_only=True)  # complete, not truncated
            assert state["weight"].shape == (2048, 2048) if name else state["model"]["weight"].shape == (2048, 2048)
        if name is None:
            assert latest_checkpoint(folder) in {str(p) for p in final}


def test_resume_skips_a_damaged_best_model_and_a_damaged_newest_checkpoint(tmp_path, caplog):
    from ignite.engine import Engine

    from una_bundle.scripts.workflows.checkpoints import BestCheckpointSaver

    (tmp_path / "model.pt").write_bytes(b"")  # what a kill during MONAI's in-place save left
    saver = BestCheckpointSaver(str(tmp_path), {"model": torch.nn.Linear(2, 2)}, key_metric_name="l1", resume=True)
    with caplog.at_level("WARNING", logger="una.training"):
        saver.attach(Engine(lambda engine, batch: None))  # no EOFError
    assert f"the best model {tmp_path / 'model.pt'} is damaged" in caplog.text

    torch.save({"x": torch.zeros(1000)}, tmp_path / "checkpoint_epoch=1.pt")
    torch.save({"x": torch.ones(1000)}, tmp_path / "checkpoint_epoch=2.pt")
    os.utime(tmp_path / "checkpoint_epoch=1.pt", (1, 1))
    damaged = bytearray((tmp_path / "checkpoint_epoch=2.pt").read_bytes())
    start = damaged.index(b"\x00\x00\x80\x3f")  # inside the stored tensor data: the zip directory is intact
    damaged[start : start + 4] = b"\x00\x00\x00\x40"
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(bytes(damaged))
    caplog.clear()
    with caplog.at_level("WARNING", logger="una.training"):
        assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=1.pt")
    assert "skipping damaged checkpoint" in caplog.text and "CRC" in caplog.text


def test_n_saved_is_honoured_after_a_resume(tmp_path):
    from ignite.engine import Engine

    from una_bundle.scripts.workflows.checkpoints import TrainerCheckpointSaver

    net = torch.nn.Linear(2, 2)
    for epoch in (1, 2):  # left by the interrupted run, which kept n_saved=2
        torch.save({"model": net.state_dict()}, tmp_path / f"checkpoint_epoch={epoch}.pt")
    engine = Engine(lambda engine, batch: None)
    saver = TrainerCheckpointSaver(str(tmp_path), {"model": net}, save_interval=1, n_saved=2, save_final=False)
    saver.attach(engine)
    engine.load_state_dict({"epoch": 2, "epoch_length": 1, "max_epochs": 5})  # as TrainerCheckpointLoader resumes
    engine.run([0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=4.pt", "checkpoint_epoch=5.pt"]


def test_resume_follows_the_configured_lr_milestones_not_the_checkpoints(tmp_path):
    from ignite.engine import Engine
    from torch.optim.lr_scheduler import MultiStepLR

    from una_bundle.scripts.workflows.checkpoints import TrainerCheckpointLoader

    def schedule(milestones):
        net = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
        return net, optimizer, MultiStepLR(optimizer, milestones=milestones, gamma=0.5)

    net, optimizer, scheduler = schedule([3])  # the run that saved: one milestone, at step 3
    for _ in range(5):
        optimizer.step(), scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.5
    torch.save(
        {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "trainer": {"epoch": 5, "epoch_length": 1, "max_epochs": 5},
        },
        tmp_path / "checkpoint_epoch=5.pt",
    )

    net, optimizer, scheduler = schedule([3, 4, 7])  # the config now: a milestone before the resumed step, one after
    engine = Engine(lambda engine, batch: (optimizer.step(), scheduler.step()))
    loader = TrainerCheckpointLoader(
        str(tmp_path / "checkpoint_epoch=5.pt"), {"model": net, "optimizer": optimizer, "lr_scheduler": scheduler}
    )
    loader.attach(engine)
    lrs = []
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: lrs.append(optimizer.param_groups[0]["lr"]))
    engine.run([0], max_epochs=8)
    assert scheduler.last_epoch == 8 and sorted(scheduler.milestones) == [3, 4, 7]
    assert lrs == [0.25, 0.25, 0.125]  # steps 6, 7 at 1 * 0.5**2; from step 7 on 0.5**3


def test_gpu_profile_is_the_cpu_recipe_with_more_patches_and_a_never_ending_loader(tmp_path):
    """configs/train_gpu.yaml changes the loader and the patches per step, nothing of the network or the pipeline."""
    import yaml

    from una_bundle.scripts.data.bundle_config import load_config

    assert training_module.PROFILE_CONFIGS["gpu"] == training_module.PROFILE_CONFIGS["cpu"] + ("train_gpu.yaml",)
    paths = {"dataset_dir": str(tmp_path), "output_dir": str(tmp_path / "out")}
    cpu = load_config(list(training_module.PROFILE_CONFIGS["cpu"]), paths)
    gpu = load_config(list(training_module.PROFILE_CONFIGS["gpu"]), paths)
    overlay = yaml.safe_load((BUNDLE_ROOT / "configs" / "train_gpu.yaml").read_text())
    cpu_recipe = yaml.safe_load((BUNDLE_ROOT / "configs" / "train_cpu.yaml").read_text())
    for key in set(cpu_recipe) - set(overlay):  # every other setting of the shipped recipe is kept
        assert gpu.get(key) == cpu.get(key), key
    assert gpu.get("network_def") == cpu.get("network_def") and gpu.get("train#augmentation") == cpu.get(
        "train#augmentation"
    )
    assert gpu.get_parsed_content("patches_per_volume") == 2 * cpu.get_parsed_content("patches_per_volume")
    assert gpu.get_parsed_content("train#patch#num_samples") == 8
    assert gpu.get_parsed_content("train#dataloader#persistent_workers") is True
    gpu["train#dataset"] = list(range(3))  # the sampler draws subjects with replacement, far beyond the list's end
    sampler = gpu.get_parsed_content("train#dataloader#sampler")
    drawn = list(itertools.islice(iter(sampler), 30))
    assert isinstance(sampler, torch.utils.data.RandomSampler) and sampler.replacement and len(sampler) >= 10**8
    assert set(drawn) <= {0, 1, 2} and len(drawn) == 30
    assert gpu.get_parsed_content("train#dataloader#shuffle") is False and gpu.get_parsed_content("amp") is False
