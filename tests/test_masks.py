"""The analyser's masks: the detector's flagged pixels, user masks, resolution limits, the
header's pixel mask (`streamer.masks`, as `ImageAnalyser` sets them up)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import needs_dials
from test_perimage import POSITIONS, SHAPE, series, spots_frame

from streamer.config import Config, MaskConfig
from streamer.errors import BadFrame
from streamer.masks import SeriesMask, inactive_value, module_gap_mask, user_mask
from streamer.perimage import ImageAnalyser


def test_dectris_flagged_pixels_are_not_overloads():
    """A DECTRIS stream sent without its pixel mask (header detail "basic"): the detector gives
    the pixels the mask flags its all-ones value. They are invalid, never strong, and not
    reported as saturated; pixels above the count cutoff still are."""
    image = spots_frame(POSITIONS)
    image[:, 120:123] = 0xFFFFFFFF  # a module gap
    image[10:12, 200:202] = 60000  # at the count cutoff: saturated
    for source in ("stream-v2", "stream-v1", "simulator"):
        result = ImageAnalyser(series(source=source), Config()).analyse(image, 0)
        assert result.n_overloads == 4, source
        assert result.n_spots == len(POSITIONS)
        assert not np.any(result.spots.pixel_index % SHAPE[1] == 121)
    # an ADSC saturates at 65535: there the all-ones value is a count (its pixels saturated)
    adsc = ImageAnalyser(series(source="smv", dtype="<u2", saturation_value=65535), Config())
    assert adsc.series_mask.inactive is None
    assert adsc.analyse(np.minimum(image, 65535).astype("<u2"), 0).n_overloads == 3 * SHAPE[0]


def test_with_its_pixel_mask_an_all_ones_pixel_the_mask_does_not_flag_is_an_overload():
    """A DECTRIS detector also gives its all-ones value to counts past its count-rate
    correction's range (heavy overloads). With the header's pixel mask, the flagged pixels are
    masked and every other all-ones pixel is counted as saturated (as eiger2cbf and H5ToXds do);
    without the mask, all of them read as inactive."""
    image = spots_frame(POSITIONS)
    image[:, 120:123] = 0xFFFFFFFF  # a module gap, flagged in the mask
    image[10:12, 200:202] = 0xFFFFFFFF  # a heavy overload
    image[30, 30] = 60000  # at the count cutoff
    pixel_mask = np.zeros(SHAPE, dtype=np.uint32)
    pixel_mask[:, 120:123] = 1
    for source in ("stream-v2", "stream-v1", "hdf5"):
        info = series(source=source, pixel_mask=pixel_mask, detector_description="Dectris EIGER2 Si 4M")
        assert inactive_value(info) is None
        result = ImageAnalyser(info, Config()).analyse(image, 0)
        assert result.n_overloads == 5, source
        assert result.n_spots == len(POSITIONS)
        unmasked = ImageAnalyser(series(source=source, detector_description="Dectris EIGER2 Si 4M"), Config())
        assert unmasked.analyse(image, 0).n_overloads == 1, source


def test_inactive_value_follows_the_bit_depth():
    assert inactive_value(series(source="stream-v2", bit_depth_image=32)) == 2**32 - 1
    assert inactive_value(series(source="stream-v1", dtype="<u2", bit_depth_image=16)) == 65535
    assert inactive_value(series(source="stream-v2", bit_depth_image=16)) == 65535  # 16-bit data in 32-bit pixels
    assert inactive_value(series(source="hdf5", detector_description="Dectris EIGER2 Si 4M")) == 2**32 - 1
    assert inactive_value(series(source="hdf5", detector_description="")) is None
    assert inactive_value(series(source="cbf", dtype="<i4")) is None  # PILATUS flags with -1, -2
    assert inactive_value(series(source="stream-v2", saturation_value=2**32 - 1)) is None  # all-ones is a count


def test_user_masks_and_resolution_limits():
    config = Config(mask=MaskConfig(untrusted_rectangles=[(25, 36, 35, 46)], untrusted_circles=[(150.5, 30.2, 4.0)]))
    an = ImageAnalyser(series(), config, warm_up=False)
    result = an.analyse(spots_frame(POSITIONS), 0)
    assert result.n_spots == len(POSITIONS) - 2
    d_at = an.resolution_map[int(160.3), int(20.6)]
    limited = Config(spotfinding=Config().spotfinding.model_copy(update={"d_min": float(d_at) + 0.05}))
    an2 = ImageAnalyser(series(), limited, warm_up=False)
    assert an2.analyse(spots_frame(POSITIONS), 0).n_spots == len(POSITIONS) - 1


def test_mask_helpers():
    mask = user_mask((10, 10), MaskConfig(untrusted_rectangles=[(2, 4, 0, 1)],
                                          untrusted_polygons=[[(5.0, 5.0), (9.0, 5.0), (9.0, 9.0)]]))
    assert mask[0, 2] == 0 and mask[0, 4] == 1 and mask[1, 2] == 1
    assert mask[6, 8] == 0 and mask[6, 5] == 1  # (8.5, 6.5) inside the triangle, (5.5, 6.5) outside
    # circles as DIALS's untrusted.circle=3,4,2: pixel (i, j) out when (i-3)^2 + (j-4)^2 < 4
    circle = user_mask((10, 10), MaskConfig(untrusted_circles=[(3.0, 4.0, 2.0)]))
    out = {(int(j), int(i)) for j, i in zip(*np.nonzero(circle == 0))}
    assert out == {(j, i) for j in range(10) for i in range(10) if (i - 3) ** 2 + (j - 4) ** 2 < 4}
    assert (4, 5) not in out and (4, 4) in out  # on the circle is kept
    border = user_mask((6, 8), MaskConfig(border=2))
    assert border.sum() == 2 * 4 and border[2:4, 2:6].all()  # the inner 2 x 4 pixels are left
    gaps = module_gap_mask((2527, 2463))
    assert gaps is not None and gaps[:, 487:494].sum() == 0 and gaps[195:212].sum() == 0 and gaps[0, 486] == 1
    assert module_gap_mask((100, 100)) is None
    s = series(pixel_mask=np.zeros((5, 5), np.uint32))
    with pytest.raises(BadFrame) as err:
        SeriesMask.build(s)
    assert err.value.reason == "wrong_mask_size"


def test_pixel_mask_from_header_is_used():
    pm = np.zeros(SHAPE, np.uint32)
    pm[30:52, 20:42] = 2  # dead pixels over the first spot
    an = ImageAnalyser(series(pixel_mask=pm), warm_up=False)
    assert an.analyse(spots_frame(POSITIONS), 0).n_spots == len(POSITIONS) - 1


def _eiger_cbf(path, shape, detector: str) -> None:
    """A miniCBF as an EIGER's converted images are: the EIGER header lines, counts in the
    modules and 0 (not -1) in the gaps."""
    import fabio.cbfimage

    contents = (f"\n# Detector: {detector}\n# 2021-03-04T10:00:00.000\n# Pixel_size 75e-6 m x 75e-6 m\n"
                "# Silicon sensor, thickness 0.000450 m\n# Exposure_time 0.01 s\n# Exposure_period 0.01 s\n"
                "# Count_cutoff 65534 counts\n# Wavelength 0.9763 A\n# Detector_distance 0.2 m\n"
                "# Beam_xy (1000.0, 1100.0) pixels\n# Start_angle 0.0 deg.\n# Angle_increment 0.1 deg.\n")
    data = np.random.default_rng(2).poisson(2.0, shape).astype(np.int32)
    fabio.cbfimage.CbfImage(data=data, header={"_array_data.header_convention": "PILATUS_1.2",
                                               "_array_data.header_contents": contents}).write(str(path))


def test_eiger_minicbf_gaps_are_masked_by_position(tmp_path):
    """dxtbx masks an EIGER miniCBF's module gaps by position (FormatCBFMiniEiger); so do we.
    The same size from another source (NeXus, a stream) keeps to its pixel mask."""
    from streamer.sources.image_files import ImageSeriesSource

    for detector, shape, (gap_x, gap_y) in (("Dectris EIGER2 X 4M, S/N E-08-0000", (2162, 2068), (1028, 512)),
                                            ("Dectris Eiger 16M, S/N E-32-0000", (4371, 4150), (1030, 514))):
        path = tmp_path / f"eiger_{shape[1]}_0001.cbf"
        _eiger_cbf(path, shape, detector)
        info = ImageSeriesSource([path]).info
        usable = SeriesMask.build(info).mask
        assert usable[:, gap_x].sum() == 0 and usable[gap_y].sum() == 0 and usable[0, gap_x - 1] == 1
        assert SeriesMask.build(series(image_shape=shape, source="hdf5", detector_description=detector)).n_masked == 0


@needs_dials()
@pytest.mark.dials
def test_minicbf_static_masks_are_dxtbxs(tmp_path, shared_data, unpacked):
    """The mask of an EIGER miniCBF with 0 in its gaps and of a PILATUS one: dxtbx's (its
    static mask and trusted range on the image) and ours, pixel for pixel."""
    import subprocess

    from streamer.sources.image_files import ImageSeriesSource

    paths = [tmp_path / "eiger_0001.cbf"]
    _eiger_cbf(paths[0], (2162, 2068), "Dectris EIGER2 X 4M, S/N E-08-0000")
    paths.append(unpacked(shared_data / "real-images" / "thaumatin_grid" / "thau_3_2_0001.cbf.bz2"))  # PILATUS3 6M
    script = ("import sys, numpy; from dxtbx.model.experiment_list import ExperimentListFactory; "
              "imageset = ExperimentListFactory.from_filenames([sys.argv[1]])[0].imageset; "
              "numpy.save(sys.argv[2], imageset.get_mask(0)[0].as_numpy_array())")
    for path in paths:
        result = subprocess.run(["/usr/bin/python3", "-c", script, str(path), str(tmp_path / "dxtbx.npy")],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        theirs = np.load(tmp_path / "dxtbx.npy")
        source = ImageSeriesSource([path])
        pixels = source.pixels(0).view(np.int32)
        lower, upper = SeriesMask.build(source.info).trusted_range
        ours = (SeriesMask.build(source.info).mask == 1) & (pixels > lower) & (pixels < upper)
        assert theirs.shape == ours.shape and 0 < np.count_nonzero(~theirs) < theirs.size // 5
        np.testing.assert_array_equal(ours, theirs)
