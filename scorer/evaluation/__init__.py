"""What users learn from runs: reports over OUTPUT, the throughput bench, generated histories."""
