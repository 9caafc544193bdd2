"""Input pipeline over the builder's TFRecord shards -> numpy rows (no TensorFlow).

Data order is a pure function of (seed, step, num_pipelines), independent of the
number of hosts and devices, so a run resumes exactly and can even resume on a
different topology (docs/DESIGN.md §5.3):

* the split's shard files are dealt round-robin to ``num_pipelines`` pipelines;
* pipeline k, epoch e: ``rng = np.random.default_rng((seed, k, e))`` draws a
  file order, then an example order over the pipeline's n_k examples laid out
  in that file order: the stream is cut into consecutive windows of
  ``shuffle_buffer`` examples and the examples inside each window are
  permuted (``shuffle_buffer >= n_k``: one exact permutation of all n_k;
  ``shuffle_buffer = 1``: file order, as with tf.data's buffer of 1);
  epochs are concatenated;
* the global batch of step s is the concatenation of the s-th sub-batch (size
  batch / num_pipelines) of every pipeline, in pipeline order;
* process p runs the contiguous block of pipelines whose sub-batches are its
  rows of the global batch (so each host reads only its own files);
* resuming at step s starts at epoch floor(s * b_k / n_k) and the offset inside
  it directly: skipped examples are never read.

Shards are read by index (records.TFRecordFile: headers scanned once, random
access by seek, crcs checked) and decoded (protobuf + zlib) in a small thread
pool, a few batches ahead.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import itertools
import json
import os
import queue
import threading
from typing import Iterator, Mapping, Sequence

from etils import epath
import numpy as np

from ssmtl_jax.base import errors
from ssmtl_jax.base import records
from ssmtl_jax.base import schema


DataError = errors.DataError  # missing or inconsistent records

@dataclasses.dataclass(frozen=True)
class RecordsInfo:
  """What the trainer needs to know about a records directory."""
  records_dir: str
  split: str
  files: tuple[str, ...]
  shard_lengths: tuple[int, ...]
  window: int        # 2W+1
  crop_size: int
  channels: int
  num_det: int
  num_cls: int

  @property
  def num_examples(self) -> int:
    return int(sum(self.shard_lengths))

  @property
  def kd_outputs(self) -> int:
    return self.num_det + self.num_cls


def _read_dataset_info(records_dir: str) -> dict:
  if not records_dir:
    raise DataError("config.data.records is empty: point it at the directory "
                    "written by `python -m data_prep.build`")
  path = epath.Path(records_dir) / "dataset_info.json"
  if not path.exists():
    raise DataError(
        f"config.data.records={records_dir!r}: no records found there (no "
        "dataset_info.json); build them with `python -m data_prep.build`")
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise DataError(f"{path}: not valid JSON ({e})") from e


def records_info(records_dir: str, split: str) -> RecordsInfo:
  """Reads the TFDS metadata (dataset_info.json, features.json) of `split`
  under `records_dir` with plain json."""
  meta = _read_dataset_info(records_dir)
  splits = {s["name"]: s for s in meta.get("splits", [])}
  if split not in splits:
    raise DataError(f"config.data.records={records_dir!r} has no split "
                    f"{split!r} (has {sorted(splits)})")
  template = splits[split].get("filepathTemplate", schema.FILENAME_TEMPLATE)
  if (meta.get("fileFormat", "tfrecord") != "tfrecord" or
      template != schema.FILENAME_TEMPLATE):
    raise DataError(f"{records_dir}: not written by data_prep.build (file "
                    f"format {meta.get('fileFormat')!r}, template {template!r})")
  lengths = tuple(int(n) for n in splits[split].get("shardLengths", []))
  files = tuple(os.path.join(records_dir, schema.shard_filename(
      split, i, len(lengths))) for i in range(len(lengths)))
  for path in files:
    if not epath.Path(path).exists():
      raise DataError(f"records shard missing: {path}")
  feats = schema.read_features(records_dir)
  window, crop_size, _, channels = feats["crops"].shape
  return RecordsInfo(
      records_dir=records_dir, split=split, files=files,
      shard_lengths=lengths,
      window=int(window), crop_size=int(crop_size), channels=int(channels),
      num_det=int(feats["teacher_det"].shape[0]),
      num_cls=int(feats["teacher_cls"].shape[0]))


def pipeline_layout(global_batch: int, num_pipelines: int, num_files: int,
                    process_index: int, process_count: int) -> range:
  """Validates the layout; returns the pipelines that this process runs."""
  num_pipelines = num_pipelines or process_count
  if num_pipelines % process_count:
    raise errors.ConfigError(
        f"config.input.num_pipelines={num_pipelines} must be a multiple of "
        f"the number of processes ({process_count})")
  if global_batch % num_pipelines:
    raise errors.ConfigError(
        f"config.input.batch_size={global_batch} must be divisible by the "
        f"number of input pipelines ({num_pipelines})")
  if num_files < num_pipelines:
    raise DataError(f"{num_files} record shard(s) cannot feed {num_pipelines} "
                    "input pipelines (one per process by default): lower "
                    "config.input.num_pipelines or write more shards")
  per_process = num_pipelines // process_count
  return range(process_index * per_process, (process_index + 1) * per_process)


_WORKERS = max(1, min(8, os.cpu_count() or 1))
_AHEAD = 2 * _WORKERS  # batches being read/decoded ahead of the consumer
_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
  """The decode threads (zlib releases the GIL; protobuf parsing is C)."""
  global _POOL
  with _POOL_LOCK:
    if _POOL is None:
      _POOL = concurrent.futures.ThreadPoolExecutor(
          max_workers=_WORKERS,
          thread_name_prefix="ssmtl-input")
    return _POOL


class _Shards:
  """The indexed shard files of one pipeline (or split), as one sequence of
  examples: file i's records follow file i-1's."""

  def __init__(self, info: RecordsInfo, paths: Sequence[str],
               lengths: Sequence[int]):
    self.paths = tuple(paths)
    self.lengths = np.asarray(lengths, np.int64)
    self.starts = np.concatenate([[0], np.cumsum(self.lengths)])
    self.features = schema.read_features(info.records_dir)
    self._files: list[records.TFRecordFile] | None = None

  def __len__(self) -> int:
    return int(self.starts[-1])

  def open(self) -> None:
    """Scans the record headers of every file (in the decode threads)."""
    if self._files is not None:
      return
    files = list(_pool().map(records.TFRecordFile, self.paths))
    for f, n in zip(files, self.lengths):
      if len(f) != n:
        for g in files:
          g.close()
        raise DataError(f"{f.path} holds {len(f)} records, dataset_info.json "
                        f"says {n}: the records directory is inconsistent")
    self._files = files

  def close(self) -> None:
    for f in self._files or ():
      f.close()
    self._files = None

  def read(self, index: int) -> bytes:
    i = int(np.searchsorted(self.starts, index, side="right")) - 1
    return self._files[i].read(int(index - self.starts[i]))


def _decode(parts: Sequence[tuple[_Shards, np.ndarray]],
            keys: Sequence[str]) -> dict[str, np.ndarray]:
  """Reads and decodes examples, one batch: parts' rows one after another.
  Text features come as object arrays of bytes (as tf.data gives them)."""
  rows = [schema.deserialize(shards.features, shards.read(i), keys)
          for shards, indices in parts for i in indices]
  out = {}
  for key in keys:
    values = [r[key] for r in rows]
    if isinstance(values[0], bytes):
      batch = np.empty(len(values), dtype=object)
      batch[:] = values
      out[key] = batch
    else:
      out[key] = np.stack(values)
  return out


def _ahead(tasks: Iterator, depth: int) -> Iterator:
  """Runs the callables of `tasks` in the pool, `depth` ahead, yielding their
  results in order."""
  pending: collections.deque = collections.deque()
  try:
    for task in tasks:
      pending.append(_pool().submit(task))
      if len(pending) >= depth:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:
    for f in pending:
      f.cancel()
    concurrent.futures.wait(pending)


class _Pipeline:
  """Pipeline k of num_pipelines: its shards and its seeded order."""

  def __init__(self, info: RecordsInfo, k: int, num_pipelines: int, *,
               seed: int, shuffle_buffer: int):
    self.k, self.seed = k, seed
    self.shuffle_buffer = max(1, int(shuffle_buffer))
    self.shards = _Shards(info, info.files[k::num_pipelines],
                          info.shard_lengths[k::num_pipelines])

  def epoch_order(self, epoch: int) -> np.ndarray:
    """The pipeline's example indices (into _Shards) in epoch `epoch`'s order."""
    rng = np.random.default_rng((self.seed, self.k, epoch))
    lengths, starts = self.shards.lengths, self.shards.starts
    file_order = rng.permutation(len(lengths))
    stream = np.concatenate(
        [np.arange(starts[f], starts[f + 1]) for f in file_order]
        + [np.zeros(0, np.int64)])
    # The examples permuted inside windows of shuffle_buffer consecutive
    # ones (reads stay within a few files): sort by window + uniform [0, 1).
    window = np.arange(len(stream)) // self.shuffle_buffer
    keys = window + rng.random(len(stream))
    return stream[np.argsort(keys, kind="stable")]

  def indices(self, start_step: int, sub_batch: int) -> Iterator[np.ndarray]:
    """The example indices of every sub-batch from start_step on."""
    epoch, offset = divmod(start_step * sub_batch, len(self.shards))
    carry = np.zeros(0, np.int64)
    while True:
      stream = np.concatenate([carry, self.epoch_order(epoch)[offset:]])
      full = len(stream) // sub_batch * sub_batch
      for i in range(0, full, sub_batch):
        yield stream[i:i + sub_batch]
      carry, epoch, offset = stream[full:], epoch + 1, 0


def _check_pipeline(pipe: _Pipeline, sub_batch: int) -> None:
  n_k = len(pipe.shards)
  if n_k < sub_batch:
    raise DataError(f"input pipeline {pipe.k} holds {n_k} examples, fewer than "
                    f"its share of the batch ({sub_batch}); lower "
                    "config.input.batch_size or config.input.num_pipelines")


def train_iterator(info: RecordsInfo, *, global_batch: int, num_pipelines: int,
                   seed: int, start_step: int, shuffle_buffer: int,
                   process_index: int = 0, process_count: int = 1,
                   keys=schema.TRAIN_KEYS) -> Iterator[Mapping[str, np.ndarray]]:
  """Yields this process's rows of every global batch from start_step on, as
  numpy (the rows of its pipelines, in pipeline order); endless."""
  mine = pipeline_layout(global_batch, num_pipelines, len(info.files),
                         process_index, process_count)
  total = num_pipelines or process_count
  sub_batch = global_batch // total
  pipes = [_Pipeline(info, k, total, seed=seed, shuffle_buffer=shuffle_buffer)
           for k in mine]
  for pipe in pipes:
    _check_pipeline(pipe, sub_batch)
  keys = tuple(keys)
  return _train_batches(pipes, sub_batch, start_step, keys)


def _train_batches(pipes, sub_batch, start_step, keys):
  for pipe in pipes:
    pipe.shards.open()
  try:
    streams = [pipe.indices(start_step, sub_batch) for pipe in pipes]
    tasks = (functools.partial(
        _decode, [(p.shards, next(s)) for p, s in zip(pipes, streams)], keys)
             for _ in itertools.count())
    yield from _ahead(tasks, depth=_AHEAD)
  finally:
    for pipe in pipes:
      pipe.shards.close()


class _EvalDataset:
  """eval_dataset's batches; iterate it (or call as_numpy_iterator())."""

  def __init__(self, info: RecordsInfo, batch_size: int, keys, every: int):
    self._info, self._batch_size = info, int(batch_size)
    self._keys, self._every = tuple(keys), max(1, int(every))

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    shards = _Shards(self._info, self._info.files, self._info.shard_lengths)
    picks = np.arange(0, len(shards), self._every)
    bs, keys = self._batch_size, self._keys
    shards.open()
    try:
      tasks = (functools.partial(_decode, [(shards, picks[i:i + bs])], keys)
               for i in range(0, len(picks), bs))
      yield from _ahead(tasks, depth=_AHEAD)
    finally:
      shards.close()

  def as_numpy_iterator(self) -> Iterator[dict[str, np.ndarray]]:
    """The batches as numpy (what tf.data's method of this name gave)."""
    return iter(self)


def eval_dataset(info: RecordsInfo, *, batch_size: int, keys, every: int = 1):
  """All examples of the split in file order (video order), batched; the last
  batch may be smaller. every > 1 keeps every every-th example (0, every,
  2 every, ... of the whole split). Returns an iterable of numpy batches."""
  if batch_size < 1:
    raise errors.ConfigError(f"eval batch size {batch_size} must be >= 1")
  return _EvalDataset(info, batch_size, keys, every)


class Prefetcher:
  """Runs `place(next(it))` (host -> device transfer) `depth` steps ahead on a
  background thread so that input never sits on the critical path."""

  def __init__(self, it: Iterator, place, depth: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
    self._thread = threading.Thread(target=self._run, args=(it, place),
                                    daemon=True)
    self._thread.start()

  def _run(self, it, place):
    try:
      for item in it:
        self._queue.put((True, place(item)))
    except Exception as e:  # pylint: disable=broad-except
      self._queue.put((False, e))
      return
    self._queue.put((False, StopIteration()))

  def __iter__(self):
    return self

  def __next__(self):
    ok, item = self._queue.get()
    if not ok:
      raise item
    return item
