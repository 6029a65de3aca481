"""The ``process`` job: its settings, one video's job and analysis, the local and Ray runners.

``from m2a_pipe import process`` is the entry point (:mod:`.process`); :mod:`.config` holds
the settings (torch-free); :mod:`.job` opens a video and commits its output folder;
:mod:`.analysis` turns a video's maps into its outputs; :mod:`.local` and :mod:`.ray_runner`
drive them; :mod:`.cli` is the command.
"""
