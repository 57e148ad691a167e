"""Domain randomisation of UNA's training images (``shared/design/una-method.md`` section 3): what MONAI lacks.

A synthetic training input is drawn from an anatomy label map (SynthSeg / Brain-ID style); real scans take the same
geometry and milder intensity steps. The steps, in pipeline order, with UNA's defaults (``pi / 12`` = 15 degrees):

1. **contrast** from labels -- ours, :class:`RandLabelToImaged` ``(keys="label", image_key="image")``: MONAI has no
   Gaussian-mixture label-to-image synthesis. Pathology is encoded next (:mod:`.fluid_anomaly`,
   :mod:`.anomaly_encoding`), before the deformation, so image and lesion move together.
2. **geometry** -- MONAI, ``Rand3DElasticd(prob=1, sigma_range=(8, 10), magnitude_range=(0, 1300),
   rotate_range=(pi / 12,) * 3, shear_range=(0.2,) * 6, scale_range=(0.2,) * 3, mode=("bilinear", "nearest"),
   padding_mode="zeros")`` on the image, the target T1w and the label/lesion maps: affine and non-linear field in one
   resampling. Its smoothed-noise field at ``sigma`` 8-10 voxels with magnitude up to 1300 has a displacement std of
   about 0-4 voxels (measured), the reference's control grid of 3-6 % of the size with std up to 4 voxels.
   Then ``RandFlipd(spatial_axis=0, prob=0.5)`` (left-right in RAS).
3. **gamma** -- MONAI, ``RandAdjustContrastd(prob=1, gamma=(0.82, 1.22))``. UNA draws ``exp(N(0, 0.1))``; MONAI draws
   a uniform gamma, and ``(exp(-0.2), exp(0.2))`` covers the log-normal's central 95 %. MONAI's
   ``((x - min) / range) ** gamma * range + min`` is the reference's ``300 * (x / 300) ** gamma`` up to a global
   scale (removed by step 7) when the minimum is 0, and uses one gamma and one min/range for all channels, so a
   log-normal ``RandGamma`` of our own would only change the 5 % tails: not written.
4. **bias field** -- ours, :class:`RandSmoothBiasFieldd` ``(std_range=(0.1, 0.6), scale_range=(0.02, 0.04))``:
   ``exp`` of a random low-resolution Gaussian log-field whose std is itself random. MONAI's ``RandBiasField`` is a
   fixed-degree Legendre polynomial (NumPy), ``RandSmoothFieldAdjustIntensity`` a uniform field of fixed amplitude
   and size; neither draws the log-field's std per sample.
5. **resolution** -- ours, :class:`RandResolutiond` (four regimes, blur by slice thickness, down- and up-sampling).
   MONAI's ``RandSimulateLowResolution`` zooms all axes by one factor without a slice profile.
6. **noise** -- MONAI, ``RandGaussianNoised(prob=1, mean=0, std=1.0, sample_std=True)`` on the 0-255 scale: std
   ``U(0, 1)`` (UNA: ``U(0.05, 1)``; the lower bound is invisible at 0.05 / 255). Real images in ``[0, 1]``:
   ``std=0.02`` gives UNA's ``U(0, 0.02)`` exactly. The reference adds noise at the low resolution, before
   up-sampling; at these levels the difference is immaterial.
7. **normalise** -- MONAI, ``ThresholdIntensityd(threshold=0, above=True, cval=0)`` (negatives to 0, as the
   reference), then ``ScaleIntensityRangePercentilesd(lower=0, upper=99.5, b_min=0, b_max=1, clip=True)``
   (``channel_wise=False``: every channel gets the same mapping; a zero background stays 0).

Every transform here is an array/dictionary pair, draws its numbers in ``randomize()`` from ``self.R`` (torch noise
from a local ``torch.Generator`` seeded from ``self.R``), runs in torch on the input's device and keeps MetaTensor
metadata. Multi-channel inputs (an image and its flip) get identical parameters on every channel.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.networks.layers import separable_filtering
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from ..data.checks import check_probability, check_range
from ..data.rng import random_seed

__all__ = [
    "RandLabelToImage",
    "RandLabelToImaged",
    "RandResolution",
    "RandResolutiond",
    "RandSmoothBiasField",
    "RandSmoothBiasFieldd",
    "simulate_resolution",
    "REGIMES",
    "BLUR_FACTOR",
    "CT_WINDOW_HU",
    "CT_HU_FREESURFER",
]

#: UNA's four acquisition regimes, in the order of ``RandResolution``'s ``regime_probs``.
REGIMES = ("isotropic_1mm", "clinical", "low_field", "low_res_isotropic")

#: Blur std per mm of slice thickness, ``ln(5) / pi`` (reference). FWHM = thickness would be ``1 / 2.3548 = 0.4247``.
BLUR_FACTOR = math.log(5.0) / math.pi

#: Brain window in Hounsfield units (level 40, width 80) mapped linearly onto 0-255 in the CT-like mode.
CT_WINDOW_HU = (0.0, 80.0)
#: Tissue orders of real MR sequences RandLabelToImage can draw, with the least spread of their three class means
#: as a fraction of ``mean_range`` (proton density has the weakest contrast).
TISSUE_ORDERS = {"t1": 0.4, "t2": 0.4, "flair": 0.3, "pd": 0.15}

#: Typical unenhanced-CT densities (HU) of the FreeSurfer / SynthSeg labels: CSF 0-15, white matter 20-30, grey
#: matter 35-45, blood 40-60 (so CSF < WM < GM). Label 0 (outside the brain) is air, below the window.
CT_HU_FREESURFER: dict[int, float] = {
    0: -1000.0,
    **dict.fromkeys((2, 41, 7, 46, 85, 251, 252, 253, 254, 255), 27.0),  # cerebral/cerebellar WM, chiasm, CC
    **dict.fromkeys((3, 42), 38.0),  # cerebral cortex
    **dict.fromkeys((8, 47), 40.0),  # cerebellar cortex
    **dict.fromkeys((4, 5, 14, 15, 24, 43, 44), 8.0),  # ventricles, CSF
    **dict.fromkeys((10, 49), 35.0),  # thalamus
    **dict.fromkeys((11, 50, 12, 51, 26, 58, 17, 53, 18, 54), 37.0),  # caudate, putamen, accumbens, hippo, amygdala
    **dict.fromkeys((13, 52), 34.0),  # pallidum
    **dict.fromkeys((28, 60), 31.0),  # ventral diencephalon
    16: 30.0,  # brainstem
    **dict.fromkeys((30, 62), 45.0),  # vessels (blood)
    **dict.fromkeys((31, 63), 20.0),  # choroid plexus
    77: 22.0,  # white-matter hypointensities (hypodense)
}


def _as_range(name: str, value: float | Sequence[float], low: float | None = None) -> tuple[float, float]:
    """A ``(min, max)`` pair from a pair or a single number (``(v, v)``), checked against ``low``."""
    pair = (value, value) if isinstance(value, (int, float)) else value
    return tuple(float(v) for v in check_range(name, pair, low, None))


def _check_image(name: str, img: torch.Tensor) -> None:
    if img.ndim != 4:
        raise ValueError(f"{name}: expected a channel-first 3D image [C, X, Y, Z], got shape {tuple(img.shape)}.")


def _plain(img: torch.Tensor) -> torch.Tensor:
    return img.as_tensor() if isinstance(img, MetaTensor) else img


def _voxel_spacing(img: torch.Tensor) -> np.ndarray:
    """Voxel size in mm along the three spatial axes, from a MetaTensor's affine (1 mm for plain tensors)."""
    if isinstance(img, MetaTensor):
        return np.asarray(img.pixdim, dtype=np.float64)[:3]
    return np.ones(3)


