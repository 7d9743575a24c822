"""Every seeded split (toolkit.data.splits): id and block splits, patient-safe MRI splits, split files, hold-outs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from toolkit.data.cifar import CIFARTensorDataset
from toolkit.data.errors import DataError
from toolkit.data.mri.discover import discover_mri_slices
from toolkit.data.mri.io import MRISlice
from toolkit.data.splits import holdout_indices, holdout_split, load_split, save_split, split_ids, split_records

from .mri_fake import disjoint_patients, make_brats, make_lgg, make_mat


# --- ids, blocks, groups ---------------------------------------------------------------------------


def test_split_ids():
    ids = [str(i) for i in range(1, 51)]
    train, val = split_ids(ids, 0.2, seed=0)
    assert (train, val) == split_ids(ids, 0.2, seed=0)
    assert split_ids(ids, 0.2, seed=1) != (train, val)
    assert len(val) == 10 and not set(train) & set(val)
    assert sorted(train + val, key=int) == sorted(ids, key=int)
    assert split_ids(["a", "b"], 0.01) and all(split_ids(["a", "b"], 0.99))  # both sides non-empty

    train_b, val_b = split_ids(ids, 0.2, seed=0, block_size=10)
    assert len(val_b) == 10 and len({(int(i) - 1) // 10 for i in val_b}) == 1  # one whole block
    groups = [f"p{int(i) % 5}" for i in ids]
    train_g, val_g = split_ids(ids, 0.4, seed=0, groups=groups)
    assert not {g for i, g in zip(ids, groups) if i in val_g} & {g for i, g in zip(ids, groups) if i in train_g}

    with pytest.raises(ValueError, match="1 id"):
        split_ids(["only"], 0.2)
    with pytest.raises(ValueError, match="val_fraction"):
        split_ids(ids, 1.0)


# --- MRI records: patient-safe, and split files -----------------------------------------------------


def test_patient_safe_splits_on_every_layout(tmp_path):
    sources = [discover_mri_slices(make_lgg(tmp_path / "l", patients=10, slices=3)),
               discover_mri_slices(make_mat(tmp_path / "m", pids=[f"P{i // 2}" for i in range(20)])),
               discover_mri_slices(make_brats(tmp_path / "b", cases=6, shape=(16, 16, 4), tumour=(1,), brain=range(4)))]
    for found in sources:
        split = split_records(found.slices, 0.2, 0.2, seed=3)
        assert set(split) == {"train", "val", "test"} and all(split.values()), found.source
        owner = disjoint_patients(split)
        assert set(owner) == set(found.patients)
        assert sorted(r.id for v in split.values() for r in v) == sorted(r.id for r in found.slices)
        again = split_records(found.slices, 0.2, 0.2, seed=3)
        assert {k: [r.id for r in v] for k, v in again.items()} == {k: [r.id for r in v] for k, v in split.items()}
        other = split_records(found.slices, 0.2, 0.2, seed=4)
        assert {k: [r.id for r in v] for k, v in other.items()} != {k: [r.id for r in v] for k, v in split.items()}


def test_block_split_and_round_trip(tmp_path):
    recs = [MRISlice(str(i), None, "folder", Path(f"{i}.png"), Path(f"{i}_mask.png")) for i in range(1, 101)]
    split = split_records(recs, 0.2, seed=0, block_size=20)
    assert set(split) == {"train", "val"} and len(split["val"]) == 20
    assert {(int(r.id) - 1) // 20 for r in split["val"]} == {(int(split["val"][0].id) - 1) // 20}  # one block
    path = save_split(tmp_path / "run" / "split.json", split, data_dir=tmp_path, source="folder")
    data = json.loads(path.read_text())
    assert data["source"] == "folder" and data["val"] == [r.id for r in split["val"]]
    assert load_split(path, recs) == split
    with pytest.raises(ValueError) as err:
        load_split(path, recs[:50])
    assert str(path) in str(err.value) and "split are not among the 50 slices" in str(err.value)
    assert load_split(path, split["val"], names=["val", "test"]) == {"val": split["val"]}  # only what is asked
    with pytest.raises(ValueError, match="val_fraction"):
        split_records(recs, 0.6, 0.5)
    with pytest.raises(ValueError, match="1 unit"):
        split_records(recs[:1], 0.2)
    with pytest.raises(ValueError, match="2 unit"):
        split_records(recs[:40], 0.2, 0.2, block_size=20)


def test_val_fraction_zero_trains_on_every_unit_outside_the_test_split(tmp_path):
    recs = [MRISlice(str(i), f"p{i // 4}", "folder", Path(f"{i}.png"), Path(f"{i}_mask.png")) for i in range(40)]
    split = split_records(recs, 0.0)
    assert split["val"] == [] and split["train"] == recs  # every slice, in order
    held = split_records(recs, 0.0, 0.2, seed=3)
    assert held["val"] == [] and len(held["test"]) == 8 and len(held["train"]) == 32
    assert {r.patient for r in held["test"]}.isdisjoint(r.patient for r in held["train"])
    assert held["test"] == split_records(recs, 0.2, 0.2, seed=3)["test"]  # the same test patients as with val
    assert split_records(recs[:4], 0.0)["train"] == recs[:4]  # one patient is enough to train on
    with pytest.raises(ValueError, match="1 unit"):
        split_records(recs[:4], 0.0, 0.2)  # a test split still needs a second patient
    assert split_records(recs, 0.0, folds=5, fold=1)["val"]  # folds ignore val_fraction
    path = save_split(tmp_path / "split.json", split, source="folder")
    assert load_split(path, recs) == split


def test_load_split_errors_are_data_errors(tmp_path):
    recs = [MRISlice(str(i), None, "folder", Path(f"{i}.png"), Path(f"{i}_mask.png")) for i in range(1, 11)]
    path = save_split(tmp_path / "split.json", split_records(recs, 0.2), source="folder")
    with pytest.raises(DataError, match="split are not among"):
        load_split(path, recs[:3])
    (tmp_path / "info.json").write_text(json.dumps({"source": "folder"}))
    with pytest.raises(DataError, match="holds no split"):
        load_split(tmp_path / "info.json", recs)


# --- random hold-outs ---------------------------------------------------------------------------------


def test_holdout_split_is_disjoint_and_seeded(tmp_path):
    ds = CIFARTensorDataset(torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 2, 2).clone(),
                            torch.arange(20) % 10)
    rest, held = holdout_split(ds, 5, seed=1)
    ids = lambda d: set(d.images[:, 0, 0, 0].tolist())  # noqa: E731
    assert len(held) == 5 and len(rest) == 15 and not ids(rest) & ids(held)
    assert ids(holdout_split(ds, 5, seed=1)[1]) == ids(held)
    image, label = held[0]
    assert image.shape == (3, 2, 2) and int(label) == int(image[0, 0, 0]) % 10


def test_holdout_matches_the_seeded_randperm_the_recipes_drew():
    order = torch.randperm(30, generator=torch.Generator().manual_seed(7)).tolist()
    assert holdout_indices(30, 4, seed=7) == (order[4:], order[:4])
    ds = TensorDataset(torch.arange(30))
    rest, held = holdout_split(ds, 4, seed=7)  # MNIST: Subsets, rest in draw order
    assert isinstance(rest, Subset) and rest.indices == order[4:] and held.indices == order[:4]
    rest, held = holdout_split(ds, 4, seed=7, sort_rest=True)  # STL-10 unlabelled: rest in file order
    assert rest.indices == sorted(order[4:]) and held.indices == order[:4]
    for bad in (0, 30):
        with pytest.raises(ValueError, match="holdout must be between 1 and 29"):
            holdout_split(ds, bad)
