"""A MONAI Deploy application for UNA: NIfTI brain scans in, healthy T1w + anomaly map + anomaly mask (NIfTI) out.

It runs the bundle's **TorchScript** model (``models/model.ts``, from ``python -m monai.bundle ckpt_export``) and reads
everything else from the files ``ckpt_export`` stored inside it: ``metadata.json`` (the network data format: 2 input
channels, 2 output channels - healthy T1w and anomaly logit -, spatial sizes ``16*n``, values in [0, 1]) and
``inference.json`` (the bundle's inference config: the preprocessing, the sliding-window inferer and the
postprocessing, so the app and ``python -m monai.bundle run --config_file configs/inference.yaml`` process a scan the
same way). The transforms the config names (``scripts.*``) come from the installed ``una_bundle`` package.

Three operators, wired ``load -> infer -> write``:

* :class:`LoadNiftiOperator` - the input (a ``.nii``/``.nii.gz`` file or a folder of them) checked and read:
  emits a list of :class:`Case` (name, path, NIfTI header);
* :class:`UNAInferenceOperator` - :class:`UNADeployModel` on each case: emits ``{name: outputs}``;
* :class:`WriteNiftiOperator` - writes ``NAME_healthy.nii.gz`` (float32, as `infer`), ``NAME_anomaly.nii.gz`` (float32,
  [0, 1]) and ``NAME_anomaly_mask.nii.gz`` (uint8) on the input's own grid (its header and affine).

With the MONAI Deploy App SDK installed (``pip install torch==2.13.0 && pip install -e ".[deploy]"``: SDK 4.0.0 plus
the pydicom 3 and highdicom that ``import monai`` then needs)::

    python -m una_bundle.deploy.app -i scan.nii.gz -o out/ -m una_bundle/models/model.ts

(``-i/-o/-m`` or ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``, as every MONAI Deploy
app; ``-m`` may also be a folder holding ``model.ts``). Without the SDK, the same command runs the three steps in
sequence (:func:`run`), which is also what the tests check; ``.ci/monai_deploy_check`` runs both ways against
``una-bundle infer``. See ``docs/monai_deploy.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch

from una_bundle.scripts.data.bundle_config import BUNDLE_ROOT, make_scripts_importable

__all__ = [
    "HAS_SDK",
    "Case",
    "UNADeployModel",
    "load_torchscript",
    "find_cases",
    "write_outputs",
    "run",
    "main",
]

DEFAULT_MODEL = BUNDLE_ROOT / "models" / "model.ts"
#: output kind (file name suffix) -> dtype written
OUTPUTS = {"healthy": np.float32, "anomaly": np.float32, "anomaly_mask": np.uint8}
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
logger = logging.getLogger(__name__)

try:  # the SDK is optional: without it the app runs its three steps in sequence
    from monai.deploy.core import Application, Fragment, Operator, OperatorSpec

    HAS_SDK = True
except ImportError:  # pragma: no cover - depends on the environment
    HAS_SDK = False


@dataclass
class Case:
    """One input scan: ``name`` (file name without ``.nii(.gz)``), ``path`` and its NIfTI ``header`` image."""

    name: str
    path: Path
    reference: nib.Nifti1Image


def load_torchscript(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.jit.ScriptModule, dict, dict]:
    """The TorchScript network and the ``metadata.json`` and ``inference.json`` that ``ckpt_export`` stored in it.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a TorchScript file, or without the bundle's metadata and inference config.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TorchScript model not found: {path} (python -m una_bundle.tools.release makes it).")
    extra = {"metadata.json": "", "inference.json": ""}
    try:
        model = torch.jit.load(str(path), map_location=torch.device(device), _extra_files=extra)
    except Exception as err:
        raise ValueError(f"{path} is not a TorchScript model ({type(err).__name__}: {err}).") from err
    missing = [k for k, v in extra.items() if not v]
    if missing:
        raise ValueError(
            f"{path} holds no {missing}: export it with python -m monai.bundle ckpt_export network_def --meta_file "
            f"configs/metadata.json --config_file configs/inference.yaml (or python -m una_bundle.tools.release)."
        )
    return model.eval(), json.loads(extra["metadata.json"]), json.loads(extra["inference.json"])


