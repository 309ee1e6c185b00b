"""A heavy imported model: a 300-tree LightGBM scored by the scorer, by a plain pyarrow +
onnxruntime script and by Ray Data, and the inference floor on the same rows.

Setup (once, reused from --out): 2M generated sessions in 8 files (`scorer generate`'s history),
a 300-tree LightGBM fitted on the bundled sessions over 14 numeric columns, exported by
onnxmltools (`zipmap=False`) and brought in with `scorer import` (labelled rows: the bundled
sessions).

Each round, alternating, whole processes timed from start to exit:

- ``scorer``: `scorer score DATA OUT --model DIR --json`, the default command (its work window
  from the summary, too);
- ``pyarrow_ort``: the script a user writes without the scorer: files read batch by batch with
  pyarrow, the float32 matrix built, one onnxruntime session on the ORIGINAL file (its default
  threads: every core), scores written beside the key;
- ``ray_data``: `ray.data.read_parquet -> map_batches(an onnxruntime session per actor,
  ActorPoolStrategy(size=2)) -> write_parquet`, on a Ray it starts itself (fractional CPUs per
  actor: with a whole CPU each, 2 actors on 2 CPUs leave none to the read tasks and the job
  hangs).

Then the floor: onnxruntime alone on the 2M rows preloaded as one float32 matrix, in batches of
the scorer's size, every core busy: one session with a thread per core, and a process per core
each with a one-thread session on its share (the faster of the two is the floor). Prints medians
and the scorer's ratios: wall against the faster peer, work window against the floor.

    python benchmarks/foreign_model.py [--out bench-foreign] [--sessions 2000000] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from scorer.jobs.bench import bench_data
from scorer.jobs.whole_job import scorer_bin
from scorer.model.sessions import CODES, MEASURES

FEATURES = (*MEASURES, *CODES)
BATCH_ROWS = 131_072

PYARROW_ORT = """
import glob, os, sys
import numpy as np, onnxruntime as ort, pyarrow as pa, pyarrow.parquet as pq
data, model, out = sys.argv[1:4]
features = sys.argv[4].split(",")
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
os.makedirs(out, exist_ok=True)
for i, path in enumerate(sorted(glob.glob(data + "/**/*.parquet", recursive=True))):
    writer = None
    for batch in pq.ParquetFile(path).iter_batches(batch_size=131072, columns=features + ["session_id"]):
        x = np.column_stack([batch.column(c).to_numpy().astype(np.float32) for c in features])
        p = session.run(["probabilities"], {"input": x})[0][:, 1]
        table = pa.table({"session_id": batch.column("session_id"), "score": p})
        writer = writer or pq.ParquetWriter(f"{out}/part-{i}.parquet", table.schema)
        writer.write_table(table)
    writer.close()
"""

RAY_DATA = """
import sys
import numpy as np, pyarrow as pa, ray
data, model, out = sys.argv[1:4]
features = sys.argv[4].split(",")
ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False

class Score:
    def __init__(self):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, batch):
        x = np.column_stack([batch.column(c).to_numpy().astype(np.float32) for c in features])
        p = self.session.run(["probabilities"], {"input": x})[0][:, 1]
        return pa.table({"session_id": batch.column("session_id"), "score": p})

ds = ray.data.read_parquet(data, columns=features + ["session_id"])
ds = ds.map_batches(Score, batch_size=131072, batch_format="pyarrow",
                    compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5)
