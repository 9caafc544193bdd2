"""tf.data input pipeline over the builder's TFRecord shards -> global jax.Arrays.

Data order is a pure function of (seed, step, num_pipelines), independent of the
number of hosts and devices, so a run resumes exactly and can even resume on a
different topology:

* the split's shard files are dealt round-robin to ``num_pipelines`` pipelines;
* pipeline k, epoch e: its files in an order shuffled with seed (seed, k, e),
  examples shuffled with a buffer seeded the same way; epochs are concatenated;
* the global batch of step s is the concatenation of the s-th sub-batch (size
  batch / num_pipelines) of every pipeline, in pipeline order;
* process p runs the contiguous block of pipelines whose sub-batches are its
  rows of the global batch (so each host reads only its own files);
* resuming at step s skips to epoch floor(s * b_k / n_k) directly and then
  skips the remaining examples inside that epoch.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from typing import Iterator, Mapping

import numpy as np

from ssmtl_jax import errors
from ssmtl_jax import schema


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


def _builder(records_dir: str):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not records_dir:
    raise DataError("config.data.records is empty: point it at the directory "
                    "written by `python -m data_prep.build`")
  if not tf.io.gfile.exists(os.path.join(records_dir, "dataset_info.json")):
    raise DataError(
        f"config.data.records={records_dir!r}: no records found there (no "
        "dataset_info.json); build them with `python -m data_prep.build`")
  return tfds.builder_from_directory(records_dir)


def records_info(records_dir: str, split: str) -> RecordsInfo:
  """Reads the TFDS metadata of `split` under `records_dir`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  builder = _builder(records_dir)
  if split not in builder.info.splits:
    raise DataError(f"config.data.records={records_dir!r} has no split "
                    f"{split!r} (has {sorted(builder.info.splits)})")
  split_info = builder.info.splits[split]
  files = tuple(os.fspath(p) for p in split_info.filepaths)
  for path in files:
    if not tf.io.gfile.exists(path):
      raise DataError(f"records shard missing: {path}")
  feats = builder.info.features
  window, crop_size, _, channels = feats["crops"].shape
  return RecordsInfo(
      records_dir=records_dir, split=split, files=files,
      shard_lengths=tuple(int(n) for n in split_info.shard_lengths),
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


def _pipeline_dataset(info: RecordsInfo, k: int, num_pipelines: int, *,
                      sub_batch: int, seed: int, start_step: int,
                      shuffle_buffer: int, keys):
  """The batched stream of pipeline k, starting at global step start_step."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = np.asarray(info.files[k::num_pipelines])
  n_k = int(sum(info.shard_lengths[k::num_pipelines]))
  if n_k < sub_batch:
    raise DataError(f"input pipeline {k} holds {n_k} examples, fewer than its "
                    f"share of the batch ({sub_batch}); lower "
                    "config.input.batch_size or config.input.num_pipelines")
  start = start_step * sub_batch
  start_epoch, offset = divmod(start, n_k)
  feats = _builder(info.records_dir).info.features
  keys = tuple(keys)

  def decode(serialized):
    example = feats.deserialize_example(serialized)
    return {key: example[key] for key in keys}

  def epoch(e):
    # Stateless, seeded file order and example order per (seed, k, epoch).
    ep_seed = tf.stack([tf.constant(seed, tf.int64) * 7919 + k,
                        tf.cast(e, tf.int64)])
    order = tf.random.experimental.stateless_shuffle(
        tf.range(len(files)), seed=ep_seed)
    ds = tf.data.Dataset.from_tensor_slices(tf.gather(files, order))
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=1,
                       num_parallel_calls=1, deterministic=True)
    shuffle_seed = tf.cast(ep_seed[0] * 1_000_003 + ep_seed[1], tf.int64)
    return ds.shuffle(shuffle_buffer, seed=shuffle_seed,
                      reshuffle_each_iteration=False)

  ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch)
  ds = ds.skip(offset)
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(sub_batch, drop_remainder=True)


def train_iterator(info: RecordsInfo, *, global_batch: int, num_pipelines: int,
                   seed: int, start_step: int, shuffle_buffer: int,
                   process_index: int = 0, process_count: int = 1,
                   keys=schema.TRAIN_KEYS) -> Iterator[Mapping[str, np.ndarray]]:
  """Yields this process's rows of every global batch from start_step on, as numpy."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  mine = pipeline_layout(global_batch, num_pipelines, len(info.files),
                         process_index, process_count)
  total = num_pipelines or process_count
  sub_batch = global_batch // total
  streams = [
      _pipeline_dataset(info, k, total, sub_batch=sub_batch, seed=seed,
                        start_step=start_step, shuffle_buffer=shuffle_buffer,
                        keys=keys)
      for k in mine]
  if len(streams) == 1:
    ds = streams[0]
  else:
    ds = tf.data.Dataset.zip(tuple(streams)).map(
        lambda *parts: {key: tf.concat([p[key] for p in parts], 0)
                        for key in keys})
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.as_numpy_iterator()


def eval_dataset(info: RecordsInfo, *, batch_size: int, keys, every: int = 1):
  """All examples of the split in file order (video order), batched; the last
  batch may be smaller. every > 1 keeps every every-th example."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  feats = _builder(info.records_dir).info.features
  ds = tf.data.TFRecordDataset(list(info.files))
  if every > 1:
    ds = ds.shard(every, 0)
  ds = ds.map(lambda s: {k: v for k, v in feats.deserialize_example(s).items()
                         if k in keys},
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


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
