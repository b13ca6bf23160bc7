"""Side-by-side benchmark of tenantflow's peers (DBOS, Temporal, Restate); see bench/peers/README.md.

Keep this module free of imports: Temporal's workflow sandbox re-imports the package that holds
the workflow definitions (tfpeers.temporal_defs).
"""
