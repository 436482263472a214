"""The incremental indexer: when it tries, what it reports while not indexed (bad input), that it
re-refines as the sweep grows, runs in a background thread, and feeds the collector as a stage."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
from indexing_helpers import misorientation_deg, simulated_spots, sweep_experiment

from streamer.config import IndexingConfig
from streamer.geometry import Detector
from streamer.indexing import IncrementalIndexer
from streamer.indexing.stage import IndexingStage
from streamer.indexing.rlp import Spots
from streamer.series import SeriesInfo

CELL = (78.9, 78.9, 36.9, 90, 90, 90)


def _by_image(spots: Spots, n_images: int):
    image = np.floor(spots.z_image).astype(int)
    for i in range(n_images):
        sel = image == i
        yield i, {"x_px": spots.x_px[sel], "y_px": spots.y_px[sel], "z_image": spots.z_image[sel]}


def _feed(indexer, spots, n_images):
    updates = []
    for i, table in _by_image(spots, n_images):
        indexer.add_spots(table, images_seen=i + 1)
        update = indexer.step()
        if update is not None:
            updates.append(update)
    return updates


def test_indexes_after_min_degrees_and_re_refines():
    truth = sweep_experiment(CELL, "P 43 21 2", n_images=30, width=0.5)
    spots = simulated_spots(truth, missing=0.1, outliers=0.02)
    config = IndexingConfig(min_images=5, min_degrees=3.0, retry_every_images=2, refine_every_images=10,
                            scan_varying_block_deg=2.5)
    indexer = IncrementalIndexer(truth.replace(crystal=None), config)
    assert indexer.status().startswith("not indexed yet: waiting for data")
    updates = _feed(indexer, spots, 30)
    # the first attempt waits until the spots span 3 degrees: image 7 (spots of images 0-6)
    assert updates[0].kind == "indexed" and updates[0].image == 7
    assert [u.kind for u in updates[1:]] == ["refined", "refined"]  # images 17 and 27
    final = indexer.summary()
    assert final["indexed"] and final["lattice"] == "tP" and final["space_group"] == "P 4 2 2"
    np.testing.assert_allclose(final["unit_cell"][:3], [78.9, 78.9, 36.9], rtol=5e-4)
    assert misorientation_deg(truth.crystal.A_matrix, np.array(final["UB"])) < 0.05
    assert final["rmsd_px"] < 0.5 and final["fraction_indexed"] > 0.85
    sv = final["scan_varying"]  # blocks of 5 images; a static crystal: rotations stay near zero
    assert sv["block_images"] == 5 and np.abs(sv["rotations_mrad"]).max() < 0.5
    assert sv["rmsd_px"] < 0.5
    model = updates[-1].model()
    assert model["experiment"]["crystal"] is not None and model["update"] == "refined"
    assert all(seconds < 10 for _, seconds in indexer.timings)


def _status_after(spots: Spots, n_images=10, experiment=None):
    truth = experiment or sweep_experiment(CELL, "P 43 21 2", n_images=n_images, width=0.5)
    indexer = IncrementalIndexer(truth.replace(crystal=None), IndexingConfig(retry_every_images=2))
    _feed(indexer, spots, n_images)
    return indexer


def test_too_few_spots_keeps_trying():
    truth = sweep_experiment(CELL, "P 43 21 2", n_images=10, width=0.5)
    spots = simulated_spots(truth)
    few = spots.select(np.argsort(spots.z_image)[np.linspace(0, len(spots) - 1, 12).astype(int)])  # over 5 deg
    indexer = _status_after(few)
    assert indexer.status().startswith("not indexed yet: too few spots (") and "< 20)" in indexer.status()
    assert indexer.n_attempts >= 2  # retried as images came
    s = indexer.summary()
    assert s["indexed"] is False and s["unit_cell"] is None and s["UB"] is None


def test_noise_and_ice_rings_are_not_indexed():
    rng = np.random.default_rng(0)
    n = 2000
    noise = Spots(rng.uniform(0, 1024, n), rng.uniform(0, 1024, n), rng.uniform(0, 10, n))
    indexer = _status_after(noise)
    assert indexer.status().startswith("not indexed yet: no lattice found")
    assert indexer.summary()["indexed"] is False
    # ice: spots on the hexagonal-ice powder rings only (d = 3.90, 3.67, 3.44, 2.67, 2.25 A)
    d = rng.choice([3.897, 3.669, 3.441, 2.671, 2.249], n)
    radius = 150.0 * np.tan(2 * np.arcsin(1.0 / (2 * d))) / 0.172
    azimuth = rng.uniform(0, 2 * np.pi, n)
    ice = Spots(513 + radius * np.cos(azimuth), 513 + radius * np.sin(azimuth), rng.uniform(0, 10, n))
    indexer = _status_after(ice)
    assert indexer.model is None and indexer.status().startswith("not indexed yet")


def test_wrong_beam_centre_and_distance_are_recovered():
    truth = sweep_experiment(CELL, "P 43 21 2", n_images=10, width=0.5)
    spots = simulated_spots(truth)
    for centre, distance in (((519.0, 507.0), 150.0), ((513.0, 513.0), 154.5)):  # 8.5 px; +3 %
        wrong = truth.replace(detector=Detector.from_beam_centre(centre, distance, (0.172, 0.172), (1024, 1024)))
        indexer = _status_after(spots, experiment=wrong)
        s = indexer.summary()
        assert s["indexed"], s["status"]
        np.testing.assert_allclose(s["unit_cell"][:3], [78.9, 78.9, 36.9], rtol=1e-3)
        det = indexer.model.experiment.detector
        np.testing.assert_allclose(det.beam_centre_px(truth.beam), (513.0, 513.0), atol=0.1)
        assert abs(det.distance_mm - 150.0) < 0.15


def test_step_runs_in_a_background_thread():
    truth = sweep_experiment(CELL, "P 43 21 2", n_images=10, width=0.5)
    indexer = IncrementalIndexer(truth.replace(crystal=None), IndexingConfig())
    indexer.add_spots(simulated_spots(truth), images_seen=10)
    out = []
    worker = threading.Thread(target=lambda: out.append(indexer.step()))
    worker.start()
    worker.join(timeout=60)
    assert out and out[0] is not None and out[0].kind == "indexed"


def test_collector_stage_joins_pixels_and_publishes_a_model():
    truth = sweep_experiment(CELL, "P 43 21 2", n_images=12, width=0.5)
    spots = simulated_spots(truth, noise_px=0.0, noise_images=0.0)
    series = SeriesInfo("s1", "simulator", (1024, 1024), "<u2", n_images=12, pixel_size_mm=(0.172, 0.172),
                        beam_centre_px=(513.0, 513.0), distance_mm=150.0, wavelength_A=1.0,
                        omega_start_deg=0.0, omega_increment_deg=0.5)
    config = SimpleNamespace(indexing=IndexingConfig(min_images=6, min_degrees=3.0), spotfinding=None)
    stage = IndexingStage(series, config)
    image = np.floor(spots.z_image).astype(int)
    models = []
    for i in range(12):
        sel = image == i
        x, y = np.floor(spots.x_px[sel]).astype(int), np.floor(spots.y_px[sel]).astype(int)
        pix = []
        for dx in (-1, 0, 1):  # a 3 x 3 block of strong pixels per spot
            for dy in (-1, 0, 1):
                pix.append(np.clip(y + dy, 0, 1023) * 1024 + np.clip(x + dx, 0, 1023))
        index = np.unique(np.concatenate(pix)) if pix else np.zeros(0, np.int64)
        result = SimpleNamespace(image_number=i, spots={"pixel_index": index, "pixel_value": np.full(len(index), 50.0)})
        stage.add(series, result)
        model = stage.take_model()
        if model is not None:
            models.append(model)
    assert models and models[0]["indexed"] and models[0]["lattice"] == "tP"
    import json

    json.dumps(models[0])  # plain types only: it goes over the model channel and into summary.json
    summary = stage.finish()["indexing"]
    assert summary["indexed"] and summary["unit_cell"][0] > 78 and summary["unit_cell"][0] < 80


def test_a_sweep_that_ends_short_of_min_degrees_is_tried_at_its_end():
    """A 2-degree wedge (a screening sweep) never reaches the 3 degrees the first attempt waits
    for while images arrive; once the series ends, its spots are all there is: tried then."""
    truth = sweep_experiment(CELL, "P 43 21 2", n_images=8, width=0.25)
    spots = simulated_spots(truth, missing=0.1, outliers=0.02)
    indexer = IncrementalIndexer(truth.replace(crystal=None), IndexingConfig(min_images=5, min_degrees=3.0))
    assert _feed(indexer, spots, 8) == []
    assert indexer.status().startswith("not indexed yet: waiting for data")
    indexer.complete = True  # what `IndexingStage.finish` sets
    update = indexer.step()
    assert update is not None and update.kind == "indexed"
    final = indexer.summary()
    assert final["indexed"] and final["lattice"] == "tP"
    np.testing.assert_allclose(final["unit_cell"][:3], [78.9, 78.9, 36.9], rtol=2e-3)


def test_stills_are_indexed_one_image_at_a_time():
    from streamer.geometry import Scan
    from streamer.prediction import miller_indices

    truth = sweep_experiment(CELL, "P 43 21 2", n_images=1, width=0.0)
    truth = truth.replace(scan=Scan(1, 0.0, 0.0))
    hkl = miller_indices(truth.crystal, 2.0)
    q = hkl @ truth.crystal.A_matrix.T
    s1 = truth.beam.s0 + q
    near = np.abs(np.linalg.norm(s1, axis=1) - 1.0) < 0.002  # reflections close to the Ewald sphere
    x, y, on = truth.detector.lab_to_pixel(s1[near])
    indexer = IncrementalIndexer(truth.replace(crystal=None), IndexingConfig())
    indexer.add_spots({"x_px": x[on], "y_px": y[on], "z_image": np.full(on.sum(), 0.5)}, images_seen=1)
    update = indexer.step()
    assert update is not None and update.result.lattice == "tP", indexer.status()
    np.testing.assert_allclose(sorted(update.result.unit_cell[:3]), [36.9, 78.9, 78.9], rtol=5e-3)
    assert indexer.summary()["stills_indexed"] == 1
    assert indexer.step() is None  # nothing new


@pytest.mark.parametrize("fraction, most_calls", [(0.2, 3), (1.0, 20)])
def test_stage_keeps_indexing_within_its_cpu_budget(monkeypatch, fraction, most_calls):
    """A crystal that does not index must not starve the receiver: after an attempt of t
    seconds the stage waits t (1/f - 1) before the next (images keep being joined)."""
    import time as _time

    series = SeriesInfo("s1", "simulator", (64, 64), "<u2", n_images=20, pixel_size_mm=(0.172, 0.172),
                        beam_centre_px=(32.0, 32.0), distance_mm=150.0, wavelength_A=1.0,
                        omega_start_deg=0.0, omega_increment_deg=0.5)
    stage = IndexingStage(series, SimpleNamespace(indexing=IndexingConfig(max_cpu_fraction=fraction),
                                                  spotfinding=None))
    calls = []
    monkeypatch.setattr(stage.indexer, "due", lambda: "index")
    monkeypatch.setattr(stage.indexer, "step", lambda: calls.append(_time.sleep(0.03)))
    for i in range(20):
        stage.add(series, SimpleNamespace(image_number=i, spots={"pixel_index": np.zeros(0, np.int64),
                                                                 "pixel_value": np.zeros(0, np.float32)}))
    assert 1 <= len(calls) <= most_calls
    assert stage.held == 20 - len(calls) if fraction < 1 else stage.held == 0


def test_a_sweep_that_does_not_index_gathers_its_spots_only_for_attempts(monkeypatch):
    """Before the first attempt the spots' span decides when to try (all spots, each image);
    after it, the spots so far are gathered for each attempt only: gathering them on every
    image cost O(spots), 26 ms per image 300,000 spots into a sweep that never indexes."""
    series = SeriesInfo("s1", "simulator", (64, 64), "<u2", n_images=40, pixel_size_mm=(0.172, 0.172),
                        beam_centre_px=(32.0, 32.0), distance_mm=150.0, wavelength_A=1.0,
                        omega_start_deg=0.0, omega_increment_deg=0.5)
    config = IndexingConfig(min_images=5, min_degrees=2.0, retry_every_images=10, max_cpu_fraction=1.0)
    stage = IndexingStage(series, SimpleNamespace(indexing=config, spotfinding=None))
    gathered, attempts = [], []
    real_spots, real_step = stage.joiner.spots, stage.indexer.step
    monkeypatch.setattr(stage.joiner, "spots", lambda: gathered.append(stage.indexer.images_seen) or real_spots())
    monkeypatch.setattr(stage.indexer, "step", lambda: attempts.append(stage.indexer.images_seen) or real_step())
    rng = np.random.default_rng(3)
    for i in range(40):  # a few random spots per image: nothing to index
        pixels = np.unique(rng.integers(0, 64 * 64 - 65, 4))
        pixels = np.unique(np.concatenate([pixels, pixels + 1, pixels + 64, pixels + 65]))
        values = np.full(pixels.size, 50.0, np.float32)
        stage.add(series, SimpleNamespace(image_number=i, spots={"pixel_index": pixels, "pixel_value": values}))
    assert len(attempts) >= 2 and stage.indexer.model is None
    assert [n for n in gathered if n > attempts[0]] == attempts[1:]  # once per attempt, not per image


def test_the_second_lattice_search_says_what_it_looked_for(caplog):
    """After a model is accepted the search among its leftovers logs its own outcome, not an
    'indexing attempt failed' that reads as if the crystal was not indexed."""
    truth = sweep_experiment(CELL, "P 43 21 2", n_images=20, width=0.5)
    spots = simulated_spots(truth, missing=0.1, outliers=0.1)
    config = IndexingConfig(min_images=5, min_degrees=3.0, retry_every_images=2, second_lattice=True)
    indexer = IncrementalIndexer(truth.replace(crystal=None), config)
    with caplog.at_level("INFO", logger="streamer.indexing"):
        updates = _feed(indexer, spots, 20)
    assert updates[0].kind == "indexed" and indexer.second is None
    messages = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert any(m.startswith("no second lattice among the") for m in messages)
    assert not any("attempt failed" in m for m in messages)


def test_a_series_without_geometry_is_joined_but_not_indexed():
    """No wavelength in the header (stream v1 with no detail): the spots are joined for
    spots.csv and the indexing status says why there is no attempt (the set-up raised before)."""
    import dataclasses

    from pipeline_fakes import make_series

    from streamer.config import Config

    series = dataclasses.replace(make_series(n_images=3), wavelength_A=0.0)
    stage = IndexingStage(series, Config())
    for i in range(3):
        spots = {"x_px": np.array([10.5], "<f4"), "y_px": np.array([20.5], "<f4"), "intensity": np.array([50.0], "<f4"),
                 "n_pixels": np.array([4], "<i4")}
        stage.add(series, SimpleNamespace(image_number=i, spots=spots))
    out = stage.finish()
    assert out["indexing"]["indexed"] is False and "wavelength 0.0 A" in out["indexing"]["status"]
    assert stage.take_model() is None


def test_when_every_spot_fails_the_strongest_index_alone():
    """A very mosaic crystal: most joined spots are weak fragments whose rotation centroids fit
    no lattice (here: three random spots for each true one), and every spot together does not
    index. The strongest quarter does; the indexer keeps using that quarter and says so. Noise
    with intensities stays unindexed."""
    rng = np.random.default_rng(2)
    truth = sweep_experiment(CELL, "P 43 21 2", n_images=20, width=0.5)
    good = simulated_spots(truth)
    n = 3 * len(good)
    junk = Spots(rng.uniform(0, 1024, n), rng.uniform(0, 1024, n), rng.uniform(0, 20, n))
    spots = Spots.concatenate([good, junk])
    intensity = np.concatenate([rng.uniform(500, 5000, len(good)), rng.uniform(10, 400, n)])
    spots = Spots(spots.x_px, spots.y_px, spots.z_image, intensity=intensity)
    without = IncrementalIndexer(truth.replace(crystal=None), IndexingConfig())
    without.add_spots({"x_px": spots.x_px, "y_px": spots.y_px, "z_image": spots.z_image}, images_seen=20)
    without.complete = True
    assert without.step() is None and without.model is None  # every spot alone: no lattice
    indexer = IncrementalIndexer(truth.replace(crystal=None), IndexingConfig())
    indexer.add_spots({"x_px": spots.x_px, "y_px": spots.y_px, "z_image": spots.z_image, "intensity": intensity},
                      images_seen=20)
    indexer.complete = True
    update = indexer.step()
    assert update is not None and update.kind == "indexed"
    final = indexer.summary()
    assert final["lattice"] == "tP" and final["spots_used"] == "strongest 25% by intensity"
    np.testing.assert_allclose(final["unit_cell"][:3], [78.9, 78.9, 36.9], rtol=1e-3)
    assert misorientation_deg(truth.crystal.A_matrix, np.array(final["UB"])) < 0.05
    indexer.last_refine_image = -100  # a re-refinement uses the same quarter
    assert indexer.step().kind == "refined" and indexer.summary()["n_spots"] == len(good)
    noise = IncrementalIndexer(truth.replace(crystal=None), IndexingConfig())
    noise.add_spots({"x_px": junk.x_px, "y_px": junk.y_px, "z_image": junk.z_image,
                     "intensity": rng.uniform(10, 5000, n)}, images_seen=20)
    noise.complete = True
    assert noise.step() is None and noise.summary()["spots_used"] == "all"
    assert noise.status().startswith("not indexed: no lattice found")  # the sweep has ended: no "yet"


def _mosaic_like(seed=2, junk_strong=False):
    """True spots among three times as many fragments (random centroids): intensities, and the
    fragments flagged as cut by the sweep's start when `junk_strong` makes them the strongest."""
    rng = np.random.default_rng(seed)
    truth = sweep_experiment(CELL, "P 43 21 2", n_images=20, width=0.5)
    good = simulated_spots(truth)
    n = 3 * len(good)
    junk = Spots(rng.uniform(0, 1024, n), rng.uniform(0, 1024, n), rng.uniform(0, 20, n))
    spots = Spots.concatenate([good, junk])
    weak, strong = rng.uniform(10, 400, n), rng.uniform(500, 5000, len(good))
    intensity = np.concatenate([strong, 10 * strong.max() + weak]) if junk_strong else np.concatenate([strong, weak])
    refine = np.concatenate([np.ones(len(good), bool), np.zeros(n, bool) if junk_strong else np.ones(n, bool)])
    table = {"x_px": spots.x_px, "y_px": spots.y_px, "z_image": spots.z_image, "intensity": intensity,
             "refine": refine}
    return truth, good, table


