"""Detector simulator, replay of recorded data and benchmarks: first-class tools around the processor."""
