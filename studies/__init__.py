"""Studies: each scientific question of the lab, from one command to a results table and a
paper figure (see :mod:`studies.registry` for the questions, :mod:`studies.cli` for the
command line)."""
