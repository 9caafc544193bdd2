"""The record builder as an Apache Beam pipeline (``build.engine='beam'``).

Beam, because it is the engine TFDS itself builds large data sets on and it
runs unchanged on the managed and self-run clusters our users have (Dataflow,
Flink, Spark) and, as the DirectRunner, on one machine; Ray Data or plain
multiprocessing would tie the builder to one cluster kind or to one machine.

The pipeline (the plan, with every input's preflight, is made first, on the
launching machine, by :func:`ssmtl_jax.data.builder.plan`):

1. ``Units``: the units still to build (:class:`ssmtl_jax.data.builder.Unit`:
   a video, or a chunk of a long one), spread over the workers
   (``Reshuffle``);
2. ``Build``: :class:`BuildUnits` runs :func:`ssmtl_jax.data.builder.build_unit`
   on each -- detector, cubes, teacher; the shard and the completion record
   are written atomically by the worker -- with the models loaded once per
   worker (``DoFn.setup``), their weight files' sha256 checked there; a unit
   that is already finished (a retried bundle) is not built again;
3. ``Combine``: the units' summaries, with those finished by an earlier run,
   combined per split (:class:`ssmtl_jax.data.builder.SplitTotals`: counts
   and the teacher moments behind ``teacher_std``);
4. ``Finish``: the split summaries and the TFDS metadata
   (:func:`ssmtl_jax.data.builder.finish`), written once.

The runner and its options are Beam's own pipeline options
(``build.beam_options``, plus what follows ``--`` on ``data_prep.build``'s
command line); the default is the DirectRunner with ``build.workers``
processes.
"""

from __future__ import annotations

import shlex

from absl import logging

from ssmtl_jax.base import errors
from ssmtl_jax.base import schema
from ssmtl_jax.data import builder

try:
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.options import pipeline_options as beam_options  # pylint: disable=g-import-not-at-top
except ImportError:
  raise errors.ConfigError(
      "config.build.engine='beam' needs Apache Beam: pip install "
      "'ssmtl-jax[beam]' (or pip install -e '.[beam]' in a checkout)"
  ) from None


def pipeline_options(config, extra_args=()) -> "beam_options.PipelineOptions":
  """Beam's options: the DirectRunner with ``build.workers`` processes, then
  ``build.beam_options`` and ``extra_args`` (later ones win).

  Raises:
    ConfigError: options that do not parse, naming config.build.beam_options.
  """
  workers = int(config.build.workers)
  defaults = ["--runner=DirectRunner", f"--direct_num_workers={workers}",
              "--direct_running_mode=" + ("multi_processing" if workers > 1
                                          else "in_memory")]
  try:
    user = shlex.split(str(config.build.beam_options)) + list(extra_args)
  except ValueError as e:
    raise errors.ConfigError(
        f"config.build.beam_options={config.build.beam_options!r}: {e}"
    ) from None
  bad = [a for a in user if not a.startswith("--")]
  if bad:
    raise errors.ConfigError(
        f"Beam pipeline options {bad}: each must be --name=value "
        "(config.build.beam_options, or after -- on the command line)")
  options = beam_options.PipelineOptions(defaults + user)
  try:
    # Unknown options are Beam's warning; values its parsers refuse (a
    # --direct_num_workers that is not a number) fail here, not on workers.
    options.get_all_options(retain_unknown_options=True)
  except SystemExit:
    raise errors.ConfigError(
        f"Beam pipeline options {user}: Beam refused them (see above; "
        "config.build.beam_options)") from None
  return options


class BuildUnits(beam.DoFn):
  """Builds units on a worker; emits (split, (unit key, summary))."""

  def __init__(self, settings: builder.BuildSettings):
    self._planned = settings
    self._settings = None

  def setup(self):
    # Once per worker (not per element): weights checked and models loaded.
    self._settings = builder.load_models(self._planned)

  def process(self, unit: builder.Unit):
    summary = builder.finished_summary(self._settings, unit)
    if summary is None:  # else a retried bundle: the unit was finished
      summary = builder.build_unit(self._settings, unit)
      beam.metrics.Metrics.counter("ssmtl", "objects").inc(summary["objects"])
      beam.metrics.Metrics.counter("ssmtl", "frames").inc(summary["frames"])
      logging.info("built %s/%s: %d objects in %.1f s", unit.split, unit.key,
                   summary["objects"], summary["seconds"])
    yield unit.split, (unit.key, summary)


class CombineSplit(beam.CombineFn):
  """(unit key, summary)s of a split -> its :class:`builder.SplitTotals`."""

  def create_accumulator(self):
    return builder.SplitTotals()

  def add_input(self, totals, keyed_summary):
    return totals.add(*keyed_summary)

  def merge_accumulators(self, accumulators):
    merged = builder.SplitTotals()
    for totals in accumulators:
      merged.merge(totals)
    return merged

  def extract_output(self, totals):
    return totals


def _finish(totals: dict, settings: builder.BuildSettings,
            work: builder.Plan, all_splits: tuple[str, ...]) -> None:
  builder.finish(settings, work, totals, all_splits)


def build(config, splits=None, beam_args=()) -> dict:
  """Builds (or resumes) the records of every split with a Beam pipeline;
  returns the meta per split.

  beam_args: Beam pipeline options beyond ``build.beam_options``, e.g.
    ``('--runner=DataflowRunner', '--project=...')``.
  """
  options = pipeline_options(config, beam_args)  # checked before any work
  settings, work = builder.prepare(config, splits)
  run(settings, work, builder.default_splits(config), options)
  return {split: schema.read_json(schema.meta_path(settings.records, split))
          for split in work.splits}


def run(settings: builder.BuildSettings, work: builder.Plan,
        all_splits: tuple[str, ...],
        options: "beam_options.PipelineOptions") -> None:
  """Runs the pipeline of the module docstring to completion."""
  finished = [(unit.split, (unit.key, work.done[unit.id]))
              for split in work.splits for unit in work.units[split]
              if unit.id in work.done]
  with beam.Pipeline(options=options) as p:
    built = (p
             | "Units" >> beam.Create(work.todo)
             | "Spread" >> beam.Reshuffle()
             | "Build" >> beam.ParDo(BuildUnits(settings)))
    earlier = p | "Finished" >> beam.Create(finished)
    _ = ((built, earlier)
         | "Together" >> beam.Flatten()
         | "Combine" >> beam.CombinePerKey(CombineSplit())
         | "Splits" >> beam.combiners.ToDict()
         | "Finish" >> beam.Map(_finish, settings, work, all_splits))
