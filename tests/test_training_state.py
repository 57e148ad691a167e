"""The committable training state (tools.training_state): pack a resume checkpoint without its network, unpack it."""

import pytest
import torch

from una_bundle.scripts.model.network import UNANet
from una_bundle.tools.training_state import main, pack, unpack


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
