"""Background textures: procedural families, distinctness, bundled images, the user folder."""

import itertools

import cv2
import numpy as np
import pytest

from fedray.pill.textures import (
    FAMILIES,
    TextureError,
    bundled_textures,
    load_user_textures,
    make_textures,
    procedural_texture,
)


def test_make_textures_shapes_and_determinism():
    a = make_textures(count=len(FAMILIES) * 2, size=32, seed=3, bundled=False)
    b = make_textures(count=len(FAMILIES) * 2, size=32, seed=3, bundled=False)
    c = make_textures(count=len(FAMILIES) * 2, size=32, seed=4, bundled=False)
    assert len(a) == 2 * len(FAMILIES)
    assert all(t.shape == (32, 32, 3) and t.dtype == np.uint8 for t in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_113_textures_are_pairwise_distinct():
    textures = make_textures(count=113, size=48, seed=0, bundled=False)
    stack = np.stack(textures).astype(np.float32)  # (113, 48, 48, 3)
    worst = min(float(np.abs(stack[i] - stack[j]).mean())
                for i, j in itertools.combinations(range(len(stack)), 2))
    assert worst > 4.0, f"two textures differ by only {worst:.2f} grey levels on average"


def test_every_family_has_structure_and_differs_by_seed():
    for family in FAMILIES:
        t0 = procedural_texture(family, seed=1, size=64).astype(np.float32)
        t1 = procedural_texture(family, seed=2, size=64).astype(np.float32)
        assert np.abs(t0 - t1).mean() > 1.0, family
        assert t0.std() > 0.5, f"{family} is flat"


def test_unknown_family_is_named():
    with pytest.raises(TextureError, match="velvet"):
        procedural_texture("velvet", seed=0)


def test_bundled_textures_exist_and_are_appended():
    bundled = bundled_textures(size=32)
    assert all(t.shape == (32, 32, 3) and t.dtype == np.uint8 for t in bundled)
    assert len(make_textures(count=2, size=32, bundled=True)) == 2 + len(bundled)


def test_user_dir_loads_images_and_skips_unreadable(tmp_path):
    red = np.zeros((20, 40, 3), np.uint8)
    red[:, :, 2] = 255  # BGR on disk
    cv2.imwrite(str(tmp_path / "a_red.png"), red)
    cv2.imwrite(str(tmp_path / "b_grey.jpg"), np.full((50, 30, 3), 128, np.uint8))
    (tmp_path / "c_broken.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image.*c_broken\.png"):
        out = make_textures(count=1, size=16, user_dir=str(tmp_path), bundled=False)
    assert len(out) == 3
    assert out[1].shape == (16, 16, 3)
    assert np.array_equal(out[1], np.broadcast_to(np.array([255, 0, 0], np.uint8), (16, 16, 3)))
    assert np.abs(out[2].astype(int) - 128).max() <= 2  # JPEG of a flat grey stays grey


def test_missing_user_dir_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(TextureError, match="no_such_folder"):
        load_user_textures(str(missing))


def test_bad_count_is_rejected():
    with pytest.raises(TextureError, match="count"):
        make_textures(count=-1)
