"""Shared dependency stacks: a job's deps layer built on a baked image that already holds
part of its locked set, and the trusted wheelhouse its remainder is installed from.

- :mod:`.choice` (pure): what a deps layer holds (:class:`~.choice.Held`), a stack's key,
  and :func:`~.choice.choose`, the deterministic pick of the best stack for a job.
- :mod:`.labels` (pure): the labels a baked image carries about stacks (what it holds,
  what it was built on), within the docker argv's limits.
- :mod:`.wheelhouse` (pure): the wheelhouse plan: which wheels bake's own download step
  fetches into the shared, hash-addressed BuildKit cache, and the install step's input,
  which reads them read-only, offline, hashes required.
- :mod:`.discover` (the engine): the stacks on this engine.
"""