def _gaussian_blur(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Blur ``x`` ``[C, X, Y, Z]`` with a separable Gaussian of std ``sigmas`` (voxels, one per axis; 0 = none).

    Every channel gets the same kernels; borders are replicated. Kernels are MONAI's ``erf`` (pixel-integrated)
    Gaussians truncated at 3 std.
    """
    if all(s <= 0 for s in sigmas):
        return x
    kernels = [
        gaussian_1d(torch.tensor(float(s)), truncated=3.0, approx="erf", normalize=True) if s > 0 else torch.ones(1)
        for s in sigmas
    ]
    return separable_filtering(x[None], kernels, mode="replicate")[0]


class RandLabelToImage(RandomizableTransform):
    """Draw a synthetic contrast from an integer label map: per label a Gaussian, mixed at label borders.

    ``__call__(label)``: ``label`` ``[1, X, Y, Z]`` of integer values (any dtype). Returns a float32 image
    ``[1, X, Y, Z]`` on a 0-255 scale (means inside ``mean_range``; the Gaussian tails may pass 255 in the MR mode,
    the CT mode is clipped to its window) with the label's metadata; never negative. When the transform does not
    fire (``prob``) the input is returned unchanged.

    Each call draws, per label present, a mean ``U(mean_range)`` and a std ``U(std_range)``; label 0 (background)
    gets mean and std 0 with probability ``background_zero_prob`` and is then exactly 0. With probability ``ct_prob``
    the contrast is CT-like instead: each label's density comes from ``ct_hu`` (typical HU, CSF < WM < GM) plus a
    jitter ``U(-ct_jitter_hu, ct_jitter_hu)``, its std from ``U(ct_std_range_hu)``, both mapped through the brain
    window ``ct_window`` onto 0-255; labels missing from ``ct_hu`` get a density ``U(ct_unknown_hu)``; the background
    is air (0). After a call, ``label_values``, ``means``, ``stds`` (0-255 scale), ``is_ct``, ``background_zero`` and
    ``pv_sigma_value`` describe the draw.

    Tissue-ordered contrasts: with probability ``ordered_prob`` (and not CT) the means follow the tissue order of a
    real MR sequence drawn from ``orders`` (``"t1"``: WM > GM > CSF, ``"t2"``: CSF > GM > WM, ``"flair"``:
    GM > WM > CSF, ``"pd"``: CSF > GM > WM with a small spread): three sorted values ``U(mean_range)`` are given to
    the tissue classes of ``tissue_labels`` (``{"csf": ids, "gm": ids, "wm": ids}``; the middle class between 1/4
    and 3/4 of the span) and each label of a class gets its class mean plus a uniform jitter of at most
    ``ordered_jitter`` (less where the gap between classes needs it: the order always holds); other labels keep a
    random mean. Fully random means
    rarely produce these orders with clear gaps, yet they are the contrasts users bring (UNA section 3.2).

    Partial volume: the per-voxel mean and std maps are smoothed with a Gaussian of std ``pv_sigma`` voxels before
    the per-voxel intensities are drawn. A border voxel's expected intensity is its tissue fractions (the label
    masks convolved with the voxel's point-spread function) times the tissue means; that is linear, so it equals the
    smoothed mean map, with no one-hot tensor (memory independent of the number of labels). Drawing the noise after
    smoothing keeps the texture white and at full std inside each label (smoothing the drawn image would not);
    smoothing the std map blends the texture at borders too (an approximation of a mixture's std). The default 0.5
    voxel (FWHM 1.2 voxels, about one voxel's extent) mixes only the voxel layer on each side of a border.

    Args:
        mean_range: (min, max) of the per-label means, 0-255 scale (UNA: 25, 225).
        std_range: (min, max) of the per-label stds (UNA: 5, 25).
        pv_sigma: partial-volume smoothing std in voxels, a number or a (min, max) range drawn per call; 0 = none.
        background_zero_prob: probability that label 0 is set to 0 (UNA: 0.5).
        ct_prob: probability of the CT-like contrast instead of a random one (0 = off, the reference's behaviour).
        ct_hu: label -> typical density (HU) used in the CT-like mode; default :data:`CT_HU_FREESURFER`.
        ct_window: (min, max) HU mapped onto 0-255 (brain window, default 0-80 HU).
        ct_jitter_hu: half-width of the uniform per-label density jitter (HU); below 5 HU the order CSF < WM < GM of
            the default table is kept.
        ct_std_range_hu: (min, max) of the per-label std (HU; CT noise in a brain window is a few HU).
        ct_unknown_hu: (min, max) density drawn for labels not in ``ct_hu``.
        ordered_prob: probability of a tissue-ordered MR contrast (0 = off: fully random means).
        tissue_labels: ``{"csf": ids, "gm": ids, "wm": ids}``, needed when ``ordered_prob > 0``.
        orders: the sequences drawn from, uniformly (any of ``"t1"``, ``"t2"``, ``"flair"``, ``"pd"``).
        ordered_jitter: half-width of the per-label jitter around its class mean (0-255 scale).
        prob: probability of synthesising at all.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        mean_range: Sequence[float] = (25.0, 225.0),
        std_range: Sequence[float] = (5.0, 25.0),
        pv_sigma: float | Sequence[float] = 0.5,
        background_zero_prob: float = 0.5,
        ct_prob: float = 0.0,
        ct_hu: Mapping[int, float] | None = None,
        ct_window: Sequence[float] = CT_WINDOW_HU,
        ct_jitter_hu: float = 3.0,
        ct_std_range_hu: Sequence[float] = (2.0, 6.0),
        ct_unknown_hu: Sequence[float] = (20.0, 45.0),
        ordered_prob: float = 0.0,
        tissue_labels: Mapping[str, Sequence[int]] | None = None,
        orders: Sequence[str] = tuple(TISSUE_ORDERS),
        ordered_jitter: float = 10.0,
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, check_probability("prob", prob))
        self.ordered_prob = check_probability("ordered_prob", ordered_prob)
        self.tissue_labels = {str(k): tuple(int(i) for i in v) for k, v in (tissue_labels or {}).items()}
        if self.ordered_prob > 0 and set(self.tissue_labels) != {"csf", "gm", "wm"}:
            raise ValueError(
                f"RandLabelToImage: ordered_prob > 0 needs tissue_labels with keys csf, gm, wm; got "
                f"{sorted(self.tissue_labels)}."
            )
        unknown = [o for o in orders if o not in TISSUE_ORDERS]
        if unknown or not orders:
            raise ValueError(f"RandLabelToImage: orders must be a non-empty subset of {tuple(TISSUE_ORDERS)}, got {orders}.")
        self.orders = tuple(orders)
        if not ordered_jitter >= 0:
            raise ValueError(f"ordered_jitter must be >= 0, got {ordered_jitter}.")
        self.ordered_jitter = float(ordered_jitter)
        self.order = ""
        self.mean_range = _as_range("mean_range", mean_range, 0.0)
        self.std_range = _as_range("std_range", std_range, 0.0)
        self.pv_sigma = _as_range("pv_sigma", pv_sigma, 0.0)
        self.background_zero_prob = check_probability("background_zero_prob", background_zero_prob)
        self.ct_prob = check_probability("ct_prob", ct_prob)
        self.ct_hu = {int(k): float(v) for k, v in (CT_HU_FREESURFER if ct_hu is None else ct_hu).items()}
        self.ct_window = _as_range("ct_window", ct_window)
        if not self.ct_window[1] > self.ct_window[0]:
            raise ValueError(f"ct_window must have max > min, got {tuple(ct_window)}.")
        if not ct_jitter_hu >= 0:
            raise ValueError(f"ct_jitter_hu must be >= 0, got {ct_jitter_hu}.")
        self.ct_jitter_hu = float(ct_jitter_hu)
        self.ct_std_range_hu = _as_range("ct_std_range_hu", ct_std_range_hu, 0.0)
        self.ct_unknown_hu = _as_range("ct_unknown_hu", ct_unknown_hu)
        self.label_values: tuple[int, ...] = ()
        self.means = self.stds = np.zeros(0)
        self.is_ct = self.background_zero = False
        self.pv_sigma_value = 0.0
        self._seed: int | None = None

    def _to_window(self, hu: np.ndarray) -> np.ndarray:
        low, high = self.ct_window
        return (hu - low) * (255.0 / (high - low))

    def _ordered_means(self, values: np.ndarray, means: np.ndarray) -> np.ndarray:
        """``means`` with the labels of each tissue class set around its class mean, in ``self.order``'s order."""
        low, high = self.mean_range
        spread = TISSUE_ORDERS[self.order]  # fraction of mean_range the three class means span at least
        span = self.R.uniform(spread, 1.0) * (high - low)
        start = self.R.uniform(low, high - span)
        levels = np.array([start, start + span * self.R.uniform(0.25, 0.75), start + span])
        jitter = min(self.ordered_jitter, 0.45 * float(np.diff(levels).min()))  # never enough to swap two classes
        ranking = {"t1": ("csf", "gm", "wm"), "t2": ("wm", "gm", "csf"), "flair": ("csf", "wm", "gm"),
                   "pd": ("wm", "gm", "csf")}[self.order]  # darkest to brightest
        out = means.copy()
        for level, tissue in zip(levels, ranking):
            ids = np.isin(values, self.tissue_labels[tissue])
            out[ids] = level + self.R.uniform(-jitter, jitter, size=int(ids.sum()))
        return np.clip(out, 0.0, 255.0)

    def randomize(self, label_values: Sequence[int]) -> None:
        """Draw the contrast for the labels ``label_values`` (sorted label ids present in the map)."""
        super().randomize(None)
        if not self._do_transform:
            return
        values = np.asarray([int(v) for v in label_values], dtype=np.int64)
        n = len(values)
        self.label_values = tuple(values.tolist())
        self.is_ct = bool(self.R.rand() < self.ct_prob)
        self.background_zero = bool(self.R.rand() < self.background_zero_prob) or self.is_ct
        if self.is_ct:
            hu = np.array([self.ct_hu.get(int(v), np.nan) for v in values], dtype=np.float64)
            unknown = np.isnan(hu)
            hu[unknown] = self.R.uniform(*self.ct_unknown_hu, size=int(unknown.sum()))
            hu += self.R.uniform(-self.ct_jitter_hu, self.ct_jitter_hu, size=n)
            means = np.clip(self._to_window(hu), 0.0, 255.0)
            stds = self.R.uniform(*self.ct_std_range_hu, size=n) * (255.0 / (self.ct_window[1] - self.ct_window[0]))
        else:
            means = self.R.uniform(*self.mean_range, size=n)
            stds = self.R.uniform(*self.std_range, size=n)
            self.order = ""
            if self.R.rand() < self.ordered_prob:
                self.order = self.orders[self.R.randint(len(self.orders))]
                means = self._ordered_means(values, means)
        if self.background_zero:
            means[values == 0] = 0.0
            stds[values == 0] = 0.0
        self.means, self.stds = means, stds
        self.pv_sigma_value = float(self.R.uniform(*self.pv_sigma))
        self._seed = random_seed(self.R)

    def __call__(self, label: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        """
        Args:
            label: integer label map ``[1, X, Y, Z]`` (tensor, MetaTensor or array).
            randomize: draw a new contrast (``False`` replays the last draw on a map with the same labels).
        """
        label = convert_to_tensor(label, track_meta=get_track_meta())
        if label.ndim != 4 or label.shape[0] != 1:
            raise ValueError(f"RandLabelToImage: expected a label map [1, X, Y, Z], got shape {tuple(label.shape)}.")
        data = _plain(label)
        if data.is_floating_point():
            rounded = data.round()
            if bool((data - rounded).abs().max() > 1e-3):
                raise ValueError("RandLabelToImage: the label map holds non-integer values (interpolated labels?).")
            data = rounded
        lab = data[0].long()
        values, inverse = torch.unique(lab, return_inverse=True)
        if randomize:
            self.randomize(values.tolist())
        if not self._do_transform:
            return label
        if self._seed is None or tuple(values.tolist()) != self.label_values:
            raise ValueError("RandLabelToImage: randomize=False needs a previous draw for the same set of labels.")
        device = lab.device
        means = torch.as_tensor(self.means, dtype=torch.float32, device=device)[inverse]
        stds = torch.as_tensor(self.stds, dtype=torch.float32, device=device)[inverse]
        if self.pv_sigma_value > 0:
            means, stds = _gaussian_blur(torch.stack([means, stds]), (self.pv_sigma_value,) * 3)
        generator = torch.Generator(device=device).manual_seed(self._seed)
        image = means + stds * torch.randn(means.shape, generator=generator, device=device, dtype=torch.float32)
        if self.background_zero:
            image = torch.where(lab == 0, torch.zeros_like(image), image)
        image = image.clamp(0.0, 255.0) if self.is_ct else image.clamp_min(0.0)
        return convert_to_dst_type(image[None], label, dtype=torch.float32)[0]


class RandLabelToImaged(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandLabelToImage`: synthesises ``image_key`` from the label map at ``keys``.

    When the transform does not fire (``prob``), ``image_key`` keeps what it holds (e.g. the subject's real scan),
    so ``prob`` sets the share of synthetic inputs. When it fires and ``modality_key`` is given, that key records the
    contrast drawn: ``"CT"`` for the CT-like mode, ``"synthetic"`` otherwise (the names
    :class:`.anomaly_encoding.RandEncodeAnomalyd` reads).

    Args:
        keys: the key of the label map ``[1, X, Y, Z]`` (exactly one).
        image_key: output key of the float32 image ``[1, X, Y, Z]`` (0-255 scale, the label's metadata).
        modality_key: key to record the contrast drawn, or ``None``.
        source_key: key to record ``"synthetic"`` (fired) or ``"real"`` (the image was kept), or ``None``; read by
            :class:`RandNoiseBySourced` to pick the noise scale.
        allow_missing_keys: don't raise when the label key is missing.
        kwargs: the parameters of :class:`RandLabelToImage` (``prob`` included).
    """

    backend = RandLabelToImage.backend

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        modality_key: str | None = None,
        source_key: str | None = None,
        allow_missing_keys: bool = False,
        **kwargs,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandLabelToImaged: expected exactly one label key, got {self.keys}.")
        RandomizableTransform.__init__(self, check_probability("prob", kwargs.pop("prob", 1.0)))
        self.synth = RandLabelToImage(prob=1.0, **kwargs)
        self.image_key = image_key
        self.modality_key = modality_key
        self.source_key = source_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.synth.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if self.source_key is not None:
            d[self.source_key] = "synthetic" if self._do_transform else "real"
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[self.image_key] = self.synth(d[key])
            if self.modality_key is not None:
                d[self.modality_key] = "CT" if self.synth.is_ct else "synthetic"
        return d


def simulate_resolution(
    img: torch.Tensor,
    target_spacing: Sequence[float],
    thickness: Sequence[float] | None = None,
    input_spacing: Sequence[float] = (1.0, 1.0, 1.0),
    blur_factor: float = BLUR_FACTOR,
) -> torch.Tensor:
    """Degrade ``img`` ``[C, X, Y, Z]`` to an acquisition of ``target_spacing`` and slice ``thickness`` (mm, per axis).

    Returns a tensor of the input's shape, dtype and grid. Along each axis: a Gaussian blur of std
    ``blur_factor * sqrt(thickness^2 - input_spacing^2) / input_spacing`` voxels (the blur the input lacks to reach
    the slice profile; none when ``thickness <= input_spacing``), trilinear sampling at the low resolution (size
    ``round(n * input_spacing / target_spacing)``; axes with ``target_spacing <= input_spacing`` keep their size) and
    trilinear interpolation back to the input grid (``align_corners=False``: the field of view is kept). Every
    channel is degraded identically.

    Args:
        img: float tensor ``[C, X, Y, Z]``.
        target_spacing: acquired voxel spacing, mm, three values.
        thickness: slice thickness, mm, three values (default: ``target_spacing``).
        input_spacing: voxel size of ``img``, mm.
        blur_factor: Gaussian std per mm of thickness (:data:`BLUR_FACTOR`; 0.4247 is FWHM = thickness).
    """
    _check_image("simulate_resolution", img)
    spacing_in = np.asarray(input_spacing, dtype=np.float64)
    spacing_out = np.asarray(target_spacing, dtype=np.float64)
    thick = spacing_out if thickness is None else np.asarray(thickness, dtype=np.float64)
    if not (spacing_in.shape == spacing_out.shape == thick.shape == (3,)):
        raise ValueError("simulate_resolution: target_spacing, thickness and input_spacing need three values each.")
    if (spacing_in <= 0).any() or (spacing_out <= 0).any() or (thick < 0).any() or blur_factor < 0:
        raise ValueError("simulate_resolution: spacings must be > 0, thickness and blur_factor >= 0.")
    shape = tuple(int(n) for n in img.shape[1:])
    sigmas = blur_factor * np.sqrt(np.clip(thick**2 - spacing_in**2, 0.0, None)) / spacing_in
    low = tuple(n if so <= si else max(1, int(round(n * si / so))) for n, si, so in zip(shape, spacing_in, spacing_out))
    x = _gaussian_blur(img, sigmas.tolist())
    if low != shape:
        x = F.interpolate(x[None], size=low, mode="trilinear", align_corners=False)
        x = F.interpolate(x, size=shape, mode="trilinear", align_corners=False)[0]
    return x


class RandResolution(RandomizableTransform):
    """Simulate the acquisition resolution of a scan, in one of UNA's four regimes drawn at random.

    ``__call__(img)``: ``img`` ``[C, X, Y, Z]``, voxel size read from its affine (MetaTensor; 1 mm otherwise).
    Returns the degraded image with the input's shape, dtype (float32 for integer input), affine and metadata; every
    channel gets exactly the same degradation. Regimes (:data:`REGIMES`, spacing / thickness in mm):

    * ``isotropic_1mm``: no change;
    * ``clinical``: one random axis with spacing ``U(clinical_spacing_range)`` and slice thickness
      ``min(spacing, U(clinical_thickness_range))`` (2D clinical scans: 4-6 mm slices, with a gap when the spacing is
      larger; thinner slices at a large spacing are not acquired in practice), the other axes 1 mm;
    * ``low_field``: ``low_field_spacing + U(low_field_jitter)`` per axis, thickness = spacing, axes randomly permuted
      (``low_field_permute``: any acquisition plane);
    * ``low_res_isotropic``: each axis ``U(isotropic_spacing_range)``, thickness = spacing.

    Simulation: :func:`simulate_resolution` with a blur std of ``U(blur_factor_range)`` per mm of thickness (default
    ``(0.85, 1.15) * ln(5) / pi``, the reference's; its low end is FWHM = thickness). An axis whose target spacing is
    not coarser than the input's is left alone. After a call, ``regime``, ``target_spacing``, ``thickness`` and
    ``blur_factor`` describe the draw.

    Args:
        regime_probs: probabilities of the four regimes, in [0, 1], summing to 1 (UNA: 0.25 each).
        clinical_spacing_range: (min, max) spacing of the thick axis of the clinical regime, mm.
        clinical_thickness_range: (min, max) slice thickness of the clinical regime before capping at the spacing.
        low_field_spacing: base spacing of the low-field regime, mm (three values).
        low_field_jitter: (min, max) added to each low-field spacing, mm.
        low_field_permute: randomly permute the low-field axes.
        isotropic_spacing_range: (min, max) spacing per axis of the low-resolution isotropic-ish regime, mm.
        blur_factor_range: (min, max) Gaussian std per mm of slice thickness.
        prob: probability of degrading at all.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        regime_probs: Sequence[float] = (0.25, 0.25, 0.25, 0.25),
        clinical_spacing_range: Sequence[float] = (2.5, 8.5),
        clinical_thickness_range: Sequence[float] = (4.0, 6.0),
        low_field_spacing: Sequence[float] = (1.3, 1.3, 5.0),
        low_field_jitter: Sequence[float] = (0.0, 0.4),
        low_field_permute: bool = True,
        isotropic_spacing_range: Sequence[float] = (2.0, 5.0),
        blur_factor_range: Sequence[float] = (0.85 * BLUR_FACTOR, 1.15 * BLUR_FACTOR),
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, check_probability("prob", prob))
        probs = [float(p) for p in regime_probs]
        if len(probs) != len(REGIMES):
            raise ValueError(f"regime_probs needs {len(REGIMES)} values ({', '.join(REGIMES)}), got {probs}.")
        for name, p in zip(REGIMES, probs):
            check_probability(f"regime_probs[{name}]", p)
        if abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(f"regime_probs must sum to 1, got {probs} (sum {sum(probs)}).")
        self.regime_probs = np.asarray(probs) / sum(probs)
        self.clinical_spacing_range = _as_range("clinical_spacing_range", clinical_spacing_range, 1e-6)
        self.clinical_thickness_range = _as_range("clinical_thickness_range", clinical_thickness_range, 0.0)
        self.low_field_spacing = np.asarray(low_field_spacing, dtype=np.float64)
        if self.low_field_spacing.shape != (3,) or (self.low_field_spacing <= 0).any():
            raise ValueError(f"low_field_spacing must be three values > 0, got {tuple(low_field_spacing)}.")
        self.low_field_jitter = _as_range("low_field_jitter", low_field_jitter, 0.0)
        self.low_field_permute = bool(low_field_permute)
        self.isotropic_spacing_range = _as_range("isotropic_spacing_range", isotropic_spacing_range, 1e-6)
        self.blur_factor_range = _as_range("blur_factor_range", blur_factor_range, 0.0)
        self.regime = REGIMES[0]
        self.target_spacing = np.ones(3)
        self.thickness = np.ones(3)
        self.blur_factor = BLUR_FACTOR

    def randomize(self, data=None) -> None:
        """Draw the regime and its spacing, slice thickness and blur factor."""
        super().randomize(None)
        if not self._do_transform:
            return
        regime = int(self.R.choice(len(REGIMES), p=self.regime_probs))
        spacing, thickness = np.ones(3), np.ones(3)
        if REGIMES[regime] == "clinical":
            axis = int(self.R.randint(3))
            spacing[axis] = self.R.uniform(*self.clinical_spacing_range)
            thickness[axis] = min(spacing[axis], self.R.uniform(*self.clinical_thickness_range))
        elif REGIMES[regime] == "low_field":
            spacing = self.low_field_spacing + self.R.uniform(*self.low_field_jitter, size=3)
            if self.low_field_permute:
                spacing = spacing[self.R.permutation(3)]
            thickness = spacing.copy()
        elif REGIMES[regime] == "low_res_isotropic":
            spacing = self.R.uniform(*self.isotropic_spacing_range, size=3)
            thickness = spacing.copy()
        self.regime = REGIMES[regime]
        self.target_spacing, self.thickness = spacing, thickness
        self.blur_factor = float(self.R.uniform(*self.blur_factor_range))

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        """
        Args:
            img: image ``[C, X, Y, Z]`` (tensor, MetaTensor or array).
            randomize: draw new parameters (``False`` replays the last draw).
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        _check_image("RandResolution", img)
        if randomize:
            self.randomize()
        if not self._do_transform or self.regime == "isotropic_1mm":
            return img
        data = _plain(img)
        dtype = data.dtype if data.is_floating_point() else torch.float32
        out = simulate_resolution(
            data.to(dtype), self.target_spacing, self.thickness, _voxel_spacing(img), blur_factor=self.blur_factor
        )
        return convert_to_dst_type(out, img, dtype=dtype)[0]


class RandResolutiond(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandResolution`: every key gets the same regime and parameters.

    Apply it to the network input only, not to the 1 mm target.

    Args:
        keys: image keys ``[C, X, Y, Z]`` to degrade.
        regime_key: key to record the drawn regime and target spacing in (e.g. ``"clinical 1.0x1.0x6.3mm"``), or
            ``None``; ``"none"`` when the transform does not fire.
        allow_missing_keys: don't raise when a key is missing.
        kwargs: the parameters of :class:`RandResolution` (``prob`` included).
    """

    backend = RandResolution.backend

    def __init__(
        self, keys: KeysCollection, regime_key: str | None = None, allow_missing_keys: bool = False, **kwargs
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, check_probability("prob", kwargs.pop("prob", 1.0)))
        self.resolution = RandResolution(prob=1.0, **kwargs)
        self.regime_key = regime_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.resolution.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            if self.regime_key is not None:
                d[self.regime_key] = "none"
            return d
        self.resolution.randomize()
        for key in self.key_iterator(d):
            d[key] = self.resolution(d[key], randomize=False)
        if self.regime_key is not None:
            spacing = "x".join(f"{s:.1f}" for s in self.resolution.target_spacing)
            d[self.regime_key] = f"{self.resolution.regime} {spacing}mm"
        return d


class RandSmoothBiasField(RandomizableTransform):
    """Multiply an image by a smooth random bias field ``exp(L)``, the same field on every channel.

    ``L`` is a Gaussian log-field: a coarse grid of ``max(min_nodes, round(scale * n))`` nodes per axis (``n`` the
    axis size, ``scale ~ U(scale_range)``) with values ``N(0, std^2)``, ``std ~ U(std_range)``, upsampled to the image
    grid by trilinear interpolation (``align_corners=True``). Reference: 2-4 % of the size (3-6 nodes at 160^3),
    log-field std ``U(0.1, 0.6)`` (UNA).

    ``__call__(img)``: ``img`` ``[C, X, Y, Z]``. Returns ``img * exp(L)`` with the input's shape, dtype (float32 for
    integer input) and metadata. After a call, ``std`` and ``scale`` describe the draw; :meth:`log_field` gives ``L``.

    Args:
        std_range: (min, max) of the log-field's std.
        scale_range: (min, max) of the node count as a fraction of the image size, in (0, 1].
        min_nodes: fewest nodes per axis (>= 2).
        prob: probability of applying a field at all.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        std_range: Sequence[float] = (0.1, 0.6),
        scale_range: Sequence[float] = (0.02, 0.04),
        min_nodes: int = 2,
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, check_probability("prob", prob))
        self.std_range = _as_range("std_range", std_range, 0.0)
        self.scale_range = check_range("scale_range", scale_range, 0.0, 1.0)
        if not self.scale_range[0] > 0:
            raise ValueError(f"scale_range must be > 0, got {tuple(scale_range)}.")
        if int(min_nodes) < 2:
            raise ValueError(f"min_nodes must be >= 2, got {min_nodes}.")
        self.min_nodes = int(min_nodes)
        self.std = self.scale = 0.0
        self._seed: int | None = None

    def randomize(self, data=None) -> None:
        """Draw the field's std, node scale and the seed of its node values."""
        super().randomize(None)
        if not self._do_transform:
            return
        self.std = float(self.R.uniform(*self.std_range))
        self.scale = float(self.R.uniform(*self.scale_range))
        self._seed = random_seed(self.R)

    def log_field(self, spatial_shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """The last drawn log-field ``L`` on a grid of ``spatial_shape``: float32 ``[1, X, Y, Z]`` on ``device``."""
        if self._seed is None:
            raise RuntimeError("RandSmoothBiasField: no field drawn yet; call randomize() first.")
        shape = tuple(int(n) for n in spatial_shape)
        nodes = tuple(max(self.min_nodes, int(round(self.scale * n))) for n in shape)
        generator = torch.Generator(device=device).manual_seed(self._seed)
        small = self.std * torch.randn((1, 1, *nodes), generator=generator, device=device)
        return F.interpolate(small, size=shape, mode="trilinear", align_corners=True)[0]

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        """
        Args:
            img: image ``[C, X, Y, Z]`` (tensor, MetaTensor or array).
            randomize: draw a new field (``False`` replays the last draw).
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        _check_image("RandSmoothBiasField", img)
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        data = _plain(img)
        dtype = data.dtype if data.is_floating_point() else torch.float32
        field = torch.exp(self.log_field(data.shape[1:], data.device)).to(dtype)
        return convert_to_dst_type(data.to(dtype) * field, img, dtype=dtype)[0]


class RandSmoothBiasFieldd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandSmoothBiasField`: every key gets the same field (keys share a grid).

    Args:
        keys: image keys ``[C, X, Y, Z]``.
        allow_missing_keys: don't raise when a key is missing.
        kwargs: the parameters of :class:`RandSmoothBiasField` (``prob`` included).
    """

    backend = RandSmoothBiasField.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, check_probability("prob", kwargs.pop("prob", 1.0)))
        self.bias_field = RandSmoothBiasField(prob=1.0, **kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.bias_field.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.bias_field.randomize()
        for key in self.key_iterator(d):
            d[key] = self.bias_field(d[key], randomize=False)
        return d


class RandNoiseBySourced(RandomizableTransform, MapTransform):
    """Gaussian noise whose scale depends on where the image came from (UNA): std ``U(synthetic_std)`` for
    synthetic images, ``U(real_std)`` for real scans, on images already normalised to ``[0, 1]``.

    Defaults are UNA's: ``U(0.05, 1) / 255`` for synthetic images (drawn on the 0-255 scale) and ``U(0, 0.02)``
    for real ones. Every channel of every key gets noise of the same std (independent per voxel and channel).

    Args:
        keys: image keys ``[C, X, Y, Z]``.
        source_key: key holding ``"synthetic"`` or ``"real"`` (see :class:`RandLabelToImaged`).
        synthetic_std: std range for synthetic images.
        real_std: std range for real images.
        prob: probability of adding noise.
        allow_missing_keys: don't raise when a key is missing.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str = "source",
        synthetic_std: Sequence[float] = (0.05 / 255, 1.0 / 255),
        real_std: Sequence[float] = (0.0, 0.02),
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, check_probability("prob", prob))
        self.source_key = source_key
        self.std_ranges = {
            "synthetic": check_range("synthetic_std", synthetic_std, 0.0),
            "real": check_range("real_std", real_std, 0.0),
        }
        self._fraction = 0.0
        self._seed = 0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._fraction = self.R.uniform()
        self._seed = random_seed(self.R)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        source = d.get(self.source_key)
        if source not in self.std_ranges:
            raise ValueError(f"RandNoiseBySourced: '{self.source_key}' must be 'synthetic' or 'real', got {source!r}.")
        low, high = self.std_ranges[source]
        std = low + (high - low) * self._fraction
        for index, key in enumerate(self.key_iterator(d)):
            img = convert_to_tensor(d[key], track_meta=get_track_meta())
            generator = torch.Generator(device=img.device).manual_seed(self._seed + index)
            noise = torch.randn(img.shape, generator=generator, device=img.device, dtype=torch.float32) * std
            d[key] = convert_to_dst_type(_plain(img).float() + noise, img)[0]
        return d
