"""User datalists: paths resolved against the JSON folder, and one specific error per kind of mistake."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from una_bundle.scripts.data.datalist import ALLOWED_KEYS, load_datalist


def _nifti(path: Path, shape=(8, 8, 8), affine=None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4) if affine is None else affine), str(path))
    return str(path)


@pytest.fixture
def folder(tmp_path):
    for name in ("label", "t1", "mask", "flair", "lesion", "pool0", "pool1"):
        _nifti(tmp_path / "sub-01" / f"{name}.nii.gz", shape=(5, 6, 7) if name.startswith("pool") else (8, 8, 8))
    _nifti(tmp_path / "sub-02" / "label.nii.gz")
    _nifti(tmp_path / "sub-02" / "t1.nii.gz", shape=(8, 8, 8, 1))  # 4D with one volume is fine
    return tmp_path


def _good_entries():
    return [
        {
            "label": "sub-01/label.nii.gz",
            "t1": "sub-01/t1.nii.gz",
            "mask": "sub-01/mask.nii.gz",
            "image": "sub-01/flair.nii.gz",
            "modality": "flair",
            "lesion": "sub-01/lesion.nii.gz",
            "lesion_pool": ["sub-01/pool0.nii.gz", "sub-01/pool1.nii.gz"],
            "subject": "sub-01",
        },
        {"label": "sub-02/label.nii.gz", "t1": "sub-02/t1.nii.gz"},
    ]


def _write(folder: Path, data) -> Path:
    path = folder / "datalist.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _with(folder, index, **changes):
    entries = _good_entries()
    entries[index].update(changes)
    entries[index] = {k: v for k, v in entries[index].items() if v is not None}
    return _write(folder, {"name": "test", "training": entries})


def test_valid_datalist_resolves_paths(folder, monkeypatch):
    monkeypatch.chdir(folder.parent)  # relative paths are resolved against the JSON folder, not the cwd
    absolute = _nifti(folder / "elsewhere" / "t1.nii.gz")
    entries = _good_entries()
    entries[1]["t1"] = absolute
    entries = load_datalist(_write(folder, {"training": entries, "validation": []}))
    assert entries[0]["label"] == str(folder / "sub-01" / "label.nii.gz")
    assert entries[0]["lesion_pool"] == [str(folder / "sub-01" / f"pool{i}.nii.gz") for i in range(2)]
    assert entries[0]["modality"] == "FLAIR" and entries[0]["subject"] == "sub-01"
    assert entries[1] == {"label": str(folder / "sub-02" / "label.nii.gz"), "t1": absolute}
    assert load_datalist(folder / "datalist.json", "validation") == []


def test_missing_datalist_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="datalist not found: .*nope.json"):
        load_datalist(tmp_path / "nope.json")


def test_invalid_json(folder):
    with pytest.raises(ValueError, match="datalist .*datalist.json is not valid JSON"):
        load_datalist(_write(folder, "{training: ["))


def test_missing_section(folder):
    path = _write(folder, {"training": _good_entries()})
    with pytest.raises(ValueError, match=r"has no section 'validation' \(its lists: \['training'\]\)"):
        load_datalist(path, "validation")


def test_section_not_a_list(folder):
    with pytest.raises(ValueError, match="section 'training' must be a list of subjects, got dict"):
        load_datalist(_write(folder, {"training": {"label": "x"}}))


def test_missing_required_key_names_entry(folder):
    path = _with(folder, 1, label=None)
    with pytest.raises(
        ValueError, match=r"training\[1\] \(t1 sub-02/t1.nii.gz\): missing required key\(s\) \['label'\]"
    ):
        load_datalist(path)


def test_unknown_key_lists_allowed_keys(folder):
    path = _with(folder, 0, segmentation="x.nii.gz")
    with pytest.raises(ValueError, match=r"training\[0\].*unknown key\(s\) \['segmentation'\]; allowed keys") as err:
        load_datalist(path)
    assert all(key in str(err.value) for key in ALLOWED_KEYS) and str(path) in str(err.value)


def test_unknown_modality(folder):
    with pytest.raises(ValueError, match=r"unknown modality 'PET'; expected one of \['CT', 'FLAIR', 'T1', 'T2'\]"):
        load_datalist(_with(folder, 0, modality="PET"))


def test_image_without_modality(folder):
    with pytest.raises(ValueError, match="'image' needs 'modality'"):
        load_datalist(_with(folder, 0, modality=None))
    with pytest.raises(ValueError, match="'modality' needs 'image'"):
        load_datalist(_with(folder, 1, modality="T2"))


def test_missing_file_names_index_key_and_path(folder):
    path = _with(folder, 1, mask="sub-02/nope.nii.gz")
    message = r"training\[1\] \(t1 sub-02/t1.nii.gz\): key 'mask': file not found: .*sub-02/nope.nii.gz"
    with pytest.raises(FileNotFoundError, match=message):
        load_datalist(path)
    assert load_datalist(path, check_files=False)[1]["mask"] == str(folder / "sub-02" / "nope.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"key 'lesion_pool': file not found: .*gone.nii.gz"):
        load_datalist(_with(folder, 0, lesion_pool=["sub-01/pool0.nii.gz", "gone.nii.gz"]))


def test_shape_mismatch(folder):
    _nifti(folder / "sub-01" / "small_mask.nii.gz", shape=(8, 8, 9))
    message = r"training\[0\].*'mask' has spatial shape \(8, 8, 9\) but 'label' has \(8, 8, 8\)"
    with pytest.raises(ValueError, match=message):
        load_datalist(_with(folder, 0, mask="sub-01/small_mask.nii.gz"))


def test_affine_mismatch(folder):
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    _nifti(folder / "sub-01" / "moved.nii.gz", affine=shifted)
    with pytest.raises(ValueError, match="'lesion' and 'label' have different affines"):
        load_datalist(_with(folder, 0, lesion="sub-01/moved.nii.gz"))


def test_not_3d(folder):
    _nifti(folder / "sub-01" / "series.nii.gz", shape=(8, 8, 8, 2))
    with pytest.raises(ValueError, match=r"key 'image'.*series.nii.gz must be a 3D volume .* got shape \(8, 8, 8, 2\)"):
        load_datalist(_with(folder, 0, image="sub-01/series.nii.gz"))


def test_unreadable_file(folder):
    (folder / "sub-01" / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="key 't1'.*broken.nii.gz is not a readable NIfTI image"):
        load_datalist(_with(folder, 0, t1="sub-01/broken.nii.gz"))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lesion_pool": "sub-01/pool0.nii.gz"}, "'lesion_pool' must be a non-empty list of files"),
        ({"lesion_pool": []}, "'lesion_pool' must be a non-empty list of files"),
        ({"t1": 3}, "key 't1': expected a file path"),
    ],
)
def test_bad_values(folder, changes, message):
    with pytest.raises(ValueError, match=message):
        load_datalist(_with(folder, 0, **changes))


def test_entry_not_an_object(folder):
    with pytest.raises(ValueError, match=r"training\[0\]: expected an object with keys"):
        load_datalist(_write(folder, {"training": ["sub-01/t1.nii.gz"]}))


# --- what training needs: integer label maps, subjects in both lists, both lists present ------------------------------
def test_a_label_map_of_non_integer_values_is_refused(folder):
    label = folder / "sub-02" / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), 2.0, np.float32), np.eye(4)), str(label))
    load_datalist(_with(folder, 1))  # float storage of integer ids is fine
    data = np.full((8, 8, 8), 2.0, np.float32)
    data[3, 4, 5] = 2.5
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(label))
    with pytest.raises(ValueError, match=r"training\[1\].*key 'label': .*label.nii.gz holds non-integer values"):
        load_datalist(_with(folder, 1))
    scaled = nib.Nifti1Image(np.linspace(0, 1.5, 512, dtype=np.float32).reshape(8, 8, 8), np.eye(4))
    scaled.set_data_dtype(np.int16)  # integers on disk with a fractional scale factor
    nib.save(scaled, str(label))
    assert nib.load(str(label)).get_data_dtype() == np.int16
    with pytest.raises(ValueError, match=r"holds non-integer values"):
        load_datalist(_with(folder, 1))


def test_training_needs_subjects_in_both_lists_and_both_lists(folder):
    from una_bundle.scripts.data.datalist import training_entries

    path = _write(folder, {"training": _good_entries(), "validation": []})
    assert load_datalist(path, "validation") == []  # the reader itself allows an empty list
    with pytest.raises(ValueError, match=r"section 'validation' is empty \(no validation would run"):
        training_entries(path, "validation")
    path = _write(folder, {"training": [], "validation": _good_entries()[1:]})
    with pytest.raises(ValueError, match=r"section 'training' is empty \(nothing to learn from\)"):
        training_entries(path, "training")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"training": "good", "validation": []}, "section 'validation' is empty"),
        ({"training": [], "validation": "good"}, "section 'training' is empty"),
        ({"training": "good"}, "has no section 'validation'"),
    ],
)
def test_check_datalist_and_train_fail_early_naming_the_key(folder, tmp_path, capsys, monkeypatch, data, message):
    from una_bundle.scripts.workflows import training
    from una_bundle.tools import cli

    entries = _good_entries()
    path = _write(folder, {k: (entries if v == "good" else v) for k, v in data.items()})
    with pytest.raises(SystemExit) as info:
        cli.main(["check-datalist", "--path", str(path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and message in err and str(path) in err
    monkeypatch.setattr("monai.bundle.create_workflow", lambda *a, **k: pytest.fail("training was set up"))
    with pytest.raises(ValueError, match=message):
        training.train(str(folder), output_dir=str(tmp_path / "run"))


def test_check_datalist_reports_both_lists(folder, capsys):
    from una_bundle.tools import cli

    path = _write(folder, {"training": _good_entries(), "validation": _good_entries()[1:]})
    cli.main(["check-datalist", "--path", str(path)])
    assert f"{path}: valid; subjects in 'training' 2, 'validation' 1" in capsys.readouterr().out
