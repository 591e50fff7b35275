"""Data sets: the built-in digits (plain and spurious), image folders with masks and VOC boxes, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xaibench.data import Batch, Sample, collate, load_dataset
from xaibench.data.digits import COLOURS, SQUARE, STROKE_THRESHOLD
from xaibench.errors import InputError, UnknownNameError

# --- built-in digits --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return {split: load_dataset("builtin:digits", split) for split in ("train", "test")}


@pytest.fixture(scope="module")
def spurious():
    return {split: load_dataset("builtin:digits-spurious", split) for split in ("train", "test", "correlated", "uncorrelated")}


def test_builtin_shapes_ranges_ids(digits):
    train, test = digits["train"], digits["test"]
    assert (len(train), len(test)) == (1257, 540)  # 1797 real digits, stratified 70/30
    assert train.classes == [str(i) for i in range(10)]
    assert train.mask_names == ("digit", "square") and train.default_mask == "digit"
    s = test[0]
    assert isinstance(s, Sample) and s.image.shape == (3, 32, 32) and s.image.dtype == torch.float32
    assert s.mask is s.masks["digit"]  # the default mask is the same object as its entry
    assert set(s.masks) == {"digit", "square"} and all(m.dtype == torch.bool and m.shape == (32, 32) for m in s.masks.values())
    images, labels = test.tensors()
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.9
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])  # grey digits
    ids_train = [train[i].id for i in range(len(train))]
    ids_test = [test[i].id for i in range(len(test))]
    assert len(set(ids_train)) == len(train) and len(set(ids_test)) == len(test)
    assert not set(ids_train) & set(ids_test)
    # Stratified: every class has 30% (+- one image) of its images in test.
    counts_test = torch.bincount(labels, minlength=10)
    counts_all = counts_test + torch.bincount(train.tensors()[1], minlength=10)
    assert ((counts_test - 0.3 * counts_all).abs() <= 1).all()
    # Deterministic: a second load gives the same split and pixels.
    again = load_dataset("builtin:digits", "test")
    assert again[7].id == test[7].id and torch.equal(again[7].image, test[7].image)
    assert test[-1].id == test[len(test) - 1].id
    with pytest.raises(IndexError):
        test[len(test)]


def test_builtin_masks_where_they_should_be(digits):
    test = digits["test"]
    images, _ = test.tensors()
    square = torch.zeros(32, 32, dtype=torch.bool)
    square[26:32, 0:6] = True
    for i in range(0, len(test), 37):
        s = test[i]
        grey = images[i, 0]
        assert torch.equal(s.masks["square"], square)
        # The digit mask is exactly the bright pixels outside the square region.
        assert torch.equal(s.masks["digit"], (grey > STROKE_THRESHOLD) & ~square)
        assert s.masks["digit"].sum() > 20
        # It covers most of the ink.
        assert grey[s.masks["digit"]].sum() > 0.8 * grey.sum()


def test_spurious_square_colour(digits, spurious):
    plain, _ = digits["test"].tensors()
    for split in ("train", "test", "correlated"):
        ds = spurious[split]
        images, labels = ds.tensors()
        patch = images[:, :, SQUARE[0], SQUARE[1]]
        assert torch.equal(patch, COLOURS[labels][:, :, None, None].expand_as(patch)), split
    assert torch.equal(spurious["test"].tensors()[0], spurious["correlated"].tensors()[0])
    # Outside the square the spurious images are the plain ones; the square mask is the drawn square exactly.
    sp_images, sp_labels = spurious["test"].tensors()
    drawn = (sp_images != plain).any(dim=1)
    s = spurious["test"][0]
    assert (drawn <= s.masks["square"]).all()
    assert torch.equal(s.masks["square"], (sp_images[0] == COLOURS[sp_labels[0]][:, None, None]).all(0) & s.masks["square"])
    assert s.masks["square"].sum() == 36
    # Random colour: the test images, but the colour is independent of the label.
    un_images, un_labels = load_dataset("builtin:digits-spurious", "random_colour").tensors()
    assert torch.equal(un_labels, sp_labels)
    colour = (un_images[:, :, 28, 2][:, None, :] == COLOURS[None]).all(-1).float().argmax(1)
    assert torch.equal(un_images[:, :, SQUARE[0], SQUARE[1]], COLOURS[colour][:, :, None, None].expand(-1, -1, 6, 6))
    agree = (colour == un_labels).float().mean().item()
    assert agree < 0.25  # chance is 0.1
    assert len(colour.unique()) == 10
    outside = ~torch.as_tensor(s.masks["square"])
    assert torch.equal(un_images[:, :, outside], sp_images[:, :, outside])
    # Uncorrelated (the paper's): one shuffled palette, no class on its own colour.
    pal_images, pal_labels = spurious["uncorrelated"].tensors()
    assert torch.equal(pal_labels, sp_labels) and torch.equal(pal_images[:, :, outside], sp_images[:, :, outside])
    pal_colour = (pal_images[:, :, 28, 2][:, None, :] == COLOURS[None]).all(-1).float().argmax(1)
    for c in range(10):  # one colour per class, never the class's own
        assert len(pal_colour[pal_labels == c].unique()) == 1 and pal_colour[pal_labels == c][0] != c
    assert len(pal_colour.unique()) == 10


def test_collate_and_image_size(digits):
    test = digits["test"]
    batch = collate([test[i] for i in range(5)])
    assert isinstance(batch, Batch)
    assert batch.images.shape == (5, 3, 32, 32) and batch.labels.dtype == torch.long and len(batch.ids) == 5
    assert set(batch.masks) == {"digit", "square"} and batch.masks["digit"].shape == (5, 32, 32)
    assert batch.masks["digit"].dtype == torch.bool
    # Only mask names every sample has.
    odd = Sample(torch.zeros(3, 32, 32), 1, "x", {"digit": torch.zeros(32, 32, dtype=torch.bool)})
    assert set(collate([test[0], odd]).masks) == {"digit"}
    big = load_dataset("builtin:digits", "test", image_size=64)
    s = big[0]
    assert s.image.shape == (3, 64, 64) and s.masks["digit"].shape == (64, 64)
    assert torch.equal(s.masks["square"][52:, :12], torch.ones(12, 12, dtype=torch.bool)) and s.masks["square"].sum() == 144
    with pytest.raises(InputError, match="different sizes.*image_size"):
        collate([test[0], s])


def test_builtin_errors():
    with pytest.raises(UnknownNameError, match="'builtin:digits'"):
        load_dataset("builtin:digit")
    with pytest.raises(UnknownNameError, match="Did you mean 'builtin:digits-spurious'"):
        load_dataset("builtin:digits-spurios")
    with pytest.raises(InputError, match="no split 'val'.*train, test"):
        load_dataset("builtin:digits", "val")
    with pytest.raises(InputError, match="uncorrelated"):
        load_dataset("builtin:digits", "uncorrelated")
    with pytest.raises(UnknownNameError, match="'folder:'"):
        load_dataset("foldr:/nowhere")
    with pytest.raises(InputError, match="image_size"):
        load_dataset("builtin:digits", image_size=0)


# --- folders ------------------------------------------------------------------------------------

W, H = 30, 20  # the fixture image size (width, height)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _voc(path: Path, boxes, size=(W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    objects = "".join(
        f"<object><name>x</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for a, b, c, d in boxes
    )
    path.write_text(f"<annotation><filename>x</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
                    f"<depth>3</depth></size>{objects}</annotation>")


BOXES = [(5, 3, 12, 8), (21, 11, 30, 20)]  # VOC: 1-based inclusive (xmin, ymin, xmax, ymax)


@pytest.fixture
def folder(tmp_path):
    """root/test/{cat,dog}/*: cat/a.png has a mask PNG, dog/b.png a VOC file with two boxes."""
    root = tmp_path / "set"
    mask = np.zeros((H, W), dtype=bool)
    mask[4:12, 6:18] = True  # even-aligned rectangle
    image = np.zeros((H, W, 3), dtype=np.uint8)
    image[mask] = 255
    _png(root / "test" / "cat" / "a.png", image)
    _png(root / "masks" / "test" / "cat" / "a.png", mask.astype(np.uint8) * 255)
    rng = np.random.default_rng(0)
    _png(root / "test" / "dog" / "b.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    _voc(root / "boxes" / "test" / "dog" / "b.xml", BOXES)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "test" / "dog" / "c.jpg")
    _png(root / "train" / "cat" / "t.png", image)
    return root, mask


def test_folder_round_trip(folder):
    root, mask = folder
    ds = load_dataset(f"folder:{root}", "test")
    assert ds.classes == ["cat", "dog"] and len(ds) == 3
    assert ds.mask_names == ("mask", "box") and ds.default_mask == "mask"
    a, b, c = ds[0], ds[1], ds[2]
    assert [a.id, b.id, c.id] == ["cat/a", "dog/b", "dog/c"] and [a.label, b.label, c.label] == [0, 1, 1]
    assert a.image.shape == (3, H, W) and a.image.dtype == torch.float32
    assert torch.equal(a.masks["mask"], torch.from_numpy(mask)) and a.mask is a.masks["mask"]
    assert torch.equal(a.image[0] > 0.5, torch.from_numpy(mask))
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[2:8, 4:12] = True  # box 1: rows ymin-1..ymax-1, columns xmin-1..xmax-1
    expected[10:20, 20:30] = True
    assert set(b.masks) == {"box"} and torch.equal(b.masks["box"], expected)
    assert b.mask is None and c.masks == {}  # no "mask" annotation for b, none at all for c
    # A bare path works too, and the images are read as written.
    bare = load_dataset(str(root), "test")
    assert torch.equal(bare[1].image, torch.from_numpy(np.array(Image.open(root / "test/dog/b.png"))).permute(2, 0, 1) / 255)


def test_folder_resize_crop_hand_computed(folder):
    root, mask = folder
    ds = load_dataset(f"folder:{root}", "test", image_size=10)
    a, b = ds[0], ds[1]
    # Shorter side 20 -> 10 (scale 1/2): resized 10 x 15, centre crop starts at column round(2.5) = 2.
    # Nearest (pixel centres): output (i, j) reads input (2i + 1, 2(j + 2) + 1).
    want = torch.from_numpy(mask)[1::2, 5::2][:10, :10]
    assert a.masks["mask"].shape == (10, 10) and torch.equal(a.masks["mask"], want)
    assert want.sum() == 4 * 6  # rows 2..5, columns 1..6 of the crop
    assert a.image.shape == (3, 10, 10) and torch.equal(a.image[0] > 0.5, want)  # same geometry as the mask
    # Boxes scaled in original pixel coordinates: box 1 x in [4, 12) -> [2, 6) -> crop [0, 4); y [2, 8) -> [1, 4).
    # Box 2: x [20, 30) -> [10, 15) -> crop [8, 13) (clipped at 10); y [10, 20) -> [5, 10).
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[1:4, 0:4] = True
    expected[5:10, 8:10] = True
    assert torch.equal(b.masks["box"], expected)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch.images.shape == (3, 3, 10, 10) and set(batch.masks) == set()  # no mask all three have


def test_folder_errors_name_the_file(folder):
    root, _ = folder
    with pytest.raises(InputError, match="unknown split 'val'; known splits: test, train"):
        load_dataset(f"folder:{root}", "val")
    (root / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(InputError, match=f"{root / 'empty'}.*no images"):
        load_dataset(f"folder:{root}", "empty")
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(f"folder:{root / 'missing'}")

    bad_image = root / "test" / "cat" / "z.png"
    bad_image.write_bytes(b"not a png at all")
    ds = load_dataset(f"folder:{root}", "test")
    with pytest.raises(InputError, match=r"cannot read image .*z\.png"):
        ds[1]
    bad_image.unlink()

    bad_mask = root / "masks" / "test" / "cat" / "a.png"
    _png(bad_mask, np.zeros((H + 1, W), dtype=np.uint8))
    with pytest.raises(InputError, match=rf"mask .*cat/a\.png is {W}x{H + 1} .*is {W}x{H}"):
        load_dataset(f"folder:{root}", "test")[0]
    bad_mask.unlink()

    bad_xml = root / "boxes" / "test" / "dog" / "b.xml"
    bad_xml.write_text("<annotation><object><bndbox><xmin>1</xmin>")
    with pytest.raises(InputError, match=r"cannot parse box file .*b\.xml"):
        load_dataset(f"folder:{root}", "test")[1]
    _voc(bad_xml, [(1, 1, "a", 3)])
    with pytest.raises(InputError, match=r"b\.xml: box 0 needs numeric"):
        load_dataset(f"folder:{root}", "test")[1]
    _voc(bad_xml, BOXES, size=(W + 2, H))
    with pytest.raises(InputError, match=r"b\.xml is for a 32x20"):
        load_dataset(f"folder:{root}", "test")[1]

    # Different image sizes without image_size: collate says what to do.
    _png(root / "test" / "dog" / "b.png", np.zeros((H, W + 4, 3), dtype=np.uint8))
    _voc(bad_xml, BOXES, size=(W + 4, H))
    ds = load_dataset(f"folder:{root}", "test")
    with pytest.raises(InputError, match="different sizes.*image_size"):
        collate([ds[0], ds[1]])


def test_on_error_skip_counts(folder):
    root, _ = folder
    (root / "test" / "dog" / "x.png").write_bytes(b"garbage")
    (root / "test" / "dog" / "y.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(InputError, match="on_error"):
        load_dataset(f"folder:{root}", "test", on_error="ignore")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(f"folder:{root}", "test", on_error="skip")
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(messages) == 1 and "skipped 2 of 5 images" in messages[0] and "x.png" in messages[0]
    assert len(ds) == 3 and [ds[i].id for i in range(3)] == ["cat/a", "dog/b", "dog/c"]


def test_imagenet_layout(tmp_path):
    root = tmp_path / "ilsvrc"
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(f"imagenet:{root}")
    root.mkdir()
    with pytest.raises(InputError, match=r"val/<wnid>/<name>\.JPEG"):
        load_dataset(f"imagenet:{root}")
    wnids = ["n01440764", "n01443537", "n15075141"]
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} name {i}\n" for i, w in enumerate(wnids)))
    for k, wnid in enumerate(["n01443537", "n15075141"]):
        path = root / "val" / wnid / f"ILSVRC2012_val_{k + 1:08d}.JPEG"
        path.parent.mkdir(parents=True)
        Image.fromarray(np.full((H, W, 3), 100, dtype=np.uint8)).save(path, format="JPEG")
    _voc(root / "val_boxes" / "ILSVRC2012_val_00000001.xml", BOXES)
    ds = load_dataset(f"imagenet:{root}")  # split "test" is an alias of "val"
    assert ds.split == "val" and ds.classes == wnids and len(ds) == 2
    assert [ds[0].label, ds[1].label] == [1, 2]  # indices into the full class list, not the folders present
    assert ds.default_mask == "box" and ds[0].masks["box"].sum() == 6 * 8 + 10 * 10 and "box" not in ds[1].masks
    (root / "val" / "n99999999").mkdir()
    with pytest.raises(InputError, match="n99999999.*not an ImageNet class id"):
        load_dataset(f"imagenet:{root}", "val")
