"""Published data-set layouts (CelebA, CelebAMask-HQ, CIFAR-100) on tiny fixtures written in each
layout, named subsets, and the built-in stand-ins of the explanation-alignment recipes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from xaibench.data import collate, load_dataset
from xaibench.data.celeba import mouth_box
from xaibench.data.subset import write_subsets
from xaibench.errors import InputError

ATTRS = ["Black_Hair", "Blond_Hair", "Smiling"]


def _jpg(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=95)


def _celeba(root):
    """Four aligned images 24 x 20 (H x W); partition 0, 0, 1, 2."""
    files = [f"{i:06d}.jpg" for i in range(1, 5)]
    for k, f in enumerate(files):
        _jpg(root / "img_align_celeba" / f, 24, 20, k)
    values = [[1, -1, 1], [-1, 1, -1], [1, -1, -1], [-1, 1, 1]]
    rows = [f"{f} " + " ".join(f"{v:2d}" for v in vals) for f, vals in zip(files, values)]
    (root / "list_attr_celeba.txt").write_text("4\n" + " ".join(ATTRS) + "\n" + "\n".join(rows) + "\n")
    names = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    # mouth corners: (4, 15) and (13, 16): width 9 -> 3 rows up and down
    lm = [f"{f}  6 8 14 8 10 12 4 15 13 16" for f in files]
    (root / "list_landmarks_align_celeba.txt").write_text("4\n" + names + "\n" + "\n".join(lm) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(f"{f} {p}" for f, p in zip(files, (0, 0, 1, 2))) + "\n")


def test_celeba_layout_labels_splits_and_the_mouth_box(tmp_path):
    _celeba(tmp_path / "celeba")
    train = load_dataset(f"celeba:{tmp_path}", split="train")  # the folder holding celeba/ (torchvision layout)
    assert len(train) == 2 and train.classes == ["not Smiling", "Smiling"]
    sample = train[0]
    assert sample.id == "000001" and sample.label == 1 and sample.image.shape == (3, 24, 20)
    expected = torch.zeros(24, 20, dtype=torch.bool)
    expected[15 - 3:16 + 3, 4:13] = True  # rows leftmouth_y - w/3 .. rightmouth_y + w/3, columns lx .. rx
    assert torch.equal(sample.masks["mouth"], expected) and sample.mask is sample.masks["mouth"]
    assert [s.label for s in load_dataset(f"celeba:{tmp_path / 'celeba'}#Blond_Hair", split="all")] == [0, 1, 0, 1]
    assert len(load_dataset(f"celeba:{tmp_path}", split="test")) == 1
    attrs = train.attributes()
    assert attrs["id"].tolist() == ["000001", "000002"] and attrs["Black_Hair"].tolist() == [1, 0]
    small = load_dataset(f"celeba:{tmp_path}", split="train", image_size=10)
    assert small[0].image.shape == (3, 10, 10) and small[0].masks["mouth"].shape == (10, 10)


def test_mouth_box_is_clipped_to_the_image():
    box = mouth_box(torch.tensor([0, 1, 6, 2]), 5, 5)  # 2 rows up from row 1 would leave the image
    assert box[:4, :5].all() and not box[4:].any()


def test_celeba_errors_name_the_missing_file_and_the_attribute(tmp_path):
    with pytest.raises(InputError, match="list_attr_celeba.txt"):
        load_dataset(f"celeba:{tmp_path}")
    _celeba(tmp_path)
    (tmp_path / "list_landmarks_align_celeba.txt").unlink()
    with pytest.raises(InputError, match="list_landmarks_align_celeba.txt"):
        load_dataset(f"celeba:{tmp_path}")
    _celeba(tmp_path)
    with pytest.raises(InputError, match="'Smilling'.*'Smiling'"):
        load_dataset(f"celeba:{tmp_path}#Smilling")
    (tmp_path / "img_align_celeba" / "000004.jpg").unlink()
    with pytest.raises(InputError, match="000004.jpg"):
        load_dataset(f"celeba:{tmp_path}", split="test")[0]
    with pytest.raises(InputError, match="split 'val'.*valid"):
        load_dataset(f"celeba:{tmp_path}", split="val")


def _png(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask * 255).astype(np.uint8)).save(path)


def test_celebamask_hq_region_unions_and_splits(tmp_path):
    root = tmp_path / "CelebAMask-HQ"
    for i in range(3):
        _jpg(root / "CelebA-HQ-img" / f"{i}.jpg", 16, 16, i)  # masks are at half the image's resolution
    rows = ["0.jpg  1 -1  1", "1.jpg -1  1 -1", "2.jpg  1 -1 -1"]
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text("3\n" + " ".join(ATTRS) + "\n" + "\n".join(rows) + "\n")
    # image 0 comes from CelebA's train partition, 1 from valid, 2 from test
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text(
        "idx orig_idx orig_file\n0 100 000101.jpg\n1 170000 170001.jpg\n2 190000 190001.jpg\n")
    anno = root / "CelebAMask-HQ-mask-anno" / "0"
    left, right, lip = np.zeros((8, 8)), np.zeros((8, 8)), np.zeros((8, 8))
    left[1, 1], right[1, 6], lip[6, 3:5] = 1, 1, 1
    _png(anno / "00000_l_eye.png", left)
    _png(anno / "00000_r_brow.png", right)
    _png(anno / "00000_u_lip.png", lip)
    anno.joinpath("..", "1").mkdir()
    ds = load_dataset(f"celebamask-hq:{tmp_path}", split="all")
    assert len(ds) == 3 and ds.mask_names == ("hair", "eye", "mouth", "neck", "nose", "skin", "cloth")
    sample = ds[0]
    assert sample.id == "hq-0" and sample.label == 1 and sample.image.shape == (3, 16, 16)
    eye = torch.zeros(16, 16, dtype=torch.bool)
    eye[2:4, 2:4] = True  # l_eye pixel (1, 1) upsampled x2
    eye[2:4, 12:14] = True  # r_brow pixel (1, 6)
    assert torch.equal(sample.masks["eye"], eye)
    assert sample.masks["mouth"].sum() == 8 and not sample.masks["hair"].any()  # absent part: empty region
    assert [s.id for s in load_dataset(f"celebamask-hq:{root}", split="valid")] == ["hq-1"]
    assert [s.id for s in load_dataset(f"celebamask-hq:{root}", split="test")] == ["hq-2"]
    assert load_dataset(f"celebamask-hq:{root}#Blond_Hair", split="train")[0].label == 0
    (root / "CelebA-HQ-img" / "2.jpg").unlink()
    with pytest.raises(InputError, match="2.jpg"):
        load_dataset(f"celebamask-hq:{root}", split="test")[0]
    with pytest.raises(InputError, match="CelebAMask-HQ-attribute-anno.txt"):
        load_dataset(f"celebamask-hq:{tmp_path / 'nowhere'}")


def _cifar(root):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        body = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": list(range(n)),
                b"filenames": [f"img{i}.png".encode() for i in range(n)]}
        (folder / split).write_bytes(pickle.dumps(body))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"class{i}".encode() for i in range(100)]}))
    return folder


def test_cifar100_pickle_layout(tmp_path):
    folder = _cifar(tmp_path)
    with (folder / "train").open("rb") as fh:
        raw = pickle.load(fh, encoding="bytes")[b"data"]
    ds = load_dataset(f"cifar100:{tmp_path}", split="train")
    assert len(ds) == 3 and len(ds.classes) == 100 and ds.classes[2] == "class2"
    sample = ds[1]
    assert sample.label == 1 and sample.id == "train-1" and sample.masks == {}
    # the 3072 values are the red, green and blue planes, each 32 rows of 32
    assert sample.image[1, 2, 5] == pytest.approx(raw[1, 1024 + 2 * 32 + 5] / 255.0)
    assert len(load_dataset(f"cifar100:{folder}", split="test")) == 2  # the cifar-100-python folder itself
    (folder / "meta").unlink()
    with pytest.raises(InputError, match="meta"):
        load_dataset(f"cifar100:{tmp_path}")


def test_subsets_keep_the_samples_and_name_bad_entries(tmp_path):
    path = write_subsets(tmp_path / "s.json", "builtin:digits-tint",
                         {"few": ("test", [5, 2, 9]), "train-two": ("train", [0, 1])})
    few = load_dataset(f"subset:{path}", split="few")
    base = load_dataset("builtin:digits-tint", split="test")
    assert [s.id for s in few] == [base[i].id for i in (5, 2, 9)]
    assert few.labels.tolist() == [base[i].label for i in (5, 2, 9)] and few.mask_names == ("digit", "frame")
    assert len(load_dataset(f"subset:{path}", split="train-two")) == 2
    with pytest.raises(InputError, match="no subset 'many'.*few"):
        load_dataset(f"subset:{path}", split="many")
    write_subsets(path, "builtin:digits-tint", {"bad": ("test", [10_000])})
    with pytest.raises(InputError, match="10000"):
        load_dataset(f"subset:{path}", split="bad")


def test_alignment_stand_ins():
    tint = load_dataset("builtin:digits-tint", split="train")
    batch = collate(list(tint))
    attrs = tint.attributes()
    assert set(batch.labels.tolist()) == {0, 1} and (attrs["warm"] + attrs["cool"] == 1).all()
    groups = attrs.assign(label=batch.labels.numpy()).groupby(["cool", "label"]).size()
    assert len(groups) == 4 and groups.min() > 250  # all four groups populated (biased subsets are sampled)
    cool = torch.tensor(attrs["cool"].to_numpy(), dtype=torch.bool)
    frame = batch.masks["frame"][0]
    assert torch.allclose(batch.images[cool][:, 2, frame], torch.tensor(1.0))  # the cool tint is blue
    assert not (batch.masks["digit"] & batch.masks["frame"]).any()
    regions = collate(list(load_dataset("builtin:digits-regions")))
    stack = torch.stack([regions.masks[n] for n in ("upper", "lower", "square", "background")]).long()
    assert (stack.sum(0) == 1).all()  # the four regions partition every image
    low, high = load_dataset("builtin:digits-low"), load_dataset("builtin:digits-high")
    assert low.classes == ["0", "1", "2", "3", "4"] and high.classes == ["5", "6", "7", "8", "9"]
    assert len(low) + len(high) == len(load_dataset("builtin:digits"))
    assert set(high.labels.tolist()) == set(range(5))
