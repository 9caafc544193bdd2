"""The README's main job on a shrunken synthetic config: generate -> build -> train."""

import json
import os

from configs import synthetic as synthetic_config
from ssmtl_jax import runner


def test_synthetic_job_generates_builds_and_trains(tmp_path):
  config = synthetic_config.get_config()
  config.synthetic.update(dict(num_train=2, num_test=1, num_frames=24,
                               height=60, width=80))
  config.build.crop_size = 16
  config.model.widths = (4, 8, 8)
  config.input.batch_size = 8
  config.total_steps = 3
  config.log_every_steps = 1
  config.checkpoint.every_steps = 2
  config.progress_bar = False
  workdir = str(tmp_path)
  result = runner.run(config, workdir)
  assert config.data.root == os.path.join(workdir, "synthetic_data")
  assert config.data.records == os.path.join(workdir, "records")
  assert os.path.exists(os.path.join(workdir, "synthetic_data", "synthetic.json"))
  with open(os.path.join(workdir, "records", "meta", "train.json")) as f:
    meta = json.load(f)
  assert meta["num_videos"] == 2 and meta["num_objects"] > 8
  assert result["train"]["step"] == 3
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]
  # A rerun finds the data, the records and the final checkpoint: no work.
  again = runner.run(config, workdir)
  assert again["train"] == json.loads(json.dumps(result["train"]))
