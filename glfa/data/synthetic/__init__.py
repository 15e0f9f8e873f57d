"""The built-in synthetic study: a simulated multi-subject video-fMRI experiment with known truth.

Clips are camera motions over real photographs (:mod:`.stimuli`); responses come from an
encoding model laid out on the real flat visual cortex (:mod:`.cortex`); subjects differ from
a template brain by a smooth deformation, parcel mixing, gains, delay and noise
(:mod:`.subjects`); the design and haemodynamics are in :mod:`.design`; :func:`simulate_study`
writes it all in the generic layout that ``glfa prepare`` reads (:mod:`.study`).
"""

from glfa.data.synthetic.study import simulate_study, write_npz

__all__ = ["simulate_study", "write_npz"]
