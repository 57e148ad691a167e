"""The committable training state (tools.training_state): pack a resume checkpoint without its network, unpack it;
average the networks of several checkpoints."""

import pytest
import torch

from una_bundle.scripts.model.network import UNANet
from una_bundle.tools.training_state import average, main, pack, unpack


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    net = UNANet(levels=2, features=4, out_channels=2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[5], gamma=0.2)
    for _ in range(3):
        opt.zero_grad()
        net(torch.rand(1, 2, 8, 8, 8)).square().mean().backward()
        opt.step()
        sched.step()
    ckpt = {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "lr_scheduler": sched.state_dict(),
        "trainer": {"epoch_length": 3, "iteration": 6, "max_epochs": 4},
    }
    path = tmp_path / "checkpoint_epoch=2.pt"
    torch.save(ckpt, path)
    weights = tmp_path / "model.pt"
    torch.save(net.state_dict(), weights)
    return path, weights, ckpt


def test_pack_unpack_round_trip(tmp_path):
    path, weights, ckpt = _checkpoint(tmp_path)
    state = pack(path, tmp_path / "state" / "s.pt", weights)
    assert state.stat().st_size < 0.6 * path.stat().st_size  # no network, moments in bfloat16
    out = unpack(state, tmp_path / "run", weights)
    assert out == tmp_path / "run" / "models" / "checkpoint_epoch=2.pt"
    restored = torch.load(out, map_location="cpu", weights_only=False)
    for k, v in ckpt["model"].items():
        assert torch.equal(restored["model"][k], v)
    assert restored["trainer"] == ckpt["trainer"] and restored["lr_scheduler"] == ckpt["lr_scheduler"]
    # the optimizer loads, and its moments come back float32 within bfloat16 rounding
    net = UNANet(levels=2, features=4, out_channels=2)
    net.load_state_dict(restored["model"])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    opt.load_state_dict(restored["optimizer"])
    for index, values in ckpt["optimizer"]["state"].items():
        loaded = opt.state_dict()["state"][index]
        for name in ("exp_avg", "exp_avg_sq"):
            assert loaded[name].dtype == torch.float32
            assert torch.allclose(loaded[name], values[name], rtol=1e-2, atol=1e-12)
    with pytest.raises(FileExistsError):
        unpack(state, tmp_path / "run", weights)


def test_pack_and_unpack_refuse_other_weights(tmp_path, capsys):
    path, weights, _ = _checkpoint(tmp_path)
    other = tmp_path / "other.pt"
    torch.save(UNANet(levels=2, features=4, out_channels=2).state_dict(), other)
    with pytest.raises(ValueError, match="is not the network"):
        pack(path, tmp_path / "s.pt", other)
    state = pack(path, tmp_path / "s.pt", weights)
    assert main(["unpack", str(state), str(tmp_path / "run"), "--weights", str(other)]) == 2
    assert "sha256 differs" in capsys.readouterr().err


def test_average_is_the_mean_of_the_networks_and_refuses_other_layouts(tmp_path, capsys):
    first, _, ckpt = _checkpoint(tmp_path)
    second = tmp_path / "plain_state_dict.pt"
    shifted = {k: v + 1.0 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(shifted, second)  # a plain state dict is read as well as a resume checkpoint
    out = average([first, second], tmp_path / "mean.pt")
    mean = torch.load(out, weights_only=True)
    assert mean.keys() == ckpt["model"].keys()
    for key, value in ckpt["model"].items():
        assert mean[key].dtype == value.dtype
        assert torch.allclose(mean[key], value + 0.5 if value.is_floating_point() else value, atol=1e-6), key
    # the averaged weights load into the network they came from
    UNANet(levels=2, features=4, out_channels=2).load_state_dict(mean)
    with pytest.raises(FileExistsError):
        average([first, second], out)  # never overwrites
    other = tmp_path / "other.pt"
    torch.save(UNANet(levels=2, features=8, out_channels=2).state_dict(), other)
    with pytest.raises(ValueError, match="not the same network"):
        average([first, other], tmp_path / "bad.pt")
    assert main(["average", str(first), str(other), "--out", str(tmp_path / "bad.pt")]) == 2
    assert "not the same network" in capsys.readouterr().err and not (tmp_path / "bad.pt").exists()
    assert main(["average", str(first), "--out", str(tmp_path / "one.pt")]) == 0