def test_the_strongest_are_tried_only_after_enough_rotation_and_never_the_cut_ones(monkeypatch):
    """Early in a sweep every spot failing only means too little rotation so far: the strongest
    alone are not tried before STRONGEST_MIN_DEGREES (they once gave a strained oC cell at 3
    degrees). And the strongest are taken among the spots that may enter refinement: the
    longest finished spots early on are those cut by the sweep's start, with biased centroids."""
    import streamer.indexing.incremental as incremental

    truth, good, table = _mosaic_like(junk_strong=True)
    monkeypatch.setattr(incremental, "STRONGEST_MIN_DEGREES", 100.0)
    indexer = IncrementalIndexer(truth.replace(crystal=None), IndexingConfig())
    indexer.add_spots(table, images_seen=20)
    assert indexer.step() is None and indexer.n_attempts == 1  # 10 degrees < 100: every spot only
    indexer.complete, indexer.last_attempt_image = True, None  # the sweep has ended: the strongest now
    update = indexer.step()
    assert update is not None and indexer.summary()["spots_used"] == "strongest 25% by intensity"
    # a quarter of the spots that may enter refinement: the strong fragments cut by the start are left out
    assert indexer.summary()["n_spots"] == round(0.25 * len(good))


def test_a_model_from_the_strongest_refines_with_every_spot_once_they_fit():
    truth, good, table = _mosaic_like()
    indexer = IncrementalIndexer(truth.replace(crystal=None), IndexingConfig())
    indexer.add_spots(table, images_seen=20)
    indexer.complete = True
    assert indexer.step().kind == "indexed" and indexer.strongest == 0.25
    indexer.set_spots({"x_px": good.x_px, "y_px": good.y_px, "z_image": good.z_image,
                       "intensity": np.ones(len(good))})  # the fragments gone: every spot fits
    indexer.last_refine_image = -100
    assert indexer.step().kind == "refined"
    summary = indexer.summary()
    assert summary["spots_used"] == "all" and summary["n_spots"] == len(good) and summary["fraction_indexed"] > 0.9
