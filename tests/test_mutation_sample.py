"""`scripts/mutation_sample.py`: a seeded uniform sample of mutmut's generated mutant names, and
its error when nothing was generated."""

import json
import random
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mutation_sample.py"


def sample(folder, *args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=folder,
                          capture_output=True, text=True)


def test_sample_is_seeded_uniform_over_every_meta_file_and_sorted(tmp_path):
    names = {"a/x.py.meta": [f"a.x.f__mutmut_{i}" for i in range(1, 8)],
             "a/b/y.py.meta": [f"a.b.y.g__mutmut_{i}" for i in range(1, 5)]}
    for path, keys in names.items():
        meta = tmp_path / "mutants" / path
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"exit_code_by_key": dict.fromkeys(keys)}))
    every = sorted(names["a/x.py.meta"] + names["a/b/y.py.meta"])
    got = sample(tmp_path, 5, 3)
    assert got.returncode == 0
    assert got.stdout.split() == sorted(random.Random(3).sample(every, 5))
    assert sample(tmp_path, 5, 3).stdout == got.stdout  # the same seed, the same sample
    assert sample(tmp_path, 50, 0).stdout.split() == every  # N above the total: all of them


def test_no_generated_mutants_is_an_error(tmp_path):
    got = sample(tmp_path, 5, 0)
    assert got.returncode == 1 and got.stdout == ""
    assert got.stderr.strip() == ("no generated mutants found under mutants/ (did mutmut's "
                                  "generation fail?)")
