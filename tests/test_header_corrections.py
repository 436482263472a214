"""Configured header corrections (`config.geometry`) reach every stage; an unusable geometry is
reported with the key that fixes it, and its frames are still processed."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from pipeline_fakes import make_frame, make_series
from test_pipeline_e2e import ENV, fake_args

from streamer.config import Config, GeometryOverride
from streamer.header_corrections import corrected, entering, geometry_problems
from streamer.pipeline import Pipeline
from streamer.series import SeriesEnd


def test_corrections_replace_only_what_is_configured():
    series = make_series()
    assert corrected(series, GeometryOverride()) is series
    fixed = corrected(series, GeometryOverride(distance_mm=150.0, beam_centre_px=(20.5, 30.0),
                                               oscillation=(5.0, 0.25), rotation_axis=(0.0, 1.0, 0.0)))
    assert fixed.distance_mm == 150.0 and fixed.beam_centre_px == (20.5, 30.0)
    assert fixed.omega_start_deg == 5.0 and fixed.omega_increment_deg == 0.25 and fixed.phi_deg(2) == 5.5
    assert fixed.rotation_axis == (0.0, 1.0, 0.0)
    assert fixed.wavelength_A == series.wavelength_A and fixed.image_shape == series.image_shape
    np.testing.assert_array_equal(fixed.pixel_mask, series.pixel_mask)


def test_an_unusable_geometry_is_reported_with_its_fix(caplog):
    series = dataclasses.replace(make_series(), distance_mm=0.0, wavelength_A=float("nan"))
    problems = geometry_problems(series)
    assert len(problems) == 2
    assert "geometry.distance_mm" in problems[0] and "geometry.wavelength_A" in problems[1]
    with caplog.at_level(logging.WARNING):
        entering(series, GeometryOverride())
    assert "no resolutions" in caplog.text and "geometry.distance_mm" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fixed = entering(series, GeometryOverride(distance_mm=120.0, wavelength_A=0.98))
    assert geometry_problems(fixed) == [] and "no resolutions" not in caplog.text


@pytest.mark.slow
def test_the_pipeline_processes_the_corrected_series():
    config = Config().model_copy(update={"geometry": GeometryOverride(distance_mm=250.0, oscillation=(0.0, 0.5))})
    s = dataclasses.replace(make_series(n_images=4), distance_mm=0.0)
    with Pipeline(config, n_workers=1, live=False, worker_args=fake_args(), worker_env=ENV) as pipe:
        pipe.feed([s, *(make_frame(s, i, 2) for i in range(4)), SeriesEnd(s.series_id)])
        assert pipe.wait(60)
        state = pipe.collector.series[s.series_id]
    assert state.series.distance_mm == 250.0 and state.series.omega_increment_deg == 0.5
    assert state.tally.processed == 4
    assert [r.stats["phi_deg"] for r in state.results] == [0.0, 0.5, 1.0, 1.5]  # the workers' series too


@pytest.mark.parametrize("geometry", [{"wavelength_A": 0.0}, {"distance_mm": 0.0}, {"wavelength_A": float("nan")},
                                      {"two_theta_deg": 25.0}])
def test_a_header_without_geometry_still_gives_spots(geometry):
    """A stream v1 header sent with no geometry (wavelength 0): the spots, no resolutions.
    A wavelength of 0 made the analyser's set-up raise, which ended every worker. A detector
    at two-theta 25 deg (not modelled) gave resolutions as if it faced the beam: none now."""
    from streamer.perimage import ImageAnalyser

    series = dataclasses.replace(make_series(shape=(200, 180)), **geometry)
    assert geometry_problems(series)
    image = np.random.default_rng(0).poisson(2.0, (200, 180)).astype("<u2")
    image[50:53, 60:63] = 200
    result = ImageAnalyser(series, Config()).analyse(image, 0)
    assert result.n_spots == 1 and result.n_spots_4A == 0 and result.estimated_d_min == -1.0


def test_two_theta_reaches_the_workers_and_their_set_up():
    """The two-theta angle travels with the series to the workers (it was kept in the header's
    raw part, which stays with the receiver: workers gave resolutions), and an analyser set up
    at two-theta 0 is not reused for a swung detector."""
    from streamer import pipeline_messages, wire
    from streamer.perimage import ImageAnalyser

    series = dataclasses.replace(make_series(shape=(200, 180)), two_theta_deg=25.0)
    sent = pipeline_messages.series_from(wire.decode(pipeline_messages.encode_series(series)))
    assert sent.two_theta_deg == 25.0 and geometry_problems(sent)
    flat = ImageAnalyser(dataclasses.replace(series, two_theta_deg=0.0), Config())
    assert flat.reuse_for(series) is None
