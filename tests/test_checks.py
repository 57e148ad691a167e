import pytest
import torch

from una_bundle.scripts.data.bundle_config import load_config
from una_bundle.scripts.data.checks import check_bool, check_probability, check_range


@pytest.mark.parametrize(
    "value, expected", [(True, True), ("false", False), ("True", True), ("0", False), ("yes", True)]
)
def test_check_bool_reads_command_line_words(value, expected):
    assert check_bool("resume", value) is expected


def test_check_bool_rejects_other_words():
    with pytest.raises(ValueError, match="resume must be true or false, got 'maybe'"):
        check_bool("resume", "maybe")


def test_resume_false_on_the_command_line_starts_afresh(tmp_path):
    """``--resume false`` arrives as the string 'false': no checkpoint may be picked up."""
    (tmp_path / "models").mkdir()
    torch.save({"model": {}}, tmp_path / "models" / "checkpoint_epoch=1.pt")
    found = load_config(overrides={"output_dir": str(tmp_path), "resume": "true"}).get_parsed_content("resume_from")
    assert found is not None and found.endswith("checkpoint_epoch=1.pt")
    parser = load_config(overrides={"output_dir": str(tmp_path), "resume": "false"})
    assert parser.get_parsed_content("resume_from") is None
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps errors of config expressions
        load_config(overrides={"output_dir": str(tmp_path), "resume": "sometimes"}).get_parsed_content("resume_from")
    assert "resume must be true or false, got 'sometimes'" in str(raised.value.__cause__)


def test_range_and_probability_errors():
    assert check_range("r", [1, 2], 0, 3) == (1, 2)
    with pytest.raises(ValueError, match="min <= max"):
        check_range("r", [2, 1])
    with pytest.raises(ValueError, match="probability"):
        check_probability("p", 1.5)
