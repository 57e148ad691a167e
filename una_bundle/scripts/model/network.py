"""The UNA network: a 3D U-Net of pre-norm ``GroupNorm -> Conv3d(3x3x3) -> LeakyReLU`` blocks.

UNA (``shared/design/una-method.md`` section 5) maps a 2-channel input (the image and its left-right flip
registered back onto it) to the subject's healthy 1 mm T1w: ``[B, 2, X, Y, Z] -> [B, 1, X, Y, Z]``.

Architecture (``levels`` resolution levels, ``features * 2**l`` channels at level ``l``, capped by ``max_features``):

* every block is ``GroupNorm(num_groups) -> Conv3d(3x3x3, padding 1) -> LeakyReLU``; a level is two blocks;
* encoder level 0 works at full resolution; each deeper level first **max-pools** by 2 (``downsample="maxpool"``,
  parameter-free and the classic U-Net choice) or uses a **strided 3x3x3 pre-norm block**
  (``downsample="conv"``, learned);
* each decoder level **up-samples** the coarser features by 2, reducing their channels to the skip's:
  ``upsample="nontrainable"`` (default) is a 1x1x1 convolution followed by trilinear interpolation (cheap, no
  checkerboard artefacts in an intensity regression), ``upsample="deconv"`` a 2x2x2 stride-2 transposed
  convolution; the result is concatenated with the encoder's skip features and passed through two blocks;
* a 1x1x1 convolution gives the output channel, then ``final_act`` (default none: like the reference we predict
  intensities directly; a sigmoid would match the [0, 1] target range but its vanishing gradient near 0 slows
  learning the large zero background, so it is an option, as is any MONAI activation name).

GroupNorm needs channels divisible by ``num_groups``; where they are not (only the 2-channel input with the
defaults) one group is used, i.e. the image and its flip are normalised *jointly*, which keeps their relative
intensities - the asymmetry the symmetry prior relies on.

Why our own class rather than MONAI's nets: ``BasicUNet`` has a fixed depth of 5 levels, and ``BasicUNet``,
``UNet`` and ``DynUNet`` all apply normalisation *after* the convolution (``Convolution`` runs
``conv -> ADN``, so ``adn_ordering`` only orders norm/activation/dropout behind the convolution). The pre-norm
ordering normalises the block's *input* (``in_channels`` groups), which ``Convolution`` cannot express. We
therefore build each block from MONAI parts - the norm from ``get_norm_layer`` and
``Convolution(adn_ordering="A")`` for the convolution and activation - and MONAI's ``UpSample`` and ``Pool``, and
write only the U-Net wiring, the input check and optional gradient checkpointing.

Input sizes: every spatial size must be divisible by ``2**(levels - 1)`` (``UNANet.divisor``), else a
``ValueError`` is raised: silent padding would make the output depend on where the padding went. Training crops
(160^3 with 6 levels: divisor 32) satisfy it; whole volumes of any size go through a sliding-window inferer
(``monai.inferers.SlidingWindowInferer`` with a divisible ``roi_size``) or ``monai.transforms.DivisiblePad``.

The network is TorchScript-scriptable (``torch.jit.script``; ``python -m monai.bundle ckpt_export``) and supports
gradient checkpointing per level (``gradient_checkpointing=True``, training mode, eager only), which stores only
each level's input and recomputes the rest in the backward pass: at 160^3 and 64 base features a single
full-resolution feature map is about 1 GB in float32.
"""

from __future__ import annotations

import warnings
from typing import List

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch.utils.checkpoint import checkpoint

__all__ = ["UNANet", "PreNormBlock"]

_DOWNSAMPLE = ("maxpool", "conv")
_UPSAMPLE = ("nontrainable", "deconv")
_AUTOCAST = {None: None, "bfloat16": torch.bfloat16}


def runs_bfloat16_natively(device_type: str) -> bool:
    """Whether ``device_type`` computes bfloat16 convolutions in hardware (CUDA with bf16, or a CPU with AVX512).

    Elsewhere (e.g. an AVX2-only CPU) oneDNN emulates bfloat16 and a training step of the CPU recipe takes over ten
    times as long as in float32 (``benchmarks/bench_training.py`` prints both), so :class:`UNANet` falls back to
    float32 there.
    """
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch build without oneDNN
            return False
    return False


def _norm_groups(channels: int, num_groups: int) -> int:
    """``num_groups`` if it divides ``channels``, else 1 (joint normalisation of all channels)."""
    return num_groups if channels % num_groups == 0 else 1


