"""Domain randomisation of UNA's training images (UNA, section 3): what MONAI lacks.

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
metadata. Multi-channel inputs (an image and its flip) get identical parameters on every channel. This module
holds step 1; steps 4 to 6 are :mod:`.bias_field`, :mod:`.resolution` and :mod:`.noise`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from ..data.checks import check_probability
from ..data.rng import random_seed
from .common import as_range, gaussian_blur, plain

__all__ = [
    "RandLabelToImage",
    "RandLabelToImaged",
    "CT_WINDOW_HU",
    "CT_HU_FREESURFER",
]

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
            raise ValueError(
                f"RandLabelToImage: orders must be a non-empty subset of {tuple(TISSUE_ORDERS)}, got {orders}."
            )
        self.orders = tuple(orders)
        if not ordered_jitter >= 0:
            raise ValueError(f"ordered_jitter must be >= 0, got {ordered_jitter}.")
        self.ordered_jitter = float(ordered_jitter)
        self.order = ""
        self.mean_range = as_range("mean_range", mean_range, 0.0)
        self.std_range = as_range("std_range", std_range, 0.0)
        self.pv_sigma = as_range("pv_sigma", pv_sigma, 0.0)
        self.background_zero_prob = check_probability("background_zero_prob", background_zero_prob)
        self.ct_prob = check_probability("ct_prob", ct_prob)
        self.ct_hu = {int(k): float(v) for k, v in (CT_HU_FREESURFER if ct_hu is None else ct_hu).items()}
        self.ct_window = as_range("ct_window", ct_window)
        if not self.ct_window[1] > self.ct_window[0]:
            raise ValueError(f"ct_window must have max > min, got {tuple(ct_window)}.")
        if not ct_jitter_hu >= 0:
            raise ValueError(f"ct_jitter_hu must be >= 0, got {ct_jitter_hu}.")
        self.ct_jitter_hu = float(ct_jitter_hu)
        self.ct_std_range_hu = as_range("ct_std_range_hu", ct_std_range_hu, 0.0)
        self.ct_unknown_hu = as_range("ct_unknown_hu", ct_unknown_hu)
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
        ranking = {
            "t1": ("csf", "gm", "wm"),
            "t2": ("wm", "gm", "csf"),
            "flair": ("csf", "wm", "gm"),
            "pd": ("wm", "gm", "csf"),
        }[
            self.order
        ]  # darkest to brightest
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
        data = plain(label)
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
            means, stds = gaussian_blur(torch.stack([means, stds]), (self.pv_sigma_value,) * 3)
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
