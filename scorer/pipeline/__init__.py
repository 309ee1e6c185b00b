"""The batch job: plan shards from footers, score them on workers, commit each exactly once.

The modules, by where a shard is on its way (docs/ARCHITECTURE.md draws it):

- the input: `scan` (listing INPUT, footers read fast), `footers`, `limits`, `days` and
  `day_selection` (a row's day from a folder or a column);
- the plan: `plan` (the data model), `packing` (row groups into shards), `preflight`;
- on a worker: `shipping` (what it starts with), `reading` (with the read-ahead that hides
  object-storage latency; `ranges`, `bulk`), `stages` (read, score and write, overlapped),
  `sink`, `outcome` (what it hands back), `memory`; the shells that run it: `actor` (Ray),
  `local` (the driver's own threads), `processes` (forked children), `pool`, `cluster`;
- driving: `entry` (`score()`, the steps before the first shard), `context`, `executors`
  (which workers), `driver` (dispatch, the commit thread, retries), `retry`, `progress`;
- the output: `layout` (every name under OUTPUT), `lock`, `manifest` (the commits), `ledger`
  and `stats` (what happened), `alerts`, and the table formats: `publish` chooses `delta` or
  `iceberg` (`iceberg_io`), which share `tables`.
"""
