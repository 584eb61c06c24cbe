"""A workdir's saved config.json is complete or refused in one line naming
the file and the field (checkpoints.read_config); fields added to the
defaults after a run was saved still take their default."""

import json

import pytest

from configs import default
from ddpm_jax import checkpoints
from tests.tiny_configs import tiny_config


def saved_workdir(tmp_path, edit=None, text=None):
  """A workdir holding the tiny config's config.json, after ``edit``
  (a function of the JSON dict) or replaced by ``text``."""
  checkpoints.write_config(str(tmp_path), tiny_config())
  path = tmp_path / checkpoints.CONFIG_FILE
  if edit is not None:
    saved = json.loads(path.read_text())
    edit(saved)
    path.write_text(json.dumps(saved))
  if text is not None:
    path.write_text(text)
  return str(tmp_path)


def refusal(workdir):
  with pytest.raises(checkpoints.SavedConfigError) as e:
    checkpoints.read_config(workdir)
  line = str(e.value)
  assert "\n" not in line and "config.json" in line, line
  return line


def test_a_complete_saved_config_reads_back(tmp_path):
  config = checkpoints.read_config(saved_workdir(tmp_path))
  assert config.diffusion.num_timesteps == 20 and config.model.ch == 32


def test_a_field_newer_than_the_run_takes_its_default(tmp_path):
  wd = saved_workdir(tmp_path, lambda c: c["sampling"].pop("eta"))
  assert checkpoints.read_config(wd).sampling.eta == (
      default.get_default_config().sampling.eta)


@pytest.mark.parametrize("section", checkpoints.REQUIRED_SECTIONS)
def test_a_missing_section_is_refused(tmp_path, section):
  line = refusal(saved_workdir(tmp_path, lambda c: c.pop(section)))
  assert f"no '{section}' section" in line, line


def test_a_null_section_or_a_wrong_type_is_refused(tmp_path):
  line = refusal(saved_workdir(tmp_path,
                               lambda c: c.update(model=None)))
  assert "'model' is null, not a section" in line, line
  line = refusal(saved_workdir(
      tmp_path, lambda c: c["model"].update(ch="thirty-two")))
  assert "model.ch='thirty-two'" in line, line


def test_malformed_json_names_the_file(tmp_path):
  line = refusal(saved_workdir(tmp_path, text='{"model": {"ch": 32,'))
  assert "is not valid JSON" in line and "line 1" in line, line
  line = refusal(saved_workdir(tmp_path, text="[1, 2]"))
  assert "holds a JSON list" in line, line