ds.write_parquet(out)
"""


def prepare(out: Path) -> tuple[Path, Path]:
    """The 300-tree LightGBM, exported and imported (reused when there)."""
    original, model_dir = out / "lgbm300.onnx", out / "lgbm300"
    if (model_dir / "model.json").exists():
        return original, model_dir
    import lightgbm
    import onnx
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    from scorer.model.sessions import bundled_sessions_path, load_bundled_sessions

    table = load_bundled_sessions()
    x = np.column_stack([table[c].to_numpy().astype(np.float32) for c in FEATURES])
    model = lightgbm.LGBMClassifier(n_estimators=300, verbose=-1, random_state=0)
    model.fit(x, table["converted"].to_numpy().astype(int))
    exported = convert_lightgbm(
        model, initial_types=[("input", FloatTensorType([None, len(FEATURES)]))], zipmap=False
    )
    onnx.save(exported, original)
    command = [scorer_bin(), "import", str(original), "--data", str(bundled_sessions_path())]
    command += ["--out", str(model_dir), "--features", ",".join(FEATURES)]
    subprocess.run(command, check=True)
    return original, model_dir


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{command[:3]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


def floor(data: str, original: Path) -> dict[str, float]:
    """Rows/s of onnxruntime alone on preloaded rows using every core, two ways: one session
    with a thread per core, and a process per core with a one-thread session on its share of
    the rows (started together at a barrier). The faster is the inference floor."""
    import multiprocessing

    import onnxruntime as ort
    import pyarrow.dataset as ds

    table = ds.dataset(data, format="parquet", partitioning="hive").to_table(columns=list(FEATURES))
    x = np.column_stack([table[c].to_numpy().astype(np.float32) for c in FEATURES])
    cores = os.cpu_count() or 1

    def run(session: ort.InferenceSession, rows: np.ndarray) -> float:
        session.run(["probabilities"], {"input": rows[:1024]})  # warm
        started = time.perf_counter()
        for start in range(0, len(rows), BATCH_ROWS):
            session.run(["probabilities"], {"input": rows[start : start + BATCH_ROWS]})
        return time.perf_counter() - started

    def session(threads: int) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(str(original), options, providers=["CPUExecutionProvider"])

    threaded = len(x) / run(session(cores), x)

    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(cores + 1), context.Queue()

    def child(rows: np.ndarray) -> None:
        one = session(1)
        barrier.wait()
        results.put(run(one, rows))

    children = [context.Process(target=child, args=(part,)) for part in np.array_split(x, cores)]
    for process in children:
        process.start()
    barrier.wait()
    slowest = max(results.get() for _ in children)
    for process in children:
        process.join()
    return {"threads": threaded, "processes": len(x) / slowest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-foreign"))
    parser.add_argument("--sessions", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = bench_data(args.out, args.sessions, args.files, 0, print)
    original, model_dir = prepare(args.out)
    features = ",".join(FEATURES)
    scratch = args.out / "scratch"
    walls: dict[str, list[float]] = {"scorer": [], "pyarrow_ort": [], "ray_data": []}
    work_rates: list[float] = []
    floors: dict[str, list[float]] = {"threads": [], "processes": []}
    for rep in range(args.reps):
        for name in walls:
            shutil.rmtree(scratch, ignore_errors=True)
            if name == "scorer":
                command = [scorer_bin(), "score", data, str(scratch), "--model", str(model_dir)]
                seconds, stdout = timed([*command, "--json"])
                work_rates.append(json.loads(stdout)["work_rows_per_second"])
            else:
                script = PYARROW_ORT if name == "pyarrow_ort" else RAY_DATA
                command = [sys.executable, "-c", script, data, str(original), str(scratch)]
                seconds, _ = timed([*command, features])
            walls[name].append(seconds)
            print(
                f"rep {rep} {name:<12} {seconds:6.2f} s  {args.sessions / seconds:>12,.0f} rows/s"
            )
        for way, rate in floor(data, original).items():
            floors[way].append(rate)
            print(f"rep {rep} floor, {way:<9} {rate:>18,.0f} rows/s")
    shutil.rmtree(scratch, ignore_errors=True)

    median = {name: statistics.median(values) for name, values in walls.items()}
    peer = min(("pyarrow_ort", "ray_data"), key=median.__getitem__)
    work = statistics.median(work_rates)
    floor_medians = {way: statistics.median(rates) for way, rates in floors.items()}
    for way, rate in floor_medians.items():
        print(f"  inference floor, {way}: {rate:,.0f} rows/s")
    inference = max(floor_medians.values())
    print(
        f"\n{args.sessions:,} sessions, {args.files} files, {os.cpu_count()} cores, medians of {args.reps}"
    )
    for name, seconds in median.items():
        print(f"  {name:<12} {seconds:6.2f} s  {args.sessions / seconds:>12,.0f} rows/s")
    print(f"  scorer vs the faster peer ({peer}): {median[peer] / median['scorer']:.2f}x")
    print(
        f"  scorer work window {work:,.0f} rows/s vs inference floor {inference:,.0f} rows/s: "
        f"{work / inference:.2f}x"
    )


if __name__ == "__main__":
    main()
