"""Run keys: every setting that changes results is in the key, later passes use the key extended
by what was resolved before them, and a resumed run reuses chunks only when nothing changed.

The computations are counted: a reused chunk calls nothing, a changed setting recomputes exactly
the passes that depend on it, and a resumed run's numbers equal a fresh run's.
"""

import argparse
import shutil

import pytest
import torch

from rrm_plugin.cli.dataset import options_of
from rrm_plugin.cli.main import build_parser
from rrm_plugin.runs.chunks import ChunkStore, extend_key, run_key
from rrm_plugin.runs.distributed import Distributed
from rrm_plugin.runs.sharded import ShardedRun, concat, map_batches, sharded
from rrm_plugin.workflows.baselines_file import BaselinesOptions
from rrm_plugin.workflows.dataset_run import dataset_run, settings_of
from rrm_plugin.workflows.faithfulness_folder import FaithfulnessOptions
from rrm_plugin.workflows.features_folder import FeaturesOptions
from rrm_plugin.workflows.lens_folder import LensOptions
from rrm_plugin.workflows.sae_eval_file import SAEEvalOptions

ONE = Distributed(0, 1, 0, "cpu")
DATA = torch.arange(10.0)


def two_passes(store, *, key, baselines, data=DATA):
    """Pass "first" depends on `key`'s settings only; pass "second" also on `baselines`,
    resolved between the two (as the CLI resolves baselines after predicting labels)."""
    run = ShardedRun(ctx=ONE, key=key, store=store, progress=False)
    calls = []

    def first(sl):
        calls.append(("first", sl.start))
        return {"x": data[sl] * 2}

    def second(sl):
        calls.append(("second", sl.start))
        return {"y": data[sl] * baselines.sum() + baselines[sl.start % len(baselines)]}

    with sharded(run):
        x = concat(map_batches(first, n=len(data), batch_size=3, name="first"), "x")
        run.extend_key([baselines])
        y = concat(map_batches(second, n=len(data), batch_size=3, name="second"), "y")
    return x, y, calls, run


def fresh(baselines):
    x, y, _, _ = two_passes(None, key="k", baselines=baselines)
    return x, y


BASE_A = torch.tensor([1.0, 2.0, 3.0])
BASE_B = torch.tensor([1.0, 2.0, 4.0])  # same shape and dtype, one value changed


def test_identical_settings_reuse_every_chunk_and_compute_nothing(tmp_path):
    store = ChunkStore(tmp_path)
    x, y, calls, run = two_passes(store, key="k", baselines=BASE_A)
    assert len(calls) == 8 and run.computed == 8 and run.reused == 0  # 4 chunks per pass
    x2, y2, calls2, run2 = two_passes(store, key="k", baselines=BASE_A.clone())
    assert calls2 == [] and (run2.computed, run2.reused) == (0, 8)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert run2.keys == run.keys and len(set(run.keys)) == 2


def test_same_key_other_baselines_recomputes_the_later_pass_only(tmp_path):
    store = ChunkStore(tmp_path)
    two_passes(store, key="k", baselines=BASE_A)
    x, y, calls, run = two_passes(store, key="k", baselines=BASE_B)
    assert [c for c in calls if c[0] == "first"] == []  # does not depend on the baselines
    assert [c for c in calls if c[0] == "second"] == [("second", s) for s in (0, 3, 6, 9)]
    assert (run.computed, run.reused) == (4, 4)
    fx, fy = fresh(BASE_B)
    assert torch.equal(x, fx) and torch.equal(y, fy)
    assert not torch.equal(y, fresh(BASE_A)[1])
    # Both versions stay on disk under their own keys: going back reuses everything.
    x, y, calls, run = two_passes(store, key="k", baselines=BASE_A)
    assert calls == [] and torch.equal(y, fresh(BASE_A)[1])


def test_other_settings_recompute_every_pass(tmp_path):
    store = ChunkStore(tmp_path)
    two_passes(store, key=run_key({"seed": 1}), baselines=BASE_A)
    _, y, calls, run = two_passes(store, key=run_key({"seed": 2}), baselines=BASE_A)
    assert len(calls) == 8 and run.reused == 0


TENSOR = torch.arange(6.0).reshape(2, 3)


