import pytest
import torch

from una_bundle.scripts.model.network import UNANet


def _count(net, kind):
    return sum(isinstance(m, kind) for m in net.modules())


@pytest.mark.parametrize("shape", [(16, 16, 16), (8, 16, 24), (32, 8, 16)])
def test_output_shape(shape):
    net = UNANet(levels=4, features=8).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 2, *shape))
    assert out.shape == (2, 1, *shape)


@pytest.mark.parametrize("downsample", ["maxpool", "conv"])
@pytest.mark.parametrize("upsample", ["nontrainable", "deconv"])
def test_sampling_choices_keep_shape(downsample, upsample):
    net = UNANet(levels=3, features=8, downsample=downsample, upsample=upsample, final_act="sigmoid").eval()
    with torch.no_grad():
        out = net(torch.rand(1, 2, 8, 12, 16))
    assert out.shape == (1, 1, 8, 12, 16) and float(out.min()) > 0 and float(out.max()) < 1


@pytest.mark.parametrize("levels,features,max_features", [(1, 8, None), (3, 8, None), (5, 8, 32)])
def test_levels_and_features(levels, features, max_features):
    net = UNANet(levels=levels, features=features, max_features=max_features)
    ch = [min(features * 2**i, max_features or 10**9) for i in range(levels)]
    assert net.channels == ch and net.divisor == 2 ** (levels - 1)
    # two blocks per encoder level and per decoder level, one GroupNorm each
    assert _count(net, torch.nn.GroupNorm) == 2 * levels + 2 * (levels - 1)
    assert _count(net, torch.nn.MaxPool3d) == levels - 1
    # parameter count by formula: conv3 weights + bias, GroupNorm affine, 1x1 up-convs, 1x1 head
    conv = lambda cin, cout, k=3: cin * cout * k**3 + cout  # noqa: E731
    norm = lambda c: 2 * c  # noqa: E731
    expected = norm(2) + conv(2, ch[0]) + norm(ch[0]) + conv(ch[0], ch[0])
    for i in range(1, levels):
        expected += norm(ch[i - 1]) + conv(ch[i - 1], ch[i]) + norm(ch[i]) + conv(ch[i], ch[i])
    for i in range(levels - 1):
        up = conv(ch[i + 1], ch[i], 1) if ch[i + 1] != ch[i] else 0
        expected += up + norm(2 * ch[i]) + conv(2 * ch[i], ch[i]) + norm(ch[i]) + conv(ch[i], ch[i])
    expected += conv(ch[0], 1, 1)
    assert net.num_parameters() == expected == net.num_parameters(trainable_only=True)


def test_input_groupnorm_is_joint_and_others_use_eight_groups():
    net = UNANet(levels=2, features=16)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms[0].num_groups == 1 and norms[0].num_channels == 2
    assert all(n.num_groups == 8 for n in norms[1:])


def test_scripted_equals_eager():
    torch.manual_seed(0)
    net = UNANet(levels=3, features=8, gradient_checkpointing=True).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(2, 2, 16, 8, 12)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-6)
    with pytest.raises(torch.jit.Error, match="divisible by 4"):
        scripted(torch.rand(1, 2, 16, 10, 12))


def test_bad_input_raises_clear_error():
    net = UNANet(levels=4, features=8)
    with pytest.raises(ValueError, match=r"divisible by 8, got \[16, 12, 16\]"):
        net(torch.rand(1, 2, 16, 12, 16))
    with pytest.raises(ValueError, match=r"\[B, 2, X, Y, Z\]"):
        net(torch.rand(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="downsample"):
        UNANet(downsample="stride")


def test_gradient_checkpointing_matches():
    torch.manual_seed(0)
    plain = UNANet(levels=3, features=8).train()
    ckpt = UNANet(levels=3, features=8, gradient_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 2, 8, 8, 8)
    outs, grads = [], []
    for net in (plain, ckpt):
        net.zero_grad()
        out = net(x)
        (out**2).mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    # checkpointing really happens: the backward pass re-runs each level's forward (and only in training mode)
    for net, mode, expected in ((plain, "train", 2), (ckpt, "train", 4), (ckpt, "eval", 2)):
        getattr(net, mode)()
        calls = []
        handle = net.encoders[1].convs.register_forward_pre_hook(lambda *_: calls.append(1))
        net(x).sum().backward()
        net(x).sum().backward()
        handle.remove()
        assert len(calls) == expected, (mode, calls)


def test_overfits_tiny_example():
    torch.manual_seed(0)
    net = UNANet(levels=3, features=8).train()
    x = torch.rand(1, 2, 16, 16, 16)
    target = torch.sigmoid(4 * (x[:, :1] - x[:, 1:])).detach()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = (net(x) - target).abs().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bfloat16_autocast_keeps_weights_and_float32_output(monkeypatch):
    import una_bundle.scripts.model.network as network

    monkeypatch.setattr(network, "runs_bfloat16_natively", lambda device_type: True)  # emulated is fine at 16^3
    torch.manual_seed(0)
    plain = UNANet(in_channels=2, out_channels=2, levels=3, features=8)
    fast = UNANet(in_channels=2, out_channels=2, levels=3, features=8, autocast="bfloat16")
    assert plain.state_dict().keys() == fast.state_dict().keys()
    fast.load_state_dict(plain.state_dict())
    x = torch.rand(1, 2, 16, 16, 16)
    with torch.no_grad():
        ref, out = plain(x), fast(x)
    assert out.dtype == torch.float32
    error = float((out - ref).abs().mean())
    assert 0 < error < 0.05 * float(ref.abs().mean())  # bfloat16 rounding: close, not identical
    with torch.no_grad():  # TorchScript runs the float32 path
        assert torch.allclose(torch.jit.script(fast)(x), ref, atol=1e-5)
    with pytest.raises(ValueError, match="autocast"):
        UNANet(autocast="float16")


def test_bfloat16_autocast_falls_back_to_float32_without_native_bfloat16(monkeypatch):
    import una_bundle.scripts.model.network as network

    asked = []
    monkeypatch.setattr(network, "runs_bfloat16_natively", lambda device_type: asked.append(device_type) or False)
    torch.manual_seed(0)
    plain = UNANet(in_channels=2, out_channels=2, levels=3, features=8)
    fast = UNANet(in_channels=2, out_channels=2, levels=3, features=8, autocast="bfloat16")
    fast.load_state_dict(plain.state_dict())
    x = torch.rand(1, 2, 16, 16, 16)
    with torch.no_grad(), pytest.warns(UserWarning, match="no native bfloat16.*float32"):
        out = fast(x)
    with torch.no_grad():
        again = fast(x)  # asked and warned once per device type
        assert torch.equal(out, plain(x)) and torch.equal(again, out)
    assert asked == ["cpu"]
