"""The detector simulator with known truth (issue 3).

Modules, one job each: `presets` (crystal presets), `structure` (intensities with the space
group's symmetry, Wilson statistics, or from an MTZ), `background` (expected background per
pixel), `noise` (Poisson photon drawing, sparse), `render` (numba spot rendering), `sweep`
(a whole rotation sweep: geometry, partialities, frames), `truth` (the truth file and its loader).
"""