@pytest.mark.parametrize("changed", [
    pytest.param(lambda s, t: (s, [TENSOR + torch.eye(2, 3) * 1e-6]), id="one-value"),
    pytest.param(lambda s, t: (s, [TENSOR.double()]), id="dtype"),
    pytest.param(lambda s, t: (s, [TENSOR.reshape(3, 2)]), id="shape-same-bytes"),
    pytest.param(lambda s, t: (s, [TENSOR, torch.zeros(0)]), id="extra-empty-tensor"),
    pytest.param(lambda s, t: (s, [TENSOR[:, :2].reshape(-1), TENSOR[:, 2:].reshape(-1)]),
                 id="split-differently"),
    pytest.param(lambda s, t: ({**s, "seed": 43}, t), id="setting-value"),
    pytest.param(lambda s, t: ({**s, "new": None}, t), id="new-setting"),
    pytest.param(lambda s, t: ({**s, "methods": ["rrm", "random"][::-1]}, t), id="list-order"),
    pytest.param(lambda s, t: ({**s, "seed": "42"}, t), id="setting-type"),
])
def test_run_key_changes_with_every_setting_and_tensor(changed):
    settings = {"seed": 42, "methods": ["rrm", "random"], "baselines": None}
    key = run_key(settings, [TENSOR])
    assert run_key(dict(reversed(list(settings.items()))), [TENSOR.clone()]) == key
    assert run_key(*changed(settings, [TENSOR])) != key
    assert extend_key(key, [TENSOR]) != extend_key(key, changed(settings, [TENSOR + 1])[1])


# ---- the CLI's keys: every option and every resolved input ------------------------------------

OPTIONS = {"faithfulness": FaithfulnessOptions, "baselines": BaselinesOptions,
           "eval-saes": SAEEvalOptions, "features": FeaturesOptions, "lens": LensOptions}
DATASET_COMMANDS = tuple(OPTIONS)
# Options that change no number: where to write and how to show it (the device enters as its type).
# Written out here, not read from the code, so that an option moved out of the key is caught.
SHOW_ONLY = {"run", "out", "overwrite", "chunks", "keep_chunks", "debug", "no_progress", "device"}


class Ws(argparse.Namespace):
    pass


@pytest.fixture(scope="module")
def ws():
    from tests.attribution.conftest import random_saes, sharp_vit

    model = sharp_vit()
    return Ws(model=model, saes=random_saes(model), device="cpu")


def key_of(args, ws, tmp_path, *, images, labels=None):
    if args.chunks is None:
        args.chunks = tmp_path / "chunks"
    options = options_of(args, OPTIONS[args.command])  # what the command passes to its workflow
    with dataset_run(settings_of(options), ws, ONE, command=args.command, out=tmp_path / "out",
                     images=images, labels=labels, chunks=args.chunks,
                     keep_chunks=args.keep_chunks) as run:
        return run.key


