"""The command lines: every console script of the package (``guided-diffusers-*``), which ``convert/*.py`` and
``scripts/*.py`` of a checkout wrap unchanged."""
