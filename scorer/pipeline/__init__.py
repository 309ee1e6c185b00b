"""The batch job: plan shards from footers, score them on Ray actors, commit exactly once.

A shard's way, by file: `plan` (footers → shards) → `driver` (the dispatch loop) → `pool` and
`actor` (score on Ray) → `manifest` (atomic commit, records, cleanup) under `lock`, with every
path from `layout`; a failed attempt goes back in line by `retry`; `ledger` keeps what happened
and writes it in `stats`' schemas; `progress` shows it; `cluster` starts or joins Ray.
"""
