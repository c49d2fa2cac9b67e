"""Engine workers: one process per model replica (:mod:`.process`, the child side) and
its supervisor in the API process (:mod:`.supervisor`)."""
