"""tools.gpu_transfer: a GPU run's last checkpoint and an average of its last epochs, carried in small files."""

import pytest
import torch

from una_bundle.scripts.model.network import UNANet
from una_bundle.tools.gpu_transfer import main, pack, unpack


def _run(tmp_path, epochs=(1, 2, 3, 10)):
    """A run folder with epoch checkpoints of a small UNANet trained a few AdamW steps (and a final checkpoint)."""
    torch.manual_seed(0)
    net = UNANet(levels=2, features=8, out_channels=2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[5], gamma=0.2)
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    saved = {}
    for epoch in epochs:
        opt.zero_grad()
        net(torch.rand(1, 2, 8, 8, 8)).square().mean().backward()
        opt.step()
        sched.step()
        state = {
            "model": {k: v.clone() for k, v in net.state_dict().items()},
            "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(),
            "trainer": {"epoch_length": 2, "iteration": 2 * epoch, "max_epochs": 20},
        }
        torch.save(state, models / f"checkpoint_epoch={epoch}.pt")  # epoch 10 sorts after 3 by number, not name
        saved[epoch] = state
    torch.save(saved[epochs[-1]], models / "checkpoint_final.pt")
    return tmp_path / "run", saved


def test_pack_unpack_round_trip_in_small_files(tmp_path):
    run, saved = _run(tmp_path)
    limit = 40_000  # bytes per part: forces the weights and moments into several files
    files = pack(run, tmp_path / "out", n_average=2, limit=limit)
    weights = [f for f in files if f.name.startswith("final_weights_")]
    assert len(weights) > 1 and all(f.stat().st_size < 4 * limit for f in files if f.name != "final_rest.pt")
    resume, averaged = unpack(tmp_path / "out", tmp_path / "back")
    ckpt = torch.load(resume, weights_only=False)
    last = saved[10]
    assert ckpt["trainer"] == last["trainer"] and ckpt["lr_scheduler"] == last["lr_scheduler"]
    assert all(torch.equal(ckpt["model"][k], v) for k, v in last["model"].items())  # float32, exact
    for index, values in last["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):  # bfloat16 on the way
            assert torch.allclose(ckpt["optimizer"]["state"][index][name], values[name], rtol=1e-2, atol=1e-9)
    # the unpacked checkpoint resumes: AdamW and the scheduler load it
    net = UNANet(levels=2, features=8, out_channels=2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    # the average is of the newest two epochs by number (3 and 10), within float16 rounding
    mean = torch.load(averaged, weights_only=True)
    for key, value in last["model"].items():
        expected = (saved[3]["model"][key].double() + value.double()) / 2
        assert mean[key].dtype == value.dtype
        assert torch.allclose(mean[key].double(), expected, rtol=1e-3, atol=1e-4), key
    with pytest.raises(FileExistsError):
        unpack(tmp_path / "out", tmp_path / "back")  # never overwrites
    with pytest.raises(FileExistsError, match="earlier pack"):
        pack(run, tmp_path / "out", n_average=2)  # nor mixes its parts with an earlier pack's


def test_errors_name_the_folder(tmp_path, capsys):
    (tmp_path / "empty" / "models").mkdir(parents=True)
    assert main(["pack", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "no checkpoint_epoch=N.pt" in capsys.readouterr().err
    assert main(["unpack", str(tmp_path / "empty"), str(tmp_path / "dest")]) == 2
    assert "final_weights_N.pt" in capsys.readouterr().err
