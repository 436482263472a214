"""summary.json `warnings`: each kind from the figures that call for it, none on a clean sweep."""

from __future__ import annotations

import dataclasses

from pipeline_fakes import make_series

from streamer.sweep_warnings import sweep_warnings

INDEXED = {"indexed": True, "lattice": "tP", "status": "indexed"}


def rows(n=40, spots=300, ice=(), overloads=(), dropped=()):
    out = []
    for i in range(n):
        if i in dropped:
            out.append({"image": i, "phi": 0.1 * i + 0.05})
            continue
        out.append({"image": i, "phi": 0.1 * i + 0.05, "n_spots": spots + 5, "n_spots_no_ice": spots,
                    "n_spots_4A": spots // 2,
                    "estimated_d_min": 2.0, "background": 1.0, "n_overloads": 7 if i in overloads else 0,
                    "ice_rings": 2 if i in ice else 0})
    return out


def summary(received=40, processed=40, dropped=None, indexing=INDEXED):
    return {"frames": {"received": received, "processed": processed, "dropped": dropped or {}}, "indexing": indexing}


def kinds(warnings):
    return [w["kind"] for w in warnings]


def test_a_clean_sweep_has_no_warnings():
    assert sweep_warnings(summary(), rows(), make_series(n_images=40)) == []


def test_dropped_frames_name_their_reason_and_what_to_do():
    found = sweep_warnings(summary(processed=37, dropped={"worker_lost": 2, "overload": 1}), rows(dropped=(3, 4, 9)))
    assert kinds(found) == ["frames_dropped", "frames_dropped"]
    assert found[0]["message"] == "2 of 40 frames dropped: worker_lost" and found[0]["image"] is None
    assert "add workers" in found[1]["suggestion"]
    assert set(found[0]) == {"kind", "image", "message", "suggestion"}


def test_images_announced_and_never_received_are_missing_once_the_series_ended():
    series = make_series(n_images=60)
    found = sweep_warnings(summary(), rows(n=40), series)
    assert kinds(found) == ["frames_missing"] and found[0]["message"] == "20 of 60 announced images never arrived"
    assert sweep_warnings(summary(), rows(n=40), series, final=False) == []  # still coming


def test_ice_and_overloads_need_more_than_a_stray_image():
    assert sweep_warnings(summary(), rows(ice=(5, 6), overloads=(1, 2, 3))) == []  # 2 of 40; 3 of 40 < 10%
    found = sweep_warnings(summary(), rows(ice=(5, 6, 30), overloads=(11, 12, 13, 14)))
    assert kinds(found) == ["ice_rings", "overloads"]
    assert found[0]["image"] == 5 and found[0]["message"] == "ice rings on 3 of 40 images"
    assert found[1]["image"] == 11 and "up to 7 per image" in found[1]["message"]


def test_not_indexed_few_spots_and_unusable_geometry():
    not_indexed = {"indexed": False, "status": "not indexed yet: no lattice found"}
    no_distance = dataclasses.replace(make_series(n_images=40), distance_mm=0.0)
    found = sweep_warnings(summary(indexing=not_indexed), rows(spots=4), no_distance)
    assert kinds(found) == ["geometry", "not_indexed", "few_spots"]
    assert "geometry.distance_mm" in found[0]["message"]
    assert found[1]["message"] == "not indexed yet: no lattice found"
    assert found[2]["image"] == 0 and found[2]["message"] == "median 4 spots per image away from ice rings"
    assert sweep_warnings(summary(indexing=not_indexed), [], make_series(n_images=0)) == []  # nothing to say


def test_a_second_lattice_is_reported_with_its_share_of_the_spots():
    second = {"lattice": "tP", "unit_cell": [79.1, 79.1, 38.0, 90, 90, 90], "fraction_indexed": 0.62, "rmsd_px": 0.1}
    found = sweep_warnings(summary(indexing={**INDEXED, "second_lattice": second}), rows())
    assert kinds(found) == ["second_lattice"]
    assert "tP" in found[0]["message"] and "62%" in found[0]["message"]
    assert sweep_warnings(summary(indexing={**INDEXED, "second_lattice": None}), rows()) == []


def test_outputs_written_before_the_stages_finished_are_flagged_once_the_series_ended():
    assert kinds(sweep_warnings(summary(), rows(), stages_finished=False)) == ["stages_unfinished"]
    assert sweep_warnings(summary(), rows(), final=False, stages_finished=False) == []  # still running
