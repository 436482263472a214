import pytest

from streamer.config import Config, load_config, modified_settings
from streamer.errors import BadConfig


def test_defaults_load_and_match_dials_spotfinding():
    cfg = load_config(environ={})
    sf = cfg.spotfinding
    assert (sf.algorithm, sf.gain, sf.kernel_size, sf.sigma_background, sf.sigma_strong, sf.min_local) == (
        "dispersion_extended", 1.0, (3, 3), 6.0, 3.0, 2)
    assert modified_settings(cfg) == {}


def test_yaml_then_environment_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("spotfinding:\n  sigma_strong: 4\nfanout:\n  workers: 3\n")
    cfg = load_config(f, environ={"XTAL_FANOUT__WORKERS": "5"})
    assert cfg.spotfinding.sigma_strong == 4.0
    assert cfg.fanout.workers == 5
    assert modified_settings(cfg) == {"spotfinding.sigma_strong": 4.0, "fanout.workers": 5}


@pytest.mark.parametrize("text", ["spotfinding:\n  nonsense: 1\n", "spotfinding:\n  gain: -1\n", "- a list\n", "a: [\n"])
def test_bad_configuration_is_a_clear_error(tmp_path, text):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(BadConfig):
        load_config(f, environ={})


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(BadConfig, match="does not exist"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().spotfinding.gain = 2.0


def test_spotfinding_window_and_min_local_are_checked():
    """As DIALS: half-sizes of at least 1, and min_local more than 1 and no more than the
    window's pixels (min_local 1 made the analyser's set-up fail: every frame a worker_error)."""
    from streamer.config import SpotfindingConfig

    assert SpotfindingConfig(kernel_size=(1, 3), min_local=21).window_fast_slow == (3, 1)
    for bad in ({"kernel_size": (0, 3)}, {"kernel_size": (1, 3), "min_local": 22}, {"min_local": 1}):
        with pytest.raises(ValueError):
            SpotfindingConfig(**bad)
