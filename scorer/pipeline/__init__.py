"""The batch job: plan shards from footers, score them on Ray actors, commit exactly once.

A shard's way, by file: `plan` (footers → shards) → `driver` (dispatch, retry) → `pool` and
`actor` (score on Ray) → `commit` (atomic commit, manifest, lock) → `stats` (what happened).
"""
