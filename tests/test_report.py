"""pneumoscan.data.report: the data report on generated trees (and on the real data when present)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pneumoscan import __version__
from pneumoscan.data import report as report_module
from pneumoscan.data.dataset import discover, fingerprint
from pneumoscan.data.report import build_report, format_report
from pneumoscan.testing.synthetic import write_image

FIGURES = ("class_balance.png", "image_sizes.png", "samples_NORMAL.png", "samples_PNEUMONIA.png")


@pytest.fixture
def messy_tree(make_tree):
    """The default tree plus: a duplicate across splits and labels, a duplicate within a patient,
    two unreadable files, a colour photo, a non-square PNG and a patient id found in both splits."""
    root = make_tree()
    shutil.copyfile(
        root / "train" / "NORMAL" / "IM-0115-0001.jpeg",
        root / "test" / "PNEUMONIA" / "person200_bacteria_1.jpeg",
    )
    shutil.copyfile(
        root / "train" / "PNEUMONIA" / "person1_bacteria_1.jpeg",
        root / "train" / "PNEUMONIA" / "person1_bacteria_3.jpeg",
    )
    (root / "train" / "NORMAL" / "IM-0500-0001.jpeg").write_bytes(b"")
    (root / "test" / "PNEUMONIA" / "person201_virus_2.jpeg").write_text("not an image")
    yy, xx = np.mgrid[0:64, 0:64]
    photo = np.stack([xx * 4, yy * 4, 255 - xx * 4], axis=2).astype(np.uint8)
    write_image(root / "train" / "PNEUMONIA" / "person300_virus_1.png", photo)
    write_image(root / "test" / "NORMAL" / "IM-0115-0002.png", np.full((40, 120), 90, np.uint8))
    return root


def test_report_on_a_generated_tree(messy_tree, tmp_path):
    out = tmp_path / "out"
    report = build_report(messy_tree, out_dir=out, sample_grid=2, progress=False)

    assert report["version"] == __version__
    assert report["root"] == str(messy_tree.resolve())
    # Files found, readable or not.
    assert report["splits"] == {
        "test": {"NORMAL": 4, "PNEUMONIA": 6},
        "train": {"NORMAL": 7, "PNEUMONIA": 10},
    }
    assert report["readable"] == {
        "test": {"NORMAL": 4, "PNEUMONIA": 5},
        "train": {"NORMAL": 6, "PNEUMONIA": 10},
    }
    assert (report["n_files"], report["n_readable"], report["n_unreadable"]) == (27, 25, 2)
    assert report["imbalance"]["train"] == pytest.approx(10 / 7, abs=1e-4)

    # Patients: IM-0119 has 2 images; person1 has 4; IM-0115 is in both splits.
    assert report["patients"]["train"] == {"NORMAL": 6, "PNEUMONIA": 7}
    assert report["patients"]["test"] == {"NORMAL": 4, "PNEUMONIA": 5}
    assert report["images_per_patient"]["train"]["max"] == 4
    assert report["patient_overlap_between_splits"] == {"IM-0115": ["test", "train"]}
    assert report["patients_in_both_classes"] == {"test": [], "train": []}
    assert report["subtypes"]["train"] == {"bacteria": 6, "virus": 4, "none": 7}
    assert report["subtypes"]["test"] == {"bacteria": 4, "virus": 2, "none": 4}

    # Sizes, modes, formats describe readable images.
    assert report["image_sizes"]["train"]["n"] == 16
    assert report["image_sizes"]["train"]["width"] == {"min": 64, "max": 72, "mean": 71.5, "median": 72.0}
    assert report["image_sizes"]["test"]["height"]["min"] == 40
    assert report["image_sizes"]["test"]["width"]["max"] == 120
    assert report["modes"] == {"L": 24, "RGB": 1}
    assert report["formats"] == {"JPEG": 23, "PNG": 2}
    assert [c["path"] for c in report["colourful"]] == ["train/PNEUMONIA/person300_virus_1.png"]

    # Duplicates.
    groups = {tuple(g["files"]): g for g in report["duplicates"]}
    cross = groups[("test/PNEUMONIA/person200_bacteria_1.jpeg", "train/NORMAL/IM-0115-0001.jpeg")]
    assert cross["crosses_splits"] and cross["crosses_labels"] and cross["crosses_patients"]
    assert cross["splits"] == ["test", "train"] and cross["labels"] == ["NORMAL", "PNEUMONIA"]
    assert cross["patients"] == ["IM-0115", "person200"]
    assert len(cross["hash"]) == 64
    same = groups[("train/PNEUMONIA/person1_bacteria_1.jpeg", "train/PNEUMONIA/person1_bacteria_3.jpeg")]
    assert not (same["crosses_splits"] or same["crosses_labels"] or same["crosses_patients"])
    assert len(groups) == 2
    assert report["duplicate_counts"] == {
        "groups": 2,
        "files": 4,
        "redundant_files": 2,
        "groups_crossing_splits": 1,
        "groups_crossing_labels": 1,
        "groups_crossing_patients": 1,
    }

    # Unreadable files, with their reasons.
    unreadable = {u["path"]: u for u in report["unreadable"]}
    assert sorted(unreadable) == ["test/PNEUMONIA/person201_virus_2.jpeg", "train/NORMAL/IM-0500-0001.jpeg"]
    assert "empty file" in unreadable["train/NORMAL/IM-0500-0001.jpeg"]["error"]
    assert "not a recognised image" in unreadable["test/PNEUMONIA/person201_virus_2.jpeg"]["error"]
    assert unreadable["train/NORMAL/IM-0500-0001.jpeg"]["split"] == "train"
    assert unreadable["train/NORMAL/IM-0500-0001.jpeg"]["label"] == "NORMAL"

    samples = [s for ss in discover(messy_tree).values() for s in ss]
    assert report["data_fingerprint"] == fingerprint(samples)
    assert set(report["split_fingerprints"]) == {"train", "test"}

    # Files written: report.json (the same report) and valid PNG figures.
    assert json.loads((out / "report.json").read_text()) == report
    assert sorted(report["figures"]) == sorted(FIGURES)
    for name in FIGURES:
        with Image.open(out / name) as img:
            assert img.format == "PNG" and min(img.size) > 100


def test_format_report_summarises(messy_tree, tmp_path):
    text = format_report(build_report(messy_tree, out_dir=tmp_path, sample_grid=0, progress=False))
    assert "train" in text and "1.43" in text  # imbalance ratio 10/7
    assert "IM-0500-0001.jpeg: " in text and "empty file" in text
    assert "Unreadable files: 2" in text
    assert "2 group(s)" in text and "crosses splits and labels and patients" in text
    assert "IM-0115 (test/train)" in text
    assert "colour image" in text
    assert text == format_report(json.loads((tmp_path / "report.json").read_text()))


def test_report_of_a_single_split_folder_with_an_empty_class(tmp_path):
    root = tmp_path / "mysplit"
    write_image(root / "NORMAL" / "IM-0001-0001.png", np.full((50, 60), 100, np.uint8))
    (root / "PNEUMONIA").mkdir()
    report = build_report(root, out_dir=tmp_path / "out", progress=False)
    assert report["splits"] == {"mysplit": {"NORMAL": 1, "PNEUMONIA": 0}}
    assert report["imbalance"]["mysplit"] == 0.0
    assert (tmp_path / "out" / "samples_PNEUMONIA.png").is_file()  # an empty gallery, not a crash
    assert "mysplit" in format_report(report)


def test_report_of_a_tree_without_readable_images(tmp_path):
    (tmp_path / "data" / "train" / "PNEUMONIA").mkdir(parents=True)
    (tmp_path / "data" / "train" / "PNEUMONIA" / "person1_virus_1.jpeg").write_bytes(b"\xff\xd8\xff")
    report = build_report(tmp_path / "data", out_dir=tmp_path / "out", sample_grid=0, progress=False)
    assert report["n_readable"] == 0 and report["imbalance"]["train"] is None
    assert report["image_sizes"]["train"] == {"n": 0, "width": None, "height": None}
    assert report["images_per_patient"]["train"]["max"] == 1
    assert "no readable images" in format_report(report)
    assert not (tmp_path / "out" / "samples_NORMAL.png").exists()


def test_unexpected_decoder_errors_are_listed_not_raised(make_tree, tmp_path, monkeypatch, capsys):
    root = make_tree()
    real = report_module.decode_bytes

    def flaky(data, *, name):
        if name.endswith("person12_bacteria_40.jpeg"):
            raise RuntimeError("decoder exploded")
        return real(data, name=name)

    monkeypatch.setattr(report_module, "decode_bytes", flaky)
    report = build_report(root, out_dir=tmp_path / "out", sample_grid=1, progress=True)
    assert report["unreadable"] == [
        {
            "path": "train/PNEUMONIA/person12_bacteria_40.jpeg",
            "split": "train",
            "label": "PNEUMONIA",
            "error": "unexpected RuntimeError while decoding (decoder exploded)",
        }
    ]
    assert "scanning" in capsys.readouterr().err  # the progress bar


def test_report_arguments(tmp_path, make_tree):
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path / "missing", out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="sample_grid"):
        build_report(make_tree(), out_dir=tmp_path / "out", sample_grid=-1)


def test_gallery_choice_is_reproducible_and_one_per_patient(make_tree):
    samples = [s for ss in discover(make_tree()).values() for s in ss]
    first = report_module._gallery_candidates(samples, 2)
    assert first == report_module._gallery_candidates(list(reversed(samples)), 2)
    by_path = {s.path: s for s in samples}
    for label, paths in first.items():
        assert len(paths) == 6 and all(by_path[p].label == label for p in paths)
        assert len({by_path[p].patient_id for p in paths}) == len(paths)


@pytest.mark.slow
@pytest.mark.required
def test_real_data_report(shared_data, tmp_path):
    report = build_report(shared_data, out_dir=tmp_path, progress=False)
    assert report["splits"]["train"] == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert report["n_unreadable"] == 0 and report["unreadable"] == []
    assert report["subtypes"]["train"]["bacteria"] + report["subtypes"]["train"]["virus"] == 3875
    # The data README speaks of 30 groups; byte-for-byte this copy holds 24, all within one patient.
    assert report["duplicate_counts"]["groups"] == 24
    assert report["duplicate_counts"]["groups_crossing_labels"] == 0
    assert report["patients_in_both_classes"]["train"] == []
    assert report["elapsed_s"] < 60
    for name in FIGURES:
        assert (tmp_path / name).is_file()
    assert "1341" in format_report(report) and "3875" in format_report(report)
