"""The pipeline the studies compose: fit, encode, scan and break down (stages), model sweeps, tables, outputs."""