def _divisor(spatial_shape: Sequence[Any]) -> int:
    """``16`` for ``["16*n", "16*n", "16*n"]`` (the metadata's spatial shape pattern)."""
    sizes = {int(str(s).replace(" ", "").split("*")[0]) for s in spatial_shape}
    if len(sizes) != 1:
        raise ValueError(f"expected one divisor for every axis in spatial_shape {spatial_shape}.")
    return sizes.pop()


class UNADeployModel:
    """UNA on one scan with the TorchScript model: ``path -> {"healthy", "anomaly", "anomaly_mask"}`` arrays on the
    input's grid (``[X, Y, Z]``), plus ``"threshold"`` and ``"modality"``.

    Args:
        model_path: the TorchScript file (default: the bundle's ``models/model.ts``).
        device: ``"cpu"``, ``"cuda"``, ...
        overrides: inference-config ids and values to replace (e.g. ``{"roi_size": [64, 64, 64]}``).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        from monai.bundle import ConfigParser

        self.device = torch.device(device)
        self.model_path = Path(model_path) if model_path is not None else DEFAULT_MODEL
        self.network, self.metadata, config = load_torchscript(self.model_path, self.device)
        fmt = self.metadata.get("network_data_format", {})
        try:
            image = fmt["inputs"]["image"]
            pred = fmt["outputs"]["pred"]
        except (KeyError, TypeError) as err:
            raise ValueError(
                f"{self.model_path}: metadata lacks network_data_format inputs.image/outputs.pred."
            ) from err
        self.in_channels, self.out_channels = int(image["num_channels"]), int(pred["num_channels"])
        self.divisor = _divisor(image["spatial_shape"])

        make_scripts_importable()
        parser = ConfigParser()
        parser.read_config(config)
        parser.update({"bundle_root": str(BUNDLE_ROOT), "device": f"$torch.device({str(self.device)!r})"})
        parser.update(dict(overrides or {}))
        if int(parser.get_parsed_content("divisor")) % self.divisor != 0:
            raise ValueError(
                f"the config's divisor {parser.get_parsed_content('divisor')} is not a multiple of the metadata's "
                f"spatial size divisor {self.divisor}."
            )
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.inferer = parser.get_parsed_content("inferer")
        self.postprocessing = parser.get_parsed_content("postprocessing")

    def __call__(self, image: str | Path, mask: str | Path | None = None) -> dict[str, Any]:
        """Process one scan (and optionally its brain mask, on the same grid)."""
        from monai.data import decollate_batch, list_data_collate

        data: dict[str, Any] = {"image": str(image)}
        if mask is not None:
            data["mask"] = str(mask)
        data = self.preprocessing(data)
        if data["image"].shape[0] != self.in_channels:
            raise ValueError(
                f"preprocessing gave {data['image'].shape[0]} channels, the model takes {self.in_channels}."
            )
        batch = list_data_collate([data])
        with torch.no_grad():
            pred = self.inferer(batch["image"].to(self.device), self.network)
        item = decollate_batch(batch, detach=True)[0]  # as the bundle's SupervisedEvaluator hands it over
        item["pred"] = decollate_batch({"pred": pred}, detach=True)[0]["pred"]
        item = self.postprocessing(item)

        def arr(key: str, kind: str) -> np.ndarray:
            return torch.as_tensor(item[key]).detach().cpu().numpy()[0].astype(OUTPUTS[kind])

        return {
            "healthy": arr("healthy", "healthy"),
            "anomaly": arr("anomaly", "anomaly"),
            "anomaly_mask": arr("anomaly_mask", "anomaly_mask"),
            "threshold": float(item["anomaly_threshold"]),
            "modality": str(item.get("modality", "")),
        }


def find_cases(input_path: str | Path) -> list[Case]:
    """The scans at ``input_path``: one ``.nii``/``.nii.gz`` file, or every such file in a folder (sorted).

    Raises:
        FileNotFoundError: nothing at ``input_path`` or no NIfTI file in the folder.
        ValueError: a file that nibabel cannot read, or not 3D.
    """
    input_path = Path(input_path)
    if input_path.is_dir():
        paths = sorted(p for p in input_path.iterdir() if p.is_file() and p.name.endswith(_NIFTI_SUFFIXES))
        if not paths:
            raise FileNotFoundError(f"no .nii / .nii.gz file in {input_path}.")
    elif input_path.is_file():
        paths = [input_path]
    else:
        raise FileNotFoundError(f"input not found: {input_path}")
    cases = []
    for path in paths:
        if not path.name.endswith(_NIFTI_SUFFIXES):
            raise ValueError(f"{path}: expected a .nii or .nii.gz file.")
        try:
            reference = nib.load(str(path))
        except Exception as err:
            raise ValueError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err}).") from err
        shape = tuple(int(s) for s in reference.shape)
        if len(shape) != 3 and not (len(shape) == 4 and shape[3] == 1):
            raise ValueError(f"{path}: expected a 3D volume, got shape {shape}.")
        name = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.name[: -len(".nii")]
        cases.append(Case(name=name, path=path, reference=reference))
    return cases


def write_outputs(outputs: Mapping[str, Any], case: Case, output_dir: str | Path) -> dict[str, Path]:
    """Write ``NAME_healthy``, ``NAME_anomaly`` and ``NAME_anomaly_mask`` ``.nii.gz`` with the input's header.

    Raises:
        ValueError: an output whose shape is not the input's.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(s) for s in case.reference.shape[:3])
    written = {}
    for kind in ("healthy", "anomaly", "anomaly_mask"):
        data = np.asarray(outputs[kind]).astype(OUTPUTS[kind])
        if data.shape != shape:
            raise ValueError(f"{case.name}: output {kind} has shape {data.shape}, the input {shape}.")
        header = case.reference.header.copy()
        header.set_data_dtype(OUTPUTS[kind])
        image = nib.Nifti1Image(data, case.reference.affine, header)
        image.set_sform(case.reference.affine, code=int(case.reference.header["sform_code"]) or 1)
        image.set_qform(case.reference.affine, code=int(case.reference.header["qform_code"]) or 1)
        path = output_dir / f"{case.name}_{kind}.nii.gz"
        nib.save(image, str(path))
        written[kind] = path
    return written