def command_args(command):
    parser = build_parser()
    args = parser.parse_args([command, "--out", "out"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return args, sub.choices[command]._actions


def other_value(action, value):
    """A different valid value for an option (what a user could change)."""
    if isinstance(action, argparse._StoreTrueAction):
        return not value
    if action.choices:
        return next(c for c in action.choices if c != value)
    if action.nargs in ("+", "*"):
        return [*(value or []), "1"]
    if action.type is int or isinstance(value, int):
        return (value or 0) + 1
    if action.type is float or isinstance(value, float):
        return (value or 0.0) + 0.5
    return f"{value}-other"


def options(command):
    _, actions = command_args(command)
    return [(command, a.dest) for a in actions
            if a.dest not in SHOW_ONLY and a.dest != "help" and a.option_strings]


@pytest.mark.parametrize("command, dest", [o for c in DATASET_COMMANDS for o in options(c)])
def test_every_option_of_a_dataset_command_is_in_its_key(command, dest, ws, tmp_path):
    args, actions = command_args(command)
    images = torch.zeros(2, 3, 8, 8)
    key = key_of(args, ws, tmp_path, images=images)
    action = next(a for a in actions if a.dest == dest)
    setattr(args, dest, other_value(action, getattr(args, dest)))
    assert key_of(args, ws, tmp_path, images=images) != key


@pytest.mark.parametrize("command", DATASET_COMMANDS)
def test_a_workflows_settings_are_exactly_its_commands_options(command):
    """The options dataclass holds every option that changes a number and nothing else, under
    the option's name, so a notebook's call and the command's have one key (and the keys of
    chunk folders written before the workflows moved out of the CLI are unchanged)."""
    args, _ = command_args(command)
    expected = {k: v for k, v in vars(args).items() if k not in SHOW_ONLY | {"command"}}
    assert settings_of(options_of(args, OPTIONS[command])) == expected


@pytest.mark.parametrize("dest", sorted(SHOW_ONLY - {"run"}))
def test_where_and_how_to_show_are_not_in_the_key(dest, ws, tmp_path):
    """A rerun writing elsewhere, or quieter, finds the same chunks (device: only its type)."""
    args, _ = command_args("faithfulness")
    images = torch.zeros(2, 3, 8, 8)
    key = key_of(args, ws, tmp_path, images=images)
    other = {"device": "cpu:0", "chunks": tmp_path / "elsewhere", "keep_chunks": True,
             "no_progress": True, "debug": True, "overwrite": True}
    setattr(args, dest, other.get(dest, tmp_path / "other"))
    assert key_of(args, ws, tmp_path, images=images) == key


def perturbed(tensor):
    tensor = tensor.clone()
    tensor.view(-1)[0] += 1e-3
    return tensor


@pytest.mark.parametrize("what", ["model-weight", "sae-weight", "images", "labels",
                                  "labels-given"])
def test_every_resolved_input_is_in_the_key(what, ws, tmp_path):
    args, _ = command_args("faithfulness")
    images, labels = torch.rand(2, 3, 8, 8), torch.tensor([1, 2])
    key = key_of(args, ws, tmp_path, images=images, labels=labels)
    changed = {"images": images, "labels": labels}
    model, saes = ws.model, dict(ws.saes)
    if what == "model-weight":
        model = __import__("copy").deepcopy(model)
        with torch.no_grad():
            model.blocks[1].mlp.W_in.add_(1e-3)
    elif what == "sae-weight":
        hook = next(iter(saes))
        saes[hook] = __import__("copy").deepcopy(saes[hook])
        with torch.no_grad():
            saes[hook].W_dec[0, 0] += 1e-3
    elif what == "images":
        changed["images"] = perturbed(images)
    elif what == "labels":
        changed["labels"] = torch.tensor([1, 3])
    else:
        changed["labels"] = None
    other = Ws(model=model, saes=saes, device="cpu")
    assert key_of(args, other, tmp_path, **changed) != key


# ---- end to end: `rrm faithfulness` resumed with other baselines or labels --------------------


def faithfulness_argv(tmp_path, images, out, *extra):
    return ["faithfulness", "--images", str(images), "--methods", "random_authors",
            "--batch-size", "1", "--chunks", str(tmp_path / "chunks"), "--keep-chunks",
            "--out", str(tmp_path / out), *extra]


def run_cli(argv, capsys):
    from rrm_plugin.cli.main import main

    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def result_json(tmp_path, out):
    import json

    data = json.loads((tmp_path / out / "faithfulness.json").read_text())
    data["metadata"].pop("baselines")  # names the file, which is the same path
    return data


@pytest.mark.slow  # end to end: several `rrm faithfulness` runs
def test_faithfulness_resumed_with_other_baselines_in_the_same_file(tmp_path, capsys):
    from rrm_plugin.attribution.baselines import compute_baselines
    from rrm_plugin.workflows.inputs import dataset_images
    from rrm_plugin.workflows.workspace import load_workspace
    from tests.runs.driver import write_images

    images = write_images(tmp_path / "images", n=2)
    ws = load_workspace(model=None, release="rrm-digits-vit", device="cpu")
    pixels = dataset_images([str(images)], ws.model).images
    file = tmp_path / "baselines.safetensors"
    by = {s: compute_baselines(ws.model, ws.saes, pixels, statistic=s, progress=False)
          for s in ("median", "mean")}
    by["median"].save(file)
    argv = lambda out: faithfulness_argv(tmp_path, images, out, "--baselines", str(file))  # noqa
    # The predicted labels (2 chunks of one image) are computed before the baselines are
    # resolved, under the run's first key; the correct images (1 chunk) and the faithfulness
    # curves (2) after, under the key extended by the baselines.
    assert "5 chunks computed, 0 read back" in run_cli(argv("median"), capsys)
    by["mean"].save(file)
    assert "3 chunks computed, 2 read back" in run_cli(argv("mean"), capsys)
    shutil.copy(file, tmp_path / "fresh.safetensors")
    fresh = ["faithfulness", "--images", str(images), "--methods", "random_authors",
             "--batch-size", "1", "--chunks", str(tmp_path / "fresh_chunks"), "--out",
             str(tmp_path / "fresh"), "--baselines", str(tmp_path / "fresh.safetensors")]
    run_cli(fresh, capsys)
    assert result_json(tmp_path, "mean") == result_json(tmp_path, "fresh")
    assert result_json(tmp_path, "mean")["curves"] != result_json(tmp_path, "median")["curves"]
    by["median"].save(file)
    assert "0 chunks computed, 5 read back" in run_cli(argv("median-again"), capsys)
    assert result_json(tmp_path, "median-again") == result_json(tmp_path, "median")


@pytest.mark.slow  # end to end: several `rrm faithfulness` runs
def test_faithfulness_resumed_after_relabelling_the_same_files(tmp_path, capsys):
    """Class folders renamed (the same files in the same order, other labels): the images
    counted correct change, so nothing may be read back."""
    from PIL import Image

    import rrm_plugin

    test = rrm_plugin.load_test_set("digits-vit")
    root = tmp_path / "images"
    for cls in (1, 3):
        folder = root / str(cls)
        folder.mkdir(parents=True)
        for i in torch.nonzero(test.labels == cls)[:1, 0].tolist():
            pixels = (test.images[i].permute(1, 2, 0) * 255).round().byte().numpy()
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    run_cli(faithfulness_argv(tmp_path, root, "before"), capsys)
    (root / "3").rename(root / "4")  # the class-3 images are now labelled 4 (and wrong)
    out = run_cli(faithfulness_argv(tmp_path, root, "after"), capsys)
    assert "0 read back" in out
    before, after = result_json(tmp_path, "before"), result_json(tmp_path, "after")
    assert (before["n_images"], after["n_images"]) == (2, 1)
