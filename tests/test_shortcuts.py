"""pneumoscan.evaluation.shortcuts: the shortcut audit finds a set-up that carries the label, and
only then; the set-up-shifted validation holds out the normals that look like pneumonia films."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumoscan.evaluation.shortcuts import audit, format_audit, setup_shift_split
from pneumoscan.interfaces.cli import main
from pneumoscan.testing.synthetic import write_image, xray_like

SIZE = 64


def _films(n_per_class: int, *, marker_on_pneumonia: bool, seed: int = 0):
    """Synthetic films whose lungs carry the label; with ``marker_on_pneumonia`` each pneumonia
    film also gets a burnt-in white block in its top-left corner (a large "R" marker)."""
    rng = np.random.default_rng(seed)
    x, y, groups = [], [], []
    for label in (0, 1):
        for i in range(n_per_class):
            # Half the films of each class carry an opacity: the lungs predict the label only partly.
            img = xray_like(
                SIZE, SIZE, seed=1000 * label + i, pneumonia=bool(rng.random() < (0.3 + 0.4 * label))
            )
            if marker_on_pneumonia and label == 1:
                img[2:8, 2:7] = 255
            x.append(img)
            y.append(label)
            groups.append(f"p{label}-{i}")
    return np.stack(x)[..., None], np.array(y), groups


def test_a_burnt_in_marker_that_follows_the_label_is_found():
    x, y, groups = _films(40, marker_on_pneumonia=True)
    result = audit(x, y, groups, seed=0)
    assert result["regions"]["border"]["roc_auc"] > 0.95
    cues = {c["name"]: c for c in result["cues"]}
    for name in ("burnt_in_marks", "largest_mark"):
        assert cues[name]["carries_label"] and cues[name]["direction"] == "higher in pneumonia"
        assert cues[name]["roc_auc"] > 0.95
    text = format_audit(result)
    assert "CARRIES LABEL" in text and "border alone predicts the label" in text
    assert result["setup_score"].shape == (80,)


def test_a_border_without_set_up_differences_carries_nothing():
    x, y, groups = _films(40, marker_on_pneumonia=False)
    result = audit(x, y, groups, seed=0)
    cues = {c["name"]: c for c in result["cues"]}
    assert not cues["burnt_in_marks"]["carries_label"] and not cues["largest_mark"]["carries_label"]
    assert result["regions"]["border"]["roc_auc"] < result["regions"]["lungs"]["roc_auc"]
    assert "no strong set-up shortcut" in format_audit(result)


def test_audit_refuses_one_class_and_too_few_patients():
    x, y, groups = _films(10, marker_on_pneumonia=True)
    with pytest.raises(ValueError, match="both classes"):
        audit(x[y == 1], y[y == 1], [g for g, v in zip(groups, y, strict=True) if v == 1])
    with pytest.raises(ValueError, match="at least 10 patients"):
        audit(x, y, ["a", "b"] * 10)


def test_setup_shift_split_holds_out_the_most_pneumonia_like_normals_by_patient():
    rng = np.random.default_rng(1)
    y = np.array([0] * 100 + [1] * 300)
    groups = [f"n{i // 2}" for i in range(100)] + [f"p{i // 3}" for i in range(300)]
    score = rng.random(400)
    held = setup_shift_split(score, y, groups, normal_share=0.3, pneumonia_share=0.2, seed=0)
    groups = np.array(groups)
    assert 0.3 <= held[y == 0].mean() <= 0.34 and 0.2 <= held[y == 1].mean() <= 0.22
    assert not set(groups[held]) & set(groups[~held])  # whole patients
    patient_score = {p: score[groups == p].mean() for p in set(groups[y == 0])}
    held_normals = {p for p in set(groups[held & (y == 0)])}
    kept_normals = set(groups[y == 0]) - held_normals
    assert min(patient_score[p] for p in held_normals) >= max(patient_score[p] for p in kept_normals)


def test_pneumoscan_audit_writes_its_report_and_lists_a_bad_file(tmp_path, capsys):
    x, y, _ = _films(15, marker_on_pneumonia=True)
    for i, (img, label) in enumerate(zip(x[..., 0], y, strict=True)):
        name = f"IM-{i:04d}-0001.png" if label == 0 else f"person{i}_bacteria_{i}.png"
        write_image(tmp_path / "data" / ("NORMAL", "PNEUMONIA")[label] / name, img)
    (tmp_path / "data" / "NORMAL" / "IM-9999-0001.jpeg").write_text("not an image")
    code = main(["audit", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "-q"])
    assert code == 1  # done, but a file could not be read
    report = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert report["n"] == 30 and len(report["skipped"]) == 1
    assert "IM-9999-0001.jpeg" in report["skipped"][0]["path"]
    assert (tmp_path / "out" / "audit.png").stat().st_size > 1000
    rows = (tmp_path / "out" / "setup_scores.csv").read_text().splitlines()
    assert rows[0] == "path,label,patient_id,setup_score" and len(rows) == 31
    captured = capsys.readouterr()
    assert "Shortcut audit of 30 images" in captured.out and "IM-9999-0001.jpeg" in captured.err


@pytest.mark.slow
@pytest.mark.required
def test_the_training_folder_border_predicts_its_label(shared_data, tmp_path):
    """The finding of issue 16 on the real training folder: the border alone carries the label."""
    from pneumoscan.evaluation.shortcuts import audit_folder

    result = audit_folder(shared_data / "train", tmp_path, progress=False)
    assert result["n"] == 5216 and result["skipped"] == []
    assert result["regions"]["border"]["roc_auc"] > 0.9
    border_cues = [c for c in result["cues"] if c["measured_in"] == "border" and c["carries_label"]]
    assert border_cues, "no border cue carries label information"
