"""Indexing and geometry refinement: spots -> reciprocal lattice -> basis -> Bravais lattice -> model.

Modules, in the order the data flows: rlp (spot centroids to reciprocal-lattice points), fft1d
(candidate real-space vectors, Steller, Bolotovsky & Rossmann 1997), basis (the triple that indexes
most spots), reduction (Niggli cell, gemmi), assign (Miller indices), lattice_symmetry (Bravais
lattices compatible with the metric), refinement (positional least squares, scipy), predict
(reflections on any image), second_lattice, sublattice (a supercell's true cell), autoindex (one
attempt end to end), incremental (the controller that decides when to index and re-refine as
images arrive) and stage (the collector's sweep stage: spot joining feeding that controller).
"""

from streamer.indexing.autoindex import IndexingResult, index_rotation, index_still
from streamer.indexing.incremental import IncrementalIndexer, IndexingUpdate

__all__ = ["IncrementalIndexer", "IndexingResult", "IndexingUpdate", "index_rotation", "index_still"]