def _model_file(model_path: str | Path | None) -> Path:
    """``model_path`` itself, or ``model.ts`` inside it when it is a folder (MONAI Deploy's ``-m``)."""
    if model_path is None or str(model_path) == "":
        return DEFAULT_MODEL
    path = Path(model_path)
    if path.is_dir():
        found = sorted(path.rglob("model.ts")) or sorted(path.rglob("*.ts"))
        if not found:
            raise FileNotFoundError(f"no TorchScript model (*.ts) in {path}.")
        return found[0]
    return path


def run(
    input_path: str | Path,
    output_path: str | Path,
    model_path: str | Path | None = None,
    device: str = "cpu",
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Path]]:
    """The app's three steps in sequence, without the SDK: ``{case name: {kind: written file}}``."""
    cases = find_cases(input_path)
    model = UNADeployModel(_model_file(model_path), device=device, overrides=overrides)
    return {case.name: write_outputs(model(case.path), case, output_path) for case in cases}


if HAS_SDK:  # pragma: no cover - exercised where monai-deploy-app-sdk is installed

    class LoadNiftiOperator(Operator):
        """Named output ``cases``: the list of :class:`Case` found at ``input_path`` (a file or a folder)."""

        def __init__(self, fragment: Fragment, *args, input_path: Path, **kwargs) -> None:
            self.input_path = Path(input_path)
            super().__init__(fragment, *args, **kwargs)

        def setup(self, spec: OperatorSpec) -> None:
            spec.output("cases")

        def compute(self, op_input, op_output, context) -> None:
            op_output.emit(find_cases(self.input_path), "cases")

    class UNAInferenceOperator(Operator):
        """Named input ``cases``, named output ``results`` (``[(case, outputs), ...]``): the TorchScript model."""

        def __init__(self, fragment: Fragment, *args, model_path: Path, device: str = "cpu", **kwargs) -> None:
            self.model_path = Path(model_path)
            self.device = device
            self._model: UNADeployModel | None = None
            super().__init__(fragment, *args, **kwargs)

        def setup(self, spec: OperatorSpec) -> None:
            spec.input("cases")
            spec.output("results")

        def compute(self, op_input, op_output, context) -> None:
            if self._model is None:
                self._model = UNADeployModel(self.model_path, device=self.device)
            cases = op_input.receive("cases")
            op_output.emit([(case, self._model(case.path)) for case in cases], "results")

    class WriteNiftiOperator(Operator):
        """Named input ``results``: writes each case's three NIfTI files into ``output_path``."""

        def __init__(self, fragment: Fragment, *args, output_path: Path, **kwargs) -> None:
            self.output_path = Path(output_path)
            super().__init__(fragment, *args, **kwargs)

        def setup(self, spec: OperatorSpec) -> None:
            # the default input condition (a message must be there): with ConditionType.NONE the writer was always
            # ready, ticked forever on an empty input and kept the scheduler - and the app - from ever exiting. With
            # it, once the loader's CountCondition(1) is spent nothing can become ready and the greedy scheduler
            # stops (stop_on_deadlock): verified under SDK 4.0.0 / holoscan-cu13 4.6.0 by .ci/monai_deploy_check
            spec.input("results")

        def compute(self, op_input, op_output, context) -> None:
            for case, outputs in op_input.receive("results") or []:
                for kind, path in write_outputs(outputs, case, self.output_path).items():
                    logger.info(f"{case.name}: {kind} -> {path}")

    class UNADeployApp(Application):
        """``load NIfTI -> UNA (TorchScript) -> write NIfTI``; paths from ``-i/-o/-m`` or the HOLOSCAN_* variables."""

        def compose(self) -> None:
            from holoscan.conditions import CountCondition

            app_context = Application.init_app_context(self.argv)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            load = LoadNiftiOperator(self, CountCondition(self, 1), input_path=app_context.input_path, name="load")
            infer = UNAInferenceOperator(
                self, model_path=_model_file(app_context.model_path), device=device, name="una"
            )
            write = WriteNiftiOperator(self, output_path=app_context.output_path, name="write")
            self.add_flow(load, infer, {("cases", "cases")})
            self.add_flow(infer, write, {("results", "results")})


def main(argv: Sequence[str] | None = None) -> int:
    """``-i INPUT -o OUTPUT [-m MODEL]``: the SDK application when the SDK is installed, else :func:`run`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if HAS_SDK and "--no-sdk" not in argv:  # pragma: no cover - depends on the environment
        UNADeployApp().run()
        return 0
    parser = argparse.ArgumentParser(description="UNA as a MONAI Deploy application (run without the SDK).")
    parser.add_argument("-i", "--input", required=True, help="a .nii/.nii.gz scan or a folder of them")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("-m", "--model", default=None, help="TorchScript model file or folder (default: the bundle's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-sdk", action="store_true", help="run without the MONAI Deploy App SDK")
    args = parser.parse_args(argv)
    for name, files in run(args.input, args.output, args.model, device=args.device).items():
        print(name, {k: str(v) for k, v in files.items()})
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
