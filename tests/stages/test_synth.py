import json

import pytest

from retinaslim.errors import UserError
from retinaslim.stages.synth import SynthConfig, synth


def test_one_class_without_distractors(tmp_path):
    """--classes id_card draws only ID cards, numbered 1; the default draw is unchanged by the option."""
    one = synth(SynthConfig(tmp_path / "one", num_labeled=12, num_unlabeled=0, num_val=1, size=64, seed=4,
                            classes=("id_card",), distractors=False))
    data = json.loads(one.files["labeled"].read_text())
    assert data["categories"] == [{"id": 1, "name": "id_card"}]
    assert {a["category_id"] for a in data["annotations"]} == {1}
    assert len(data["annotations"]) >= 12  # every image holds at least one card

    passports = synth(SynthConfig(tmp_path / "pp", num_labeled=12, num_unlabeled=0, num_val=1, size=64, seed=4,
                                  classes=("passport", "id_card")))
    data = json.loads(passports.files["labeled"].read_text())
    assert [c["name"] for c in data["categories"]] == ["passport", "id_card"]
    assert {a["category_id"] for a in data["annotations"]} == {1, 2}


@pytest.mark.parametrize("classes", [("visa",), (), ("id_card", "id_card")])
def test_bad_class_names_are_refused(classes, tmp_path):
    with pytest.raises(UserError, match="`classes`"):
        synth(SynthConfig(tmp_path, num_labeled=1, num_unlabeled=0, num_val=1, size=64, classes=classes))