class PreNormBlock(nn.Sequential):
    """``GroupNorm -> Conv3d -> LeakyReLU``: ``[B, in_channels, X, Y, Z] -> [B, out_channels, X/s, Y/s, Z/s]``.

    Args:
        in_channels: input channels (the GroupNorm normalises these).
        out_channels: output channels of the convolution.
        num_groups: GroupNorm groups; 1 when they do not divide ``in_channels``.
        act: activation name or ``(name, kwargs)`` for MONAI's ``Act`` factory.
        kernel_size: convolution kernel size (padding keeps the size, up to the stride).
        strides: convolution stride ``s`` (2 for a learned down-sampling).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_groups: int = 8,
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.1, "inplace": True}),
        kernel_size: int = 3,
        strides: int = 1,
    ) -> None:
        super().__init__()
        groups = _norm_groups(in_channels, num_groups)
        self.add_module("norm", get_norm_layer(("group", {"num_groups": groups}), spatial_dims=3, channels=in_channels))
        self.add_module(
            "conv",
            Convolution(
                3,
                in_channels,
                out_channels,
                strides=strides,
                kernel_size=kernel_size,
                adn_ordering="A",
                act=act,
                norm=None,
            ),
        )


class _EncoderLevel(nn.Module):
    """Optional down-sampling then two blocks: ``[B, C_in, S] -> [B, C, S / 2 (or S at level 0)]``."""

    def __init__(self, down: nn.Module, convs: nn.Module) -> None:
        super().__init__()
        self.down = down
        self.convs = convs
        self.gradient_checkpointing = False

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(self.down(x))

    @torch.jit.unused
    def _run_checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._run, x, use_reentrant=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return self._run_checkpointed(x)
        return self._run(x)


class _DecoderLevel(nn.Module):
    """Up-sample, concatenate the skip, two blocks: ``([B, C', S/2], [B, C, S]) -> [B, C, S]``."""

    def __init__(self, up: nn.Module, convs: nn.Module) -> None:
        super().__init__()
        self.up = up
        self.convs = convs
        self.gradient_checkpointing = False

    def _run(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([skip, self.up(x)], dim=1))

    @torch.jit.unused
    def _run_checkpointed(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._run, x, skip, use_reentrant=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return self._run_checkpointed(x, skip)
        return self._run(x, skip)


class UNANet(nn.Module):
    """UNA's 3D U-Net: ``[B, in_channels, X, Y, Z] -> [B, out_channels, X, Y, Z]`` (see the module docstring).

    Args:
        in_channels: input channels (2: the image and its registered left-right flip).
        out_channels: output channels (1: the healthy T1w).
        levels: resolution levels (>= 1; 6 in UNA's final config). Spatial sizes must be divisible by
            ``2**(levels - 1)``.
        features: channels at level 0 (64 in UNA); level ``l`` has ``features * 2**l``.
        max_features: optional cap on the channels of any level (None: no cap; 6 levels of 64 reach 2048).
        num_groups: GroupNorm groups (8); 1 where they do not divide a block's input channels.
        act: activation of every block, a MONAI ``Act`` name or ``(name, kwargs)``.
        downsample: ``"maxpool"`` (2x2x2 max-pooling) or ``"conv"`` (stride-2 3x3x3 pre-norm block).
        upsample: ``"nontrainable"`` (1x1x1 conv then trilinear x2) or ``"deconv"`` (2x2x2 stride-2 transposed conv).
        final_act: activation after the output convolution (None: identity; e.g. ``"sigmoid"``).
        gradient_checkpointing: recompute each level's activations in the backward pass (training, eager mode) to
            save memory; see :meth:`set_gradient_checkpointing`.
        autocast: ``None`` (float32) or ``"bfloat16"``: run the U-Net body under ``torch.autocast`` of the input's
            device in that dtype (eager mode only), the output convolution in float32. On CPUs with AVX512-BF16 a
            training step is about twice as fast (``benchmarks/bench_training.py``); where the device does not run
            bfloat16 natively (:func:`runs_bfloat16_natively`) it runs in float32 with a warning instead. The
            weights stay float32, so a checkpoint loads with or without it. MONAI's engines only autocast on CUDA,
            hence this option.
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        levels: int = 6,
        features: int = 64,
        max_features: int | None = None,
        num_groups: int = 8,
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.1, "inplace": True}),
        downsample: str = "maxpool",
        upsample: str = "nontrainable",
        final_act: str | tuple | None = None,
        gradient_checkpointing: bool = False,
        autocast: str | None = None,
    ) -> None:
        super().__init__()
        if autocast not in _AUTOCAST:
            raise ValueError(f"autocast must be one of {tuple(_AUTOCAST)}, got {autocast!r}.")
        self.autocast = autocast
        self._autocast_checked: dict[str, bool] = {}  # device type -> runs natively (asked once per device)
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}.")
        if features < 1 or (max_features is not None and max_features < 1):
            raise ValueError(f"features and max_features must be >= 1, got {features} and {max_features}.")
        if downsample not in _DOWNSAMPLE:
            raise ValueError(f"downsample must be one of {_DOWNSAMPLE}, got {downsample!r}.")
        if upsample not in _UPSAMPLE:
            raise ValueError(f"upsample must be one of {_UPSAMPLE}, got {upsample!r}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.levels = levels
        self.divisor = 2 ** (levels - 1)
        cap = features * self.divisor if max_features is None else max_features
        self.channels: List[int] = [min(features * 2**level, cap) for level in range(levels)]
        ch = self.channels

        def block(cin: int, cout: int, strides: int = 1) -> PreNormBlock:
            return PreNormBlock(cin, cout, num_groups=num_groups, act=act, strides=strides)

        encoders = []
        for level in range(levels):
            cin = in_channels if level == 0 else ch[level - 1]
            down: nn.Module = nn.Identity()
            if level > 0:
                down = Pool["MAX", 3](kernel_size=2) if downsample == "maxpool" else block(cin, cin, strides=2)
            encoders.append(_EncoderLevel(down, nn.Sequential(block(cin, ch[level]), block(ch[level], ch[level]))))
        self.encoders = nn.ModuleList(encoders)

        decoders = []
        for level in range(levels - 2, -1, -1):  # coarse to fine
            up = UpSample(
                3,
                ch[level + 1],
                ch[level],
                scale_factor=2,
                mode=upsample,
                pre_conv="default",
                interp_mode="trilinear",
                align_corners=False,
            )
            convs = nn.Sequential(block(2 * ch[level], ch[level]), block(ch[level], ch[level]))
            decoders.append(_DecoderLevel(up, convs))
        self.decoders = nn.ModuleList(decoders)

        self.head = Convolution(3, ch[0], out_channels, kernel_size=1, conv_only=True)
        self.final_act = nn.Identity() if final_act is None else get_act_layer(final_act)
        self.set_gradient_checkpointing(gradient_checkpointing)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Turn per-level gradient checkpointing on or off (effective in training mode, eager only).

        Args:
            enabled: whether to checkpoint.
        """
        self.gradient_checkpointing = bool(enabled)
        for module in list(self.encoders) + list(self.decoders):
            module.gradient_checkpointing = self.gradient_checkpointing

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (all, or only those with ``requires_grad``).

        Args:
            trainable_only: count only the trainable parameters.
        """
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNANet expects input [B, {self.in_channels}, X, Y, Z], got shape {list(x.shape)}.")
        for size in x.shape[2:]:
            if size % self.divisor != 0:
                raise ValueError(
                    f"UNANet with {self.levels} levels needs spatial sizes divisible by {self.divisor}, got "
                    f"{list(x.shape[2:])}; pad the input (monai.transforms.DivisiblePad) or use a sliding-window "
                    f"inferer with a divisible roi_size."
                )

    @torch.jit.unused
    def _body_autocast(self, x: torch.Tensor) -> torch.Tensor:
        """The body under autocast where ``x``'s device runs it natively, else in float32 (warned once per device)."""
        device_type = x.device.type
        native = self._autocast_checked.get(device_type)
        if native is None:
            native = self._autocast_checked[device_type] = runs_bfloat16_natively(device_type)
            if not native:
                warnings.warn(
                    f"UNANet(autocast={self.autocast!r}): this {device_type} has no native bfloat16 (emulated "
                    f"bfloat16 is over ten times slower), so the network runs in float32.",
                    stacklevel=3,
                )
        if not native:
            return self._body(x)
        with torch.autocast(device_type=device_type, dtype=_AUTOCAST[self.autocast]):
            return self._body(x).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, X, Y, Z] -> [B, out_channels, X, Y, Z]``, sizes divisible by :attr:`divisor`."""
        self._check_input(x)
        if self.autocast is not None and not torch.jit.is_scripting():
            x = self._body_autocast(x)
        else:
            x = self._body(x)
        return self.final_act(self.head(x))

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder and decoder: ``[B, in_channels, S] -> [B, features, S]`` (before the output convolution)."""
        skips: List[torch.Tensor] = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        for i, decoder in enumerate(self.decoders):
            x = decoder(x, skips[len(skips) - 2 - i])
        return x
