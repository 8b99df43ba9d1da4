"""Catalog: determinism, distinguishability, realistic marginals, id offsets, JSON round trip."""

import json
from collections import Counter

import pytest

from fedray.pill import catalog as catalog_module
from fedray.pill.catalog import (
    CAPSULE_SHAPES,
    COLOR_NAMES,
    MAX_LENGTH_MM,
    SHAPES,
    CatalogError,
    Pill,
    load_catalog,
    make_catalog,
    save_catalog,
)


@pytest.fixture(scope="module")
def big() -> list[Pill]:
    return make_catalog(2000, seed=0)


def test_same_seed_same_catalog_and_different_seed_differs():
    assert make_catalog(100, seed=3) == make_catalog(100, seed=3)
    assert make_catalog(100, seed=3) != make_catalog(100, seed=4)


def test_prefix_is_stable_when_catalog_grows():
    assert make_catalog(200, seed=5)[:50] == make_catalog(50, seed=5)


def test_ids_follow_offset_and_offsets_are_disjoint():
    private = make_catalog(50, seed=0)
    public = make_catalog(50, seed=0, id_offset=1000)
    assert [p.id for p in private] == list(range(50))
    assert [p.id for p in public] == list(range(1000, 1050))
    assert not {p.id for p in private} & {p.id for p in public}


def test_exclude_makes_public_pills_look_different_from_private():
    private = make_catalog(300, seed=1)
    public = make_catalog(300, seed=1, id_offset=10_000, exclude=private)
    assert not {p.key() for p in private} & {p.key() for p in public}


def test_exclude_faces_keeps_every_face_of_the_excluded_pills_out():
    private = make_catalog(300, 0, 0, (), True)
    faces = {k for p in private for k in p.side_keys()}
    default = make_catalog(300, 0, 300, private, True)
    public = make_catalog(300, 0, 300, private, True, exclude_faces=True)

    assert any(faces.intersection(p.side_keys()) for p in default)  # exclude alone: it does
    assert not any(faces.intersection(p.side_keys()) for p in public)
    assert not {p.key() for p in private} & {p.key() for p in public}
    assert [p.id for p in public] == list(range(300, 600))
    # the default is unchanged by the keyword (the classification/detection catalogs)
    assert make_catalog(300, 0, 300, private, True, exclude_faces=False) == default


def test_no_two_pills_share_identifying_features(big):
    keys = [p.key() for p in big]
    assert len(set(keys)) == len(keys) == 2000


def test_duplicate_draws_are_redrawn_then_give_up(monkeypatch):
    same = make_catalog(1, seed=0)[0]
    monkeypatch.setattr(catalog_module, "_draw_pill", lambda rng, pill_id: same)
    assert len(make_catalog(1, seed=0)) == 1
    with pytest.raises(CatalogError, match="distinct"):
        make_catalog(2, seed=0)


def test_marginals_are_realistic(big):
    shapes = Counter(p.shape for p in big)
    colours = Counter(p.colors[0].name for p in big)
    white = (colours["white"] + colours["off-white"]) / len(big)
    assert 0.38 <= white <= 0.52
    assert 0.35 <= shapes["round"] / len(big) <= 0.45
    assert shapes.most_common(1)[0][0] == "round"
    assert colours.most_common(1)[0][0] == "white"
    assert set(shapes) == set(SHAPES)
    assert set(colours) <= set(COLOR_NAMES) and len(colours) >= 15
    # Many pills share shape and colour and differ only by imprint or size.
    assert Counter((p.shape, p.colors[0].name) for p in big).most_common(1)[0][1] > 200


def test_field_constraints(big):
    for p in big:
        p.validate()
        length, width = p.size_mm
        if p.shape == "round":
            assert 5.0 <= length <= 13.0 and length == width
        if p.shape in CAPSULE_SHAPES:
            assert 14.0 <= length <= MAX_LENGTH_MM
            assert p.score_line == "none" and p.imprint_style == "printed"
        if p.shape == "two_tone_capsule":
            assert len(p.colors) == 2 and p.colors[0].name != p.colors[1].name
        else:
            assert len(p.colors) == 1
        if p.score_line == "cross":
            assert p.shape in ("round", "square") and p.imprint_back == ""
        if p.score_line == "half" and p.imprint_back:
            left, right = p.imprint_back.split(" ")
            assert len(left) <= 2 and len(right) <= 2
        assert len(p.imprint_front) <= 9 and len(p.imprint_back) <= 9
        assert p.name.endswith(" mg")


def test_imprints_are_mostly_present_and_backs_often_blank(big):
    fronts_blank = sum(p.imprint_front == "" for p in big) / len(big)
    backs_blank = sum(p.imprint_back == "" for p in big) / len(big)
    assert fronts_blank < 0.1
    assert 0.35 < backs_blank < 0.7


def test_json_round_trip_is_exact(tmp_path, big):
    path = tmp_path / "sub" / "catalog.json"
    save_catalog(big[:300], path)
    loaded = load_catalog(path)
    assert loaded == big[:300]
    assert json.loads(path.read_text())["format"] == "fedray-catalog-v1"


def test_load_errors_name_the_file_and_entry(tmp_path):
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "missing.json")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"format": "fedray-catalog-v1",\n "pills": [}')
    with pytest.raises(CatalogError, match="line 2"):
        load_catalog(bad_json)
    doc = {"format": "fedray-catalog-v1", "pills": [p.to_dict() for p in make_catalog(3, 0)]}
    doc["pills"][1]["shape"] = "star"
    bad_shape = tmp_path / "catalog.json"
    bad_shape.write_text(json.dumps(doc))
    with pytest.raises(CatalogError, match=r"pills\[1\]: shape='star'"):
        load_catalog(bad_shape)
    del doc["pills"][1]["coating"]
    doc["pills"][1]["shape"] = "round"
    bad_shape.write_text(json.dumps(doc))
    with pytest.raises(CatalogError, match=r"pills\[1\].*coating"):
        load_catalog(bad_shape)


def test_bad_arguments():
    with pytest.raises(CatalogError):
        make_catalog(-1, seed=0)
    assert make_catalog(0, seed=0) == []
