"""Every option and path is checked before any work and before any heavy import: one line,
exit status 2, nothing written, no torch loaded (so the answer comes in well under 2 s)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rrm_plugin
from tests.cli.conftest import expect_user_error

ROOT = Path(rrm_plugin.__file__).resolve().parent.parent
HEAVY = ("torch", "sae_lens", "vit_prisma", "transformer_lens", "numpy", "PIL")

# Runs each case's argv through `main` in one fresh interpreter (cwd: the scratch folder) and
# reports exit codes, stderr lines, seconds and which heavy modules got imported.
DRIVER = """
import contextlib, io, json, sys, time
from rrm_plugin.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    results.append({"code": code, "err": err.getvalue().splitlines(),
                    "seconds": time.perf_counter() - start})
print(json.dumps({"results": results, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


def bad_cases(s: Path) -> list[tuple[list[str], str]]:
    """(argv, the whole error line) for bad options and paths; `s` is the scratch folder."""
    img = s / "in" / "photos" / "digit.png"
    cards, model, release = s / "in" / "cards.json", s / "in" / "model", s / "in" / "release"
    lines = [
        (["trace", "/nonexistent.png", "--out", "t"],
         "rrm trace: error: no image file or folder /nonexistent.png"),
        (["trace", "0", "--device", "tpu9", "--out", "t"],
         "rrm trace: error: --device 'tpu9': expected cpu, cuda, cuda:N (a GPU index) or mps"),
        (["eval-saes", "--device", "cuda:x"],
         "rrm eval-saes: error: --device 'cuda:x': expected cpu, cuda, cuda:N (a GPU index) or "
         "mps"),
        (["train-saes", "--device", "gpu", "--out", "r"],
         "rrm train-saes: error: --device 'gpu': expected cpu, cuda, cuda:N (a GPU index) or mps"),
        (["faithfulness", "--n-images", "0", "--out", "f"],
         "rrm faithfulness: error: --n-images must be at least 1, got 0"),
        (["faithfulness", "--n-images", "3", "--image-indices", "1", "--out", "f"],
         "rrm faithfulness: error: --image-indices: give --n-images or --image-indices, not "
         "both"),
        (["faithfulness", "--image-indices", "4", "4", "--out", "f"],
         "rrm faithfulness: error: --image-indices: expected distinct indices >= 0, got [4, 4]"),
        (["train-saes", "--d-sae", "4", "--k", "16", "--out", "r"],
         "rrm train-saes: error: --k 16 is more than --d-sae 4: a TopK SAE keeps k of its d_sae "
         "latents per token"),
        (["trace", "0", "--out", ""],
         "rrm trace: error: argument --out: empty path; give a new folder or file name (see "
         "`rrm trace --help`)"),
        (["trace", "0", "--out", "."],
         "rrm trace: error: --out . is the current folder, which rrm would replace as a whole; "
         "give a new folder (e.g. --out ./results)"),
        (["lens", "--out", str(s / "in" / "..")],
         f"rrm lens: error: --out {s / 'in' / '..'} is a folder above the current one, which rrm "
         "would replace as a whole; give a new folder (e.g. --out ./results)"),
        (["lens", "--out", str(s / "in")],
         f"rrm lens: error: --out {s / 'in'} is the current folder, which rrm would replace as a "
         "whole; give a new folder (e.g. --out ./results)"),
        (["demo", "--out", ".."],
         "rrm demo: error: --out .. is a folder above the current one, which rrm would replace "
         "as a whole; give a new folder (e.g. --out ./results)"),
        (["trace", str(img), "--out", str(img.parent), "--overwrite"],
         f"rrm trace: error: --out {img.parent} holds the input {img}, which replacing --out "
         "would remove; give another --out"),
        (["train-saes", "--model-dir", str(model), "--images", str(img), "--d-sae", "8", "--k",
          "2", "--out", str(model)],
         f"rrm train-saes: error: --out {model} holds the input {model}, which replacing --out "
         "would remove; give another --out"),
        (["trace", "0", "--baselines", "missing.safetensors", "--out", "t"],
         "rrm trace: error: --baselines missing.safetensors: no such baselines file"),
        (["faithfulness", "--baselines", str(s / "in"), "--out", "f"],
         f"rrm faithfulness: error: --baselines {s / 'in'} is a folder; expected a baselines "
         "file"),
        (["debias", "--data", "missing.safetensors"],
         "rrm debias: error: --data missing.safetensors: no such data file (safetensors)"),
        (["debias", "--counts", "2", "0", "--out", "d"],
         "rrm debias: error: --counts must be at least 1, got 0"),
        (["debias", "--reference-model", "./nomodel", "--out", "d"],
         "rrm debias: error: --reference-model ./nomodel: no such model folder (config.json + "
         "model.safetensors) or model name"),
        (["trace", "0", "--node-threshold", "1.5", "--out", "t"],
         "rrm trace: error: --node-threshold must be in (0, 1], got 1.5"),
        (["trace", "0", "--edge-threshold", "0", "--out", "t"],
         "rrm trace: error: --edge-threshold must be in (0, 1], got 0.0"),
        (["trace", "0", "--target", "-1", "--out", "t"],
         "rrm trace: error: --target must be at least 0, got -1"),
        (["trace", "-2", "--out", "t"], "rrm trace: error: the image index must be at least 0, "
                                        "got -2"),
        (["trace", "0", "--no-viewer", "--feature-cards", str(cards), "--out", "t"],
         "rrm trace: error: --feature-cards is for the viewer; drop it or --no-viewer"),
        (["trace", "0", "--no-viewer", "--readouts", "curve", "--out", "t"],
         "rrm trace: error: --readouts is for the viewer; drop it or --no-viewer"),
        (["trace", "0", "--readouts", "some", "--out", "t"],
         "rrm trace: error: argument --readouts: invalid choice: 'some' (choose from 'curve', "
         "'all', 'none') (see `rrm trace --help`)"),
        (["trace", "0", "--feature-cards", "nocards.json", "--out", "t"],
         "rrm trace: error: --feature-cards nocards.json: no such feature cards file"),
        (["trace", "0", "--model", "./nomodel", "--out", "t"],
         "rrm trace: error: --model ./nomodel: no such model folder (config.json + "
         "model.safetensors) or model name"),
        (["trace", "0", "--model", str(s / "in"), "--out", "t"],
         f"rrm trace: error: --model {s / 'in'} has no config.json; expected a folder written by "
         "`rrm train-model` or save_model"),
        (["trace", "0", "--release", "./norelease", "--out", "t"],
         "rrm trace: error: --release ./norelease: no such SAE release folder or release name"),
        (["eval-saes", "--release", str(release)],
         f"rrm eval-saes: error: --release {release} is a folder of your own SAEs: give --model "
         "too"),
        (["eval-saes", "--out", str(model)],
         f"rrm eval-saes: error: --out {model} is a folder; expected a file path"),
        (["eval-saes", "--batch-size", "0"],
         "rrm eval-saes: error: --batch-size must be at least 1, got 0"),
        (["lens", "--blocks", "1", "-1", "--out", "l"],
         "rrm lens: error: --blocks must be at least 0, got -1"),
        (["lens", "--n-images", "0", "--out", "l"],
         "rrm lens: error: --n-images must be at least 1, got 0"),
        (["lens", "--n-probe-images", "-1", "--out", "l"],
         "rrm lens: error: --n-probe-images must be at least 0, got -1"),
        (["lens", "--probe-images", "nothere", "--out", "l"],
         "rrm lens: error: --probe-images: no image file or folder nothere"),
        (["faithfulness", "--images", str(img), "missing_dir", "--out", "f"],
         "rrm faithfulness: error: --images: no image file or folder missing_dir"),
        (["faithfulness", "--methods", "rrm", "bogus", "--out", "f"],
         "rrm faithfulness: error: --methods: unknown ['bogus']; expected some of ['rrm', "
         "'rrm_edge', 'non_linearised', 'random', 'random_authors', 'neuron']"),
        (["faithfulness", "--criterion", "top", "--out", "f"],
         "rrm faithfulness: error: --criterion: unknown 'top'; expected one of ['topn', 'topk', "
         "'threshold']"),
        (["faithfulness", "--ties", "coin", "--out", "f"],
         "rrm faithfulness: error: --ties: unknown 'coin'; expected one of ['raw', 'index', "
         "'random']"),
        (["faithfulness", "--chunks", str(cards), "--out", "f"],
         f"rrm faithfulness: error: --chunks {cards} is a file; expected a folder"),
        (["faithfulness", "--chunks", "f/chunks", "--out", "f"],
         "rrm faithfulness: error: --chunks f/chunks is inside --out f, which is replaced as a "
         "whole; give a chunk folder elsewhere"),
        (["features", "--layers", "-1", "--out", "feats"],
         "rrm features: error: --layers must be at least 0, got -1"),
        (["features", "--release", "none", "--out", "feats"],
         "rrm features: error: rrm features needs an SAE release: give --release NAME or FOLDER"),
        (["features", "--n-circuit-images", "-1", "--out", "feats"],
         "rrm features: error: --n-circuit-images must be at least 0, got -1"),
        (["baselines", "--release", "none"],
         "rrm baselines: error: --release none: baselines need an SAE release"),
        (["baselines", "--out", str(model)],
         f"rrm baselines: error: --out {model} is a folder; expected a file path"),
        (["train-model", "--steps", "0", "--out", "m"],
         "rrm train-model: error: --steps must be at least 1, got 0"),
        (["train-saes", "--model-dir", "nomodel", "--out", "r"],
         "rrm train-saes: error: --model-dir nomodel: no such model folder"),
        (["train-saes", "--model-dir", str(model), "--images", str(img), "--out", "r"],
         "rrm train-saes: error: to train own SAEs, give --d-sae and --k"),
        (["train-saes", "--model-dir", str(model), "--images", "imgs.safetensors", "--d-sae",
          "8", "--k", "2", "--out", "r"],
         "rrm train-saes: error: --images imgs.safetensors: no such images file (safetensors)"),
        (["view", "notrace"], "rrm view: error: no folder notrace (does not exist); expected an "
                              "`rrm trace --out` folder"),
        (["view", str(cards)], f"rrm view: error: no folder {cards} (is a file); expected an "
                               "`rrm trace --out` folder"),
    ]
    return lines


@pytest.fixture
def scratch(tmp_path):
    s = tmp_path / "scratch"
    (s / "in" / "model").mkdir(parents=True)
    (s / "in" / "model" / "config.json").write_text("{}")
    (s / "in" / "release").mkdir()
    (s / "in" / "photos").mkdir()
    # Only the image's existence is checked before the work.
    (s / "in" / "photos" / "digit.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (s / "in" / "cards.json").write_text("{}")
    return s


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.parent.rglob("*"))


def test_bad_options_and_paths_answer_before_any_heavy_import(scratch):
    cases = bad_cases(scratch)
    before = listing(scratch)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps([a for a, _ in cases])],
                          cwd=scratch / "in", env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    for (argv, line), result in zip(cases, report["results"], strict=True):
        assert (result["code"], result["err"]) == (2, [line]), argv
    # Nothing heavy was imported: the answers came from the checks alone (one interpreter for
    # all cases; each took well under 2 s even with the interpreter's start-up counted).
    assert report["heavy"] == []
    assert max(r["seconds"] for r in report["results"]) < 2.0
    # Nothing was written: no output, chunk folder, lock file or `..old.*` holding folder.
    assert listing(scratch) == before


def test_no_torch_before_the_answer_from_a_shell(scratch):
    """The user's view: a whole `python -m rrm_plugin.cli.main` answers in under 2 s."""
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "rrm_plugin.cli.main",
                           "trace", "/nonexistent.png", "--out", "t"], cwd=scratch, env=env,
                          capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    lines = [x for x in proc.stderr.splitlines() if not x.startswith("import time:")]
    imported = {x.split("|")[-1].strip().split(".")[0] for x in proc.stderr.splitlines()
                if x.startswith("import time:")}
    assert (proc.returncode, lines) == (2, ["rrm trace: error: no image file or folder "
                                            "/nonexistent.png"])
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
    # Start-up on a loaded 2-core machine dominates; the margin is generous for CI load.
    assert seconds < 10, seconds


def test_recipe_overrides_with_k_above_d_sae_are_refused_before_training(tmp_path, capsys,
                                                                         monkeypatch):
    import rrm_plugin.zoo.recipes as recipes

    def no_training(**kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(recipes, "train_digits_saes", no_training)
    expect_user_error(capsys, ["train-saes", "--k", "200", "--out", str(tmp_path / "r")],
                      r"^rrm train-saes: error: --k 200 is more than the d_sae 128 of "
                      r"blocks\.0\.hook_resid_post \(the recipe's unless --d-sae is given\): "
                      r"give --k <= --d-sae$")
    expect_user_error(capsys, ["train-saes", "--d-sae", "4", "--out", str(tmp_path / "r")],
                      r"^rrm train-saes: error: the recipe's k 8 is more than the d_sae 4 of "
                      r"blocks\.0\.hook_resid_post")
    assert list(tmp_path.iterdir()) == []


def test_topk_training_config_refuses_k_above_d_sae():
    from rrm_plugin.saes.training import TopKTrainingConfig

    with pytest.raises(ValueError, match=r"^k \(16\) must be at most d_sae \(4\)$"):
        TopKTrainingConfig(d_sae=4, k=16)
    with pytest.raises(ValueError, match=r"^n_steps must be at least 1, got 0$"):
        TopKTrainingConfig(d_sae=4, k=2, n_steps=0)
    assert TopKTrainingConfig(d_sae=4, k=4).k == 4  # k == d_sae is allowed


def test_faithfulness_choices_equal_the_library_names():
    from rrm_plugin.circuits.pruning import CRITERIA, TIES
    from rrm_plugin.cli import faithfulness
    from rrm_plugin.metrics.faithfulness import METHODS

    assert faithfulness.METHODS == METHODS
    assert faithfulness.CRITERIA == CRITERIA and faithfulness.TIES == TIES


def test_devices_the_machine_lacks_are_one_line(tmp_path, capsys):
    import torch

    if not torch.cuda.is_available():
        expect_user_error(capsys, ["eval-saes", "--device", "cuda:3"],
                          r"^rrm eval-saes: error: --device cuda:3: CUDA is not available on "
                          r"this machine$")
    else:
        n = torch.cuda.device_count()
        expect_user_error(capsys, ["eval-saes", "--device", f"cuda:{n}"],
                          rf"^rrm eval-saes: error: --device cuda:{n}: this machine has {n} "
                          r"CUDA device")
    if not torch.backends.mps.is_available():
        expect_user_error(capsys, ["trace", "0", "--device", "mps", "--out", str(tmp_path / "t")],
                          r"^rrm trace: error: --device mps: MPS is not available on this "
                          r"machine$")
    assert list(tmp_path.iterdir()) == []


def test_multi_line_messages_become_one_line(monkeypatch, capsys):
    import rrm_plugin.cli.listing as listing
    from rrm_plugin.errors import MissingFileError

    def upstream_style(args):  # a user error quoting an upstream library's multi-line message
        raise MissingFileError("We couldn't connect to 'https://huggingface.co'.\n"
                               "Check your connection.")

    monkeypatch.setattr(listing, "run", upstream_style)
    expect_user_error(capsys, ["list"], r"^rrm list: error: We couldn't connect to "
                                        r"'https://huggingface\.co'\. Check your connection\.$")


@pytest.mark.parametrize(("argv", "readouts"), [([], "curve"), (["--readouts", "all"], "all"),
                                                (["--readouts", "none"], "none")])
def test_trace_readouts_reach_the_config(monkeypatch, capsys, tmp_path, argv, readouts):
    from rrm_plugin.errors import RRMUserError
    from rrm_plugin.workflows import trace_folder

    seen = {}

    def stop(*args, config, **kwargs):
        seen["config"] = config
        raise RRMUserError("stopped here")

    monkeypatch.setattr(trace_folder, "trace_to_folder", stop)
    expect_user_error(capsys, ["trace", "0", "--out", str(tmp_path / "t"), *argv],
                      "stopped here")
    assert seen["config"].readouts == readouts and seen["config"].viewer


def test_trace_readouts_choices_equal_the_library_names():
    import argparse

    from rrm_plugin.cli import trace as trace_cli
    from rrm_plugin.viewer.steps import READOUTS

    parser = argparse.ArgumentParser()
    trace_cli.add_parser(parser.add_subparsers(), "trace")
    sub = parser._subparsers._group_actions[0].choices["trace"]
    action = next(a for a in sub._actions if a.dest == "readouts")
    assert tuple(action.choices) == READOUTS
