"""The Ray edge: Ray Train worker functions, per-trial Tune drivers, the grid and the collector.

This is the only package (with the CLI) that imports Ray. Three layers, as in Ray's Train V2
examples: a per-worker loop (``workers``), a Tune function per trial that builds and fits a
``TorchTrainer`` (``trials``), and the sweep that runs Tuners over those functions and collects
results on the driver (``sweep``, ``collector``), on the cluster ``cluster`` joins or starts.
"""
