"""Default configuration and detector presets, as YAML data validated by `streamer.config`."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
DETECTOR_DIR = CONFIG_DIR / "detectors"
