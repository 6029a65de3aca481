"""Benchmarks behind ``m2a-pipe bench``: the model alone (:mod:`.model`) and the whole
pipeline on a video (:mod:`.pipeline`). They print figures; nothing here is timed in tests."""
