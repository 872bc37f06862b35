"""Fault injection: SIGINT, SIGTERM and SIGKILL at seeded random points of the long
commands, then `chainbench down`, then proof that nothing is left.

Shared pieces: ``leftovers`` (the root-namespace snapshot and the project-leftover
checks), ``inject`` (points, running a command and signalling it, the per-point
report), ``conftest`` (settings from FAULTS_POINTS / FAULTS_SEED / FAULTS_REPORT, a
clean machine and the snapshot before).  ``make faults`` runs the whole suite
(FAULTS_POINTS=20); ``make test`` a seeded sample (3 points per command and signal).
"""
