"""Every command that README.md and docs/ show runs as written: each
``python <entry point> ...`` line's flags parse against that entry point's
own flag definitions, its --config file loads with its overrides and
passes validate_config (tests/scripts/parse_commands.py), each argparse
script lists every option used, and each ``bash`` script exists and parses.
tests/test_docs_run.py then runs the train.py, train_classifier.py,
exporter, sample.py and evaluate.py commands as written, with tiny sizes;
test_benchmarks, test_kill_resume and test_bucket run the others."""

import collections
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
# Placeholders the docs write for a value of the reader's choosing.
PLACEHOLDERS = {"N": "2", "i": "0", "W": "workdir/digits", "C": "tiny8",
                "DIR": "workdir/digits", "PATH": "models/x"}
ARGPARSE_SCRIPTS = ("tests/scripts/kill_resume.py",
                    "tests/scripts/suite_profile.py",
                    "tests/scripts/spy_summary.py",
                    "ddpm_jax.interop.inception_weights")


def _command_lines():
  """(doc, command line) for each python / bash command in a code block or
  in inline code."""
  found = []
  for doc in DOCS:
    text = doc.read_text()
    chunks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    chunks += re.findall(r"`(python [^`\n]+|bash [^`\n]+)`", text)
    for chunk in chunks:
      for line in chunk.replace("\\\n", " ").splitlines():
        if line.strip().startswith("#"):
          continue
        line = re.sub(r"\s#\s.*$", "", line)
        for part in re.split(r"&&|;|\|", line):
          part = part.strip()
          if re.match(r"(python3?|bash) ", part) and not re.match(
              r"python3? -c ", part):
            found.append((doc.relative_to(ROOT).as_posix(), part))
  return found


def _entry_and_argv(words):
  """(entry point, argv) of a ``python ...`` command, or None for one that
  is not an entry point of this project (pytest, venv, -c)."""
  if words[1] == "-m":
    module = words[2]
    if not module.startswith("ddpm_jax"):
      return None
    return module, words[3:]
  if words[1].startswith("-") or not words[1].endswith(".py"):
    return None
  return words[1], words[2:]


def _argv(words):
  out = []
  for w in words:
    w = w.strip("[]")
    if not w:
      continue
    key, eq, value = w.partition("=")
    if eq and value in PLACEHOLDERS:
      w = f"{key}={PLACEHOLDERS[value]}"
    out.append(PLACEHOLDERS.get(w, w))
  return out


COMMANDS = _command_lines()


def test_the_docs_show_commands():
  # The extraction itself: the Quickstart and a few known commands.
  lines = [c for _, c in COMMANDS]
  assert any(c.startswith("python train.py --config configs/digits.py")
             for c in lines)
  assert any(c.startswith("python sample.py --workdir workdir/digits --sampler"
                          " ddim") for c in lines)
  assert any(c.startswith("python -m ddpm_jax.interop.export") for c in lines)
  assert len(lines) > 30


@pytest.mark.slow
def test_absl_commands_parse():
  by_entry = collections.defaultdict(list)
  for doc, line in COMMANDS:
    words = shlex.split(line)
    if words[0] not in ("python", "python3"):
      continue
    parsed = _entry_and_argv(words)
    if parsed is None or parsed[0] in ARGPARSE_SCRIPTS:
      continue
    entry, argv = parsed
    if not entry.startswith("ddpm_jax"):
      assert (ROOT / entry).is_file(), f"{doc}: {line}: no {entry}"
    by_entry[entry].append(_argv(argv))
  assert {"train.py", "sample.py", "evaluate.py", "train_classifier.py",
          "ddpm_jax.interop.export"} <= set(by_entry)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  # Every entry point in one process (tests/scripts/parse_commands.py).
  pairs = [("-m " + entry if entry.startswith("ddpm_jax") else entry, argvs)
           for entry, argvs in sorted(by_entry.items())]
  p = subprocess.run([sys.executable, "tests/scripts/parse_commands.py"],
                     input=json.dumps(pairs), cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-2000:]
  errors = json.loads(p.stdout.strip().splitlines()[-1])["errors"]
  assert not errors, "\n".join(errors)


@pytest.mark.parametrize("script", ARGPARSE_SCRIPTS)
def test_argparse_commands_name_real_options(script):
  uses = [shlex.split(line) for _, line in COMMANDS
          if script in shlex.split(line)[:3]]
  assert uses, f"no documented command runs {script}"
  cmd = ([sys.executable, "-m", script] if script.startswith("ddpm_jax")
         else [sys.executable, script])
  p = subprocess.run(cmd + ["--help"], cwd=ROOT, capture_output=True,
                     text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-2000:]
  for words in uses:
    for w in words:
      if w.startswith("--"):
        assert w.split("=")[0] in p.stdout, f"{script} has no {w}"


def test_bash_scripts_exist_and_parse():
  scripts = {shlex.split(line)[1] for _, line in COMMANDS
             if line.startswith("bash ")}
  assert scripts
  for script in sorted(scripts):
    assert (ROOT / script).is_file(), script
    p = subprocess.run(["bash", "-n", script], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0, f"{script}: {p.stderr}"
