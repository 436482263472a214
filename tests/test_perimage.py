"""The per-image analyser on synthetic frames with known spots, its masks, statistics and bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kernels.radial import bin_map, radial_profile, radial_sums
from streamer import codecs, pipeline_messages, wire
from streamer.config import Config
from streamer.errors import BadFrame
from streamer.ice_rings import detect_ice_rings, ice_ring_d_star_sq, on_ice_rings
from streamer.image_result import ImageResult
from streamer.perimage import ImageAnalyser
from streamer.resolution_estimate import equal_population_bins, estimate_d_min, wilson_outliers
from streamer.series import EncodedFrame, SeriesInfo

SHAPE = (180, 220)


def series(**changes) -> SeriesInfo:
    base = SeriesInfo("test", "simulator", SHAPE, "<u4", n_images=10, pixel_size_mm=(0.172, 0.172),
                      beam_centre_px=(110.0, 90.0), distance_mm=60.0, wavelength_A=1.0, saturation_value=60000,
                      omega_start_deg=10.0, omega_increment_deg=0.5)
    return dataclasses.replace(base, **changes)


def spots_frame(positions, seed=0, background=3.0, height=400.0, sigma=0.8, dtype=np.uint32):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]] + 0.5
    lam = np.full(SHAPE, background)
    for x, y in positions:
        lam += height * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return rng.poisson(lam).astype(dtype)


POSITIONS = [(30.3, 40.7), (150.5, 30.2), (60.8, 150.4), (190.1, 120.9), (100.4, 100.6), (20.6, 160.3)]


@pytest.fixture(scope="module")
def analyser():
    return ImageAnalyser(series(), Config())


def test_finds_known_spots(analyser):
    result = analyser.analyse(spots_frame(POSITIONS), 3)
    assert isinstance(result, ImageResult)
    assert result.n_spots == len(POSITIONS)
    found = np.column_stack([result.spots.x_px, result.spots.y_px])
    for x, y in POSITIONS:
        assert np.min(np.hypot(found[:, 0] - x, found[:, 1] - y)) < 0.25
    np.testing.assert_array_equal(result.spots.z_image, 3.5)
    assert np.all(result.spots.bbox[:, 4] == 3) and np.all(result.spots.bbox[:, 5] == 4)
    assert result.strong_pixels == result.spots.pixel_index.size >= result.spots.n_pixels.sum()
    assert result.phi_deg == pytest.approx(10.0 + 3.5 * 0.5)
    assert 2.5 < result.background < 3.5  # Poisson mean 3 away from the spots
    assert result.n_overloads == 0
    # d-spacings follow the geometry: 1/d = 2 sin(theta) / lambda
    x, y = result.spots.x_px, result.spots.y_px
    r = np.hypot((x - 110.0) * 0.172, (y - 90.0) * 0.172)
    np.testing.assert_allclose(result.spots.d_spacing, 1.0 / (2 * np.sin(np.arctan2(r, 60.0) / 2)), rtol=1e-9)
    assert result.n_spots_4A == int(np.count_nonzero(result.spots.d_spacing > 4))
    # spot intensity is the sum of the raw values of its strong pixels
    assert result.spots.intensity.sum() <= result.spots.pixel_value.sum()


def test_a_ccds_gain_turns_counts_into_photons():
    """A detector counting g ADU per photon (an ADSC CCD: `SeriesInfo.detector_gain`): its
    pixels are thresholded as DIALS does on them divided by g (the same tests with gain g on the
    raw counts, and a global threshold g times higher), and spots and background come out in
    photons. On the same frame, detector gain 2 finds what spotfinding.gain 2 finds, with half
    the intensities; a counter (gain 1) finds more: the dispersion test reads counts as photons."""
    image = spots_frame(POSITIONS, background=6.0) * 2  # two ADU per photon
    ccd = ImageAnalyser(series(detector_gain=2.0), Config()).analyse(image, 0)
    told = Config(spotfinding=Config().spotfinding.model_copy(update={"gain": 2.0}))
    same = ImageAnalyser(series(), told).analyse(image, 0)
    counter = ImageAnalyser(series(), Config()).analyse(image, 0)
    np.testing.assert_array_equal(ccd.spots.pixel_index, same.spots.pixel_index)
    np.testing.assert_array_equal(ccd.spots.x_px, same.spots.x_px)
    np.testing.assert_allclose(ccd.spots.intensity, same.spots.intensity / 2)
    np.testing.assert_allclose(ccd.spots.pixel_value, same.spots.pixel_value / 2)
    assert ccd.background == pytest.approx(same.background / 2) and 5 < ccd.background < 7
    assert ccd.total_intensity == pytest.approx(same.total_intensity / 2)
    assert ccd.n_spots == len(POSITIONS) and counter.strong_pixels > ccd.strong_pixels
    both = Config(spotfinding=Config().spotfinding.model_copy(update={"global_threshold": 30.0}))
    thresholded = ImageAnalyser(series(detector_gain=2.0), both).analyse(image, 0)  # 30 photons: 60 ADU
    assert thresholded.strong_pixels == np.count_nonzero(image.reshape(-1)[ccd.spots.pixel_index] > 60)


def test_find_spots_is_analyse_without_the_statistics(analyser):
    """`find_spots` (what the benchmark and the DIALS comparison time, as `dials.find_spots`
    does) gives the very spots and strong pixels of `analyse`, and refuses the same frames."""
    frame = spots_frame(POSITIONS, seed=4)
    image, spots, n_strong = analyser.find_spots(frame, 2)
    result = analyser.analyse(frame, 2)
    assert n_strong == result.strong_pixels and len(spots) == result.n_spots == len(POSITIONS)
    for name in ("x_px", "y_px", "z_image", "intensity", "n_pixels", "bbox", "variance", "d_spacing",
                 "pixel_index", "pixel_value"):
        np.testing.assert_array_equal(getattr(spots, name), getattr(result.spots, name))
    np.testing.assert_array_equal(image, frame)
    with pytest.raises(BadFrame) as err:
        analyser.find_spots(np.zeros(SHAPE, np.uint32), 0)
    assert err.value.reason == "all_zero"


def test_result_goes_over_the_wire(analyser):
    result = analyser.analyse(spots_frame(POSITIONS, seed=2), 1)
    stats, profiles, spots = pipeline_messages.split_result(result)
    assert stats["n_spots"] == result.n_spots and "radial_profile" in profiles
    assert set(spots) >= {"x_px", "y_px", "z_image", "intensity", "n_pixels", "pixel_index", "pixel_value"}
    fr = pipeline_messages.FrameResult("test", 1, 1, "w", stats=stats, profiles=profiles, spots=spots)
    back = pipeline_messages.result_from(wire.decode(pipeline_messages.encode_result(fr)))
    np.testing.assert_array_equal(back.spots["x_px"], result.spots.x_px)


def test_radial_profile_shape_and_values(analyser):
    result = analyser.analyse(spots_frame(POSITIONS, background=5.0), 0)
    assert result.radial_profile.dtype == np.float32
    assert result.radial_profile.shape == (len(analyser.radial_bin_edges) - 1,)
    filled = np.isfinite(result.radial_profile)
    assert filled.sum() > 5 and abs(np.nanmean(result.radial_profile) - 5.0) < 0.5


@pytest.mark.parametrize("wavelength_a,bin_width", [(0.05, 0.002), (1.0, 1e-6)])
def test_the_radial_profile_of_a_short_wavelength_or_fine_bins_is_bounded(wavelength_a, bin_width):
    """A short wavelength on a detector close by reaches far past 0.25 A (0.05 A here: 29,000 bins
    of 0.002 A^-2; 0.1 A on a 16M at 100 mm: 50,000, past the int16 bin map), and a bin width of
    1e-6 makes millions: the profile stops at 0.25 A and 32767 bins, instead of a set-up error
    that dropped every frame."""
    config = Config.model_validate({"spotfinding": {"radial_bin_width": bin_width}})
    analyser = ImageAnalyser(series(wavelength_A=wavelength_a), config)
    result = analyser.analyse(spots_frame(POSITIONS, background=5.0), 0)
    edges = analyser.radial_bin_edges
    assert len(edges) - 1 <= 32767 and edges[-1] <= 0.25 ** -2 + bin_width
    assert np.isfinite(result.radial_profile).sum() > 5 and result.n_spots == len(POSITIONS)


def test_radial_profile_taken_in_the_pass_as_after_it(analyser):
    """`analyse` takes the radial sums inside the threshold pass (here decoding a bslz4 frame
    band by band, as a worker hands it over): the profile and background are those of
    `radial_sums` over the decoded frame after the pass, spot pixels left out."""
    frame = spots_frame(POSITIONS, seed=6, background=4.0)
    encoded = EncodedFrame("test", 0, SHAPE, "<u4", "bslz4", codecs.encode(frame, "bslz4"))
    out = np.empty(SHAPE, np.uint32)
    for _ in range(2):  # the second frame is decoded inside the pass
        image, source = analyser.prepare(encoded, out)
        result = analyser.analyse(image, 0, source)
    assert analyser.workspace.last_fused and analyser.radial_in_pass.filled
    mean, counts = radial_sums(out, analyser.radial_segments, analyser.workspace.flag, analyser.trusted_range)
    assert result.radial_profile.tobytes() == mean.tobytes()
    assert result.background == float(np.nansum(mean.astype(np.float64) * counts) / counts.sum())
    assert np.count_nonzero(analyser.workspace.flag[::analyser.params.radial_row_step]) > 0


def test_overloads_counted_and_excluded(analyser):
    image = spots_frame(POSITIONS)
    image[10:12, 200:202] = 60000  # at saturation: invalid, counted
    result = analyser.analyse(image, 0)
    assert result.n_overloads == 4
    saturated = [10 * 220 + 200, 10 * 220 + 201, 11 * 220 + 200, 11 * 220 + 201]
    assert not np.any(np.isin(result.spots.pixel_index, saturated))  # never strong, never summed
    assert result.n_spots == len(POSITIONS)


@pytest.mark.parametrize("dtype,series_dtype", [(np.uint16, "<u2"), (np.int32, "<i4"), (np.float32, "<f4")])
def test_other_dtypes(dtype, series_dtype):
    an = ImageAnalyser(series(dtype=series_dtype), warm_up=False)
    assert an.analyse(spots_frame(POSITIONS, dtype=dtype), 0).n_spots == len(POSITIONS)


def test_bad_frames_raise_with_reasons(analyser):
    good = spots_frame(POSITIONS)
    cases = {
        "wrong_shape": good[:, :100],
        "wrong_dtype": good.astype(np.uint16),
        "all_zero": np.zeros(SHAPE, np.uint32),
        "all_saturated": np.full(SHAPE, 60000, np.uint32),
    }
    for reason, image in cases.items():
        with pytest.raises(BadFrame) as err:
            analyser.analyse(image, 0)
        assert err.value.reason == reason
    an = ImageAnalyser(series(dtype="<f4"), warm_up=False)
    bad = good.astype(np.float32)
    bad[3, 3] = np.nan
    with pytest.raises(BadFrame) as err:
        an.analyse(bad, 0)
    assert err.value.reason == "nan_pixels"
    noisy = np.random.default_rng(1).integers(0, 50000, SHAPE).astype(np.uint32)
    noisy[::2] = 0
    with pytest.raises(BadFrame) as err:
        analyser.analyse(noisy, 0)
    assert err.value.reason == "too_many_strong_pixels"
    assert analyser.analyse(good, 0).n_spots == len(POSITIONS)  # and it carries on


def test_ice_ring_membership():
    rings = 1.0 / np.sqrt(ice_ring_d_star_sq(1.5))
    assert np.any(np.abs(rings - 3.897) < 0.01) and np.any(np.abs(rings - 3.669) < 0.01)
    assert np.any(np.abs(rings - 2.249) < 0.01)
    d = np.array([3.90, 3.67, 3.0, 2.5, 10.0, np.inf])
    assert list(on_ice_rings(d)) == [True, True, False, False, False, False]


def test_ice_ring_detection_from_profile():
    edges = np.arange(0, 0.4, 0.002)
    centres = 0.5 * (edges[1:] + edges[:-1])
    counts = np.full(centres.size, 1000)
    profile = np.full(centres.size, 10.0, dtype=np.float32)
    assert detect_ice_rings(profile, counts, edges) == ()
    ring = 1 / 3.669**2
    profile[np.abs(centres - ring) < 0.002] = 20.0
    assert detect_ice_rings(profile, counts, edges) == (3.669,)


def test_read_noise_on_a_low_background_is_not_ice():
    """A CCD's counts less its pedestal: a background of 0.2 photons with 1 photon of read noise
    (Gaussian). Poisson's noise of the shells' means alone made every fluctuation of a ring
    shell look like ice (11 rings over 5 such images); the profile's bin-to-bin scatter shows
    the extra variance. A ring of 0.5 photons per pixel over the same noise still shows."""
    shape = (1024, 1024)
    info = SeriesInfo("ccd", "smv", shape, "<i4", pixel_size_mm=(0.1, 0.1), beam_centre_px=(512.0, 512.0),
                      distance_mm=120.0, wavelength_A=1.0, saturation_value=65000, underload_value=-40,
                      detector_type="CCD")
    analyser = ImageAnalyser(info, Config())
    rng = np.random.default_rng(0)
    for k in range(3):
        noise = rng.poisson(0.2, shape) + np.round(rng.normal(0.0, 1.0, shape))
        assert analyser.analyse(noise.astype(np.int32), k).ice_rings == 0
    d = analyser.resolution_map
    ring = np.abs(1.0 / d**2 - 1.0 / 3.669**2) < 0.001
    noise = rng.poisson(0.2 + 0.5 * ring) + np.round(rng.normal(0.0, 1.0, shape))
    assert analyser.analyse(noise.astype(np.int32), 3).ice_rings >= 1


def test_ice_ring_detection_at_a_background_of_a_few_photons():
    """Where the background is a few photons per shell (high resolution, low dose), a handful
    of photons more in the ring shell than in its sides is noise, not ice (the side shells'
    mean alone made 0 photons against 4 a 60-sigma ring); a ring of a tenth of a photon per
    pixel over such a background still shows."""
    edges = np.arange(0, 0.4, 0.002)
    centres = 0.5 * (edges[1:] + edges[:-1])
    counts = np.full(centres.size, 350)
    ring = np.abs(centres - 1 / 2.249**2) < 0.002  # two bins: 700 pixels; side shells: 1400
    profile = np.zeros(centres.size, dtype=np.float32)
    profile[ring] = 2.0 / 350  # 4 photons in the ring shell, none beside it
    assert detect_ice_rings(profile, counts, edges) == ()
    profile[:] = 0.05
    profile[ring] = 0.15
    assert detect_ice_rings(profile, counts, edges) == (2.249,)


def test_resolution_estimate_pieces():
    bins = equal_population_bins(np.linspace(0.01, 0.3, 100))
    assert len(bins) == 5 and bins[0][1] > bins[0][0] > bins[1][0]
    intensity = np.array([1.0, 1.0, 1.0, 1.0, 400.0])
    assert list(wilson_outliers(intensity, np.zeros(5, bool))) == [False, False, False, False, True]
    # falling I/sigma with resolution gives an estimate inside the data range
    rng = np.random.default_rng(0)
    d = rng.uniform(1.5, 10, 300)
    intensity = 5000 * np.exp(-20 / d**2 * 4) * rng.lognormal(0, 0.3, 300)
    est = estimate_d_min(d, intensity)
    assert 1.5 <= est < 4.0
    assert estimate_d_min(d[:1], intensity[:1]) == -1.0


def test_radial_kernel_against_numpy():
    rng = np.random.default_rng(3)
    image = rng.poisson(4, (31, 29)).astype(np.uint16)
    mask = (rng.random(image.shape) > 0.1).astype(np.uint8)
    exclude = (rng.random(image.shape) > 0.9).astype(np.uint8)
    ds2 = rng.random(image.shape) * 0.1
    edges = np.linspace(0, 0.1, 11)
    bins = bin_map(ds2, edges)
    for step in (1, 3):
        mean, counts = radial_profile(image, mask, bins, 10, exclude, (-1, 5), step)
        rows = np.zeros(image.shape, bool)
        rows[::step] = True
        use = rows & (mask == 1) & (exclude == 0) & (image < 5)
        for b in range(10):
            sel = use & (bins == b)
            assert counts[b] == sel.sum()
            if sel.any():
                assert mean[b] == pytest.approx(image[sel].mean(), rel=1e-6)


def test_ice_ring_detection_from_spot_density():
    edges = np.arange(0, 0.4, 0.002)
    counts = np.full(edges.size - 1, 1000)
    profile = np.full(edges.size - 1, 10.0, dtype=np.float32)
    rng = np.random.default_rng(2)
    uniform = 1.0 / np.sqrt(rng.uniform(0.01, 0.35, 2000))  # protein spots, no rings
    assert detect_ice_rings(profile, counts, edges, spot_d=uniform) == ()
    ring = 1.0 / np.sqrt(1 / 2.249**2 + rng.uniform(-0.0015, 0.0015, 60))
    assert detect_ice_rings(profile, counts, edges, spot_d=np.concatenate([uniform, ring])) == (2.249,)


def test_a_cluster_of_bragg_spots_on_a_ring_is_not_ice():
    """Spots of one image cluster (a Laue zone crossing an ice shell): 11 in the ring shell and
    4 beside it (simulated R 3, no ice) is a binomial 3.3 sigma, no ring; 20 against 1 is."""
    edges = np.arange(0, 0.4, 0.002)
    counts = np.full(edges.size - 1, 1000)  # side shells: twice the ring shell's pixels
    profile = np.full(edges.size - 1, 10.0, dtype=np.float32)
    rng = np.random.default_rng(3)
    ring = 1 / 3.897**2

    def spots(n_in, n_side):
        inner = ring + rng.uniform(-0.0015, 0.0015, n_in)
        side = ring + rng.choice([-1, 1], n_side) * rng.uniform(0.0025, 0.0055, n_side)
        return 1.0 / np.sqrt(np.concatenate([inner, side]))

    assert detect_ice_rings(profile, counts, edges, spot_d=spots(11, 4)) == ()
    assert detect_ice_rings(profile, counts, edges, spot_d=spots(20, 1)) == (3.897,)


def test_set_up_is_reused_for_a_series_of_the_same_detector(analyser):
    """A new series of the same detector and geometry reuses the set-up (its own phi); a
    changed beam centre, sensor or pixel mask does not."""
    frame = spots_frame(POSITIONS)
    again = analyser.reuse_for(series(series_id="next", omega_start_deg=50.0))
    assert again is not None and again.series.series_id == "next"
    first, second = analyser.analyse(frame, 2), again.analyse(frame, 2)
    assert second.phi_deg == pytest.approx(50.0 + 2.5 * 0.5)
    np.testing.assert_array_equal(first.spots.x_px, second.spots.x_px)
    fresh = ImageAnalyser(series(series_id="next", omega_start_deg=50.0), Config()).analyse(frame, 2)
    np.testing.assert_array_equal(fresh.spots.pixel_index, second.spots.pixel_index)
    assert analyser.reuse_for(series(beam_centre_px=(100.0, 90.0))) is None
    assert analyser.reuse_for(series(sensor_material="CdTe", sensor_thickness_mm=1.0)) is None  # parallax
    mask = np.zeros(SHAPE, dtype=np.uint32)
    mask[5, 5] = 1
    assert analyser.reuse_for(series(pixel_mask=mask)) is None


def test_warm_up_compiles_what_frames_use():
    """After set-up no frame compiles: the warm-up uses the series' own kinds of arrays (the
    mask is read-only, which numba compiles apart) and every threshold pass."""
    import importlib
    import pkgutil

    import kernels
    from numba.core.registry import CPUDispatcher

    mask = np.zeros(SHAPE, dtype=np.uint32)
    mask[:, 100:104] = 1
    mask.setflags(write=False)
    an = ImageAnalyser(series(dtype="<u2", pixel_mask=mask), Config())
    compiled = [getattr(module, name) for info in pkgutil.iter_modules(kernels.__path__)
                for module in [importlib.import_module(f"kernels.{info.name}")] for name in dir(module)
                if isinstance(getattr(module, name), CPUDispatcher)]
    before = {k: len(k.signatures) for k in compiled}
    for seed, background in ((0, 0.3), (1, 40.0)):  # a quiet and a noisy frame: both passes
        an.analyse(spots_frame(POSITIONS, seed=seed, background=background, dtype=np.uint16), 0)
    out = np.empty(SHAPE, dtype="<u2")
    for seed, background in ((0, 0.3), (2, 0.3), (1, 40.0)):  # as a worker gets them: decoded in the pass too
        frame = spots_frame(POSITIONS, seed=seed, background=background, dtype=np.uint16)
        encoded = EncodedFrame("s", 0, SHAPE, "<u2", "bslz4", codecs.encode(frame, "bslz4"))
        image, source = an.prepare(encoded, out)
        an.analyse(image, 0, source)
    grown = [k.__name__ for k in compiled if len(k.signatures) != before[k]]
    assert not grown, f"compiled on a frame: {grown}"


@pytest.mark.parametrize("kernel_size", [(4, 4), (5, 5)])
def test_large_kernel_windows_set_up_and_find_spots(kernel_size):
    """Windows of 64 pixels or more have no packed pass: set-up (which warms every pass a frame
    may take) skips it, and frames, decoded in the pass or before it, still give the spots."""
    config = Config.model_validate({"spotfinding": {"kernel_size": list(kernel_size)}})
    an = ImageAnalyser(series(), config)
    frame = spots_frame(POSITIONS)
    direct = an.analyse(frame, 0)
    assert direct.n_spots == len(POSITIONS)
    encoded = EncodedFrame("s", 0, SHAPE, "<u4", "bslz4", codecs.encode(frame, "bslz4"))
    image, source = an.prepare(encoded, np.empty(SHAPE, dtype="<u4"))
    in_pass = an.analyse(image, 0, source)
    np.testing.assert_array_equal(in_pass.spots.pixel_index, direct.spots.pixel_index)
