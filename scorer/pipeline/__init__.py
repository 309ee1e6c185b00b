"""The batch job: plan shards from footers, score them on Ray actors, commit exactly once.

A shard's way, by file: `plan` (footers → shards) → `driver` (dispatch, retry) → `pool` and
`actor` (score on Ray) → `manifest` (atomic commit, records, cleanup) under `lock`, with every
path from `layout` → `stats` (what happened).
"""
