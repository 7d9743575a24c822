"""Patient-safe data: metadata.csv (patient ids, attributes, the grouping rule), several folders, folds."""

import csv

import pytest

from .mri_fake import make_folder, make_lgg
from toolkit.data.errors import DataError, MRIDataError
from toolkit.data.mri.discover import discover_mri_slices
from toolkit.data.mri.folders import discover_folders, folder_tags, parse_data_dirs
from toolkit.data.mri.metadata import patient_group, read_metadata
from toolkit.data.splits import split_records


def _write_meta(root, rows, header=("id", "patient_id", "tumour_type")):
    with (root / "metadata.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return root


@pytest.mark.parametrize("raw, person", [("MR024780B", "MR024780"), ("MR024780D", "MR024780"), ("100360", "100360"),
                                         ("MR029209", "MR029209"), ("anon", "anon"), (" MR1a ", "MR1")])
def test_patient_grouping_rule(raw, person):
    assert patient_group(raw) == person


def test_folder_reads_metadata_patients_and_attributes(tmp_path):
    root = make_folder(tmp_path / "d", n=6)
    _write_meta(root, [(1, "MR5B", "glioma"), (2, "MR5D", "glioma"), (3, "100", "meningioma"),
                       (4, "100", "meningioma"), (5, "200", "pituitary"), (6, "MR5", "glioma")])
    found = discover_mri_slices(root)
    by_id = {s.id: s for s in found.slices}
    assert by_id["1"].patient == by_id["2"].patient == by_id["6"].patient == "MR5"
    assert by_id["3"].attrs == {"tumour_type": "meningioma"}
    assert found.patients == ["100", "200", "MR5"]


def test_a_patient_with_lettered_ids_stays_on_one_side(tmp_path):
    root = make_folder(tmp_path / "d", n=12)
    _write_meta(root, [(i, f"MR{i % 4}{'BCD'[i % 3]}", "glioma") for i in range(1, 13)])
    found = discover_mri_slices(root)
    for seed in range(5):
        split = split_records(found.slices, 0.25, seed=seed)
        sides = {}
        for name, recs in split.items():
            for r in recs:
                sides.setdefault(r.patient, set()).add(name)
        assert all(len(s) == 1 for s in sides.values()), sides


def test_metadata_errors_name_the_file(tmp_path):
    root = make_folder(tmp_path / "d", n=3)
    _write_meta(root, [(1, "a", "x"), (2, "a", "x")])
    with pytest.raises(MRIDataError, match=r"metadata.csv.*ids \['3'\]"):
        discover_mri_slices(root)
    _write_meta(root, [(1, "a"), (1, "b")], header=("id", "patient_id"))
    with pytest.raises(DataError, match="metadata.csv: id '1' appears twice"):
        read_metadata(root)
    _write_meta(root, [(1, "a")], header=("slice", "patient_id"))
    with pytest.raises(DataError, match="'id' column"):
        read_metadata(root)


@pytest.mark.parametrize("content, message", [
    ("id,patient_id\n1,P\xe9\n".encode("latin-1"), r"not UTF-8 text \(byte 0xe9 at offset 17\)"),  # was a bare
    ("id,patient_id\n1,P1\n".encode("utf-16"), "not UTF-8 text"),  # UnicodeDecodeError naming no file
    (b"id,patient_id,id\n1,P1,2\n", r"column 'id' is named twice"),  # was: "the slices have no row"
    (b"id,,kind\n1,P1,x\n", "column 2 has no name"),  # was: an attribute named ''
    (b"id,patient_id\n1,P1\n,P2\n", "line 3 has an empty id"),  # was: a row for an id ''
])
def test_a_malformed_metadata_file_is_refused_naming_it(tmp_path, content, message):
    root = make_folder(tmp_path / "d", n=1)
    (root / "metadata.csv").write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        discover_mri_slices(root)
    assert str(err.value).startswith(f"{root / 'metadata.csv'}: ")


def test_without_metadata_there_are_no_patients(tmp_path):
    assert discover_mri_slices(make_folder(tmp_path / "d", n=3)).patients == []


def test_several_folders_keep_ids_apart_and_patients_together(tmp_path):
    a = _write_meta(make_folder(tmp_path / "a", n=4), [(i, f"P{i % 2}", "glioma") for i in range(1, 5)])
    b = _write_meta(make_folder(tmp_path / "b", n=4), [(i, f"P{i % 3}", "glioma") for i in range(1, 5)])
    found = discover_folders(f"{a},{b}")
    assert [s.id for s in found.slices][:2] == ["a/1", "a/2"] and len(found.slices) == 8
    assert found.roots == (a, b) and found.source == "folder"
    assert sorted(found.patients) == ["P0", "P1", "P2"]  # P0 and P1 are in both folders: one unit each
    single = discover_folders(str(a))
    assert [s.id for s in single.slices] == ["1", "2", "3", "4"]
    assert folder_tags([tmp_path / "x" / "d", tmp_path / "y" / "d"]) == ["d", "d-2"]
    with pytest.raises(DataError, match="twice"):
        parse_data_dirs(f"{a},{a}")


def test_several_folders_read_again_from_their_roots_give_the_same_ids(tmp_path):
    """split.json stores ``roots`` as its data_dir; for LGG folders (layout root ``<folder>/kaggle_3m``) they used
    to be the layout roots, whose tags (kaggle_3m, kaggle_3m-2) are not the run's ids (a/..., b/...)."""
    a, b = make_lgg(tmp_path / "a", patients=2, slices=1), make_lgg(tmp_path / "b", patients=2, slices=1)
    found = discover_folders(f"{a},{b}")
    again = discover_folders(",".join(str(r) for r in found.roots))
    assert [s.id for s in again.slices] == [s.id for s in found.slices] == [
        "a/TCGA_XX_1000_20000100_1", "a/TCGA_XX_1001_20000101_1", "b/TCGA_XX_1000_20000100_1",
        "b/TCGA_XX_1001_20000101_1"]


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_folds_cover_every_slice_once_and_are_patient_safe(tmp_path, folds):
    root = make_folder(tmp_path / "d", n=20)
    _write_meta(root, [(i, f"P{i % 7}", "glioma") for i in range(1, 21)])
    records = discover_mri_slices(root).slices
    seen = []
    for k in range(folds):
        split = split_records(records, seed=3, folds=folds, fold=k)
        train = {r.patient for r in split["train"]}
        val = {r.patient for r in split["val"]}
        assert not train & val
        assert len(split["train"]) + len(split["val"]) == len(records)
        seen += [r.id for r in split["val"]]
    assert sorted(seen) == sorted(r.id for r in records)
    with pytest.raises(ValueError, match="fold must be in"):
        split_records(records, folds=folds, fold=folds)


def test_the_split_of_two_lgg_folders_reads_back_from_its_data_dir(tmp_path):
    """split.json's data_dir (read by evaluate, the CV's out-of-fold scoring, postprocess, the ssl curve) gives
    the ids the run split: the folders as given, not their kaggle_3m/ layout roots (tagged kaggle_3m, kaggle_3m-2)."""
    import json

    from toolkit import Trainer, parse_config, segmentation_data
    from toolkit.data.splits import load_split

    from .mri_fake import make_lgg
    from .utils import load_recipe

    dirs = [make_lgg(tmp_path / name, patients=2, slices=3) for name in ("lggA", "lggB")]
    recipe = load_recipe("brain_mri")
    cfg = parse_config(recipe.BrainMRIConfig, ["--data-dir", ",".join(map(str, dirs)), "--output-dir",
                                               str(tmp_path / "runs"), "--image-size", "32", "--wandb-mode",
                                               "disabled"])
    trainer = Trainer(cfg, recipe="brain_mri")
    segmentation_data(cfg, trainer)
    trainer.close()
    split_file = trainer.run_dir / "split.json"
    again = discover_folders(json.loads(split_file.read_text())["data_dir"], channels=cfg.in_channels).slices
    split = load_split(split_file, again)
    assert sum(len(v) for v in split.values()) == 12 and split["val"][0].id.startswith(("lggA/", "lggB/"))
