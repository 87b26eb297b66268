"""Bad-input survey (issue 15): how `rrm` and the Python API react to bad inputs, for one tree.

Each case runs in a fresh interpreter against a frozen copy of the source (`git archive`), with a
scratch HOME / XDG_CACHE_HOME per case, HF_HUB_OFFLINE=1 and no RRM_PLUGIN_* variables. Recorded
per case: exit code, Python tracebacks printed, stderr lines, the first error line, whether the
tree's shipped files (`rrm_plugin/zoo/weights`, SHA-256 of every file) changed, wall time, and a
verdict with its reason. Shipped files changed by a case are restored before the next one.

    git archive 8f38167 | tar -x -C /tmp/old_tree
    git archive HEAD | tar -x -C /tmp/new_tree
    python scripts/bad_input_survey.py --tree /tmp/old_tree --out /tmp/survey_old.json
    python scripts/bad_input_survey.py --tree /tmp/new_tree --out /tmp/survey_new.json
    python scripts/bad_input_survey.py --table /tmp/survey_old.json /tmp/survey_new.json

`--table OLD NEW` prints the markdown table of docs/bad_inputs.md (verdicts judged again by this
script's rules) instead of running anything. Run the trees one after the other, not in parallel.
`chattr` makes the read-only folder (root ignores file modes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

SHIPPED = Path("rrm_plugin/zoo/weights")
TRACEBACK = "Traceback (most recent call last):"
RESULT_TAG = "SURVEY-RESULT "


@dataclass(frozen=True)
class Case:
    """One bad input. `argv` (CLI) or `code` (API body) may use {fx}, {out} and {case}.

    expect: "error" (refused with a readable message), "no_shipped_write" (any outcome that
    leaves the shipped files alone and prints no traceback), "steps5" (the SAE progress bars
    run 5 steps), "fast" (`--help` under 2 s), "untouched" (interrupted run leaves --out as it
    was), "api_error" (an exception raised by rrm_plugin's own checks).
    setup: "" | "out_file" | "out_other" | "readonly" | "previous_trace".
    """

    id: str
    title: str
    argv: tuple[str, ...] = ()
    code: str = ""
    expect: str = "error"
    setup: str = ""
    timeout: int = 300


def cli(id, title, *argv, expect="error", setup="", timeout=300) -> Case:
    return Case(id, title, argv=tuple(argv), expect=expect, setup=setup, timeout=timeout)


def api(id, title, code, timeout=300) -> Case:
    return Case(id, title, code=textwrap.dedent(code), expect="api_error", timeout=timeout)


TRACE = ("trace", "0", "--out", "{out}")
GRAPH_LOAD = "return describe(Graph.load('{fx}/graph_%s.json'))"

CASES: list[Case] = [
    cli("help", "`rrm --help` start-up time", "--help", expect="fast", timeout=120),
    # Shipped files and training options.
    cli("train_model_no_out", "`rrm train-model --steps 5` (no --out)", "train-model", "--steps",
        "5", expect="no_shipped_write", timeout=600),
    cli("baselines_no_out", "`rrm baselines` (no --out)", "baselines",
        expect="no_shipped_write", timeout=600),
    cli("train_saes_no_out", "`rrm train-saes --steps 5` (no --out)", "train-saes", "--steps",
        "5", expect="no_shipped_write", timeout=600),
    cli("train_saes_steps", "`rrm train-saes --out DIR --steps 5 --lr 0.05` (no --images)",
        "train-saes", "--out", "{out}", "--steps", "5", "--lr", "0.05", expect="steps5",
        timeout=600),
    cli("train_model_steps0", "`rrm train-model --out DIR --steps 0`", "train-model", "--out",
        "{out}", "--steps", "0"),
    cli("train_saes_own_no_width", "`rrm train-saes --model-dir OWN --images digit.png` without "
        "--d-sae / --k", "train-saes", "--out", "{out}", "--model-dir", "{fx}/model48",
        "--images", "{fx}/digit.png"),
    # Output folders.
    cli("trace_interrupt", "`rrm trace 37 --out DIR` interrupted (Ctrl-C) while writing; DIR "
        "holds an earlier trace of image 0", "trace", "37", "--out", "{out}", expect="untouched",
        setup="previous_trace", timeout=600),
    cli("trace_out_readonly", "`rrm trace 0 --out RO/trace`, RO not writable", "trace", "0",
        "--out", "{case}/ro/trace", setup="readonly"),
    cli("faithfulness_out_readonly", "`rrm faithfulness --n-images 4 --out RO/f`, RO not "
        "writable", "faithfulness", "--n-images", "4", "--out", "{case}/ro/f", setup="readonly",
        timeout=600),
    cli("trace_out_file", "`rrm trace 0 --out FILE` (an existing file)", *TRACE,
        setup="out_file"),
    cli("trace_out_other", "`rrm trace 0 --out DIR`, DIR holds another command's output (lens)",
        *TRACE, setup="out_other"),
    cli("demo_out_file", "`rrm demo --out FILE` (an existing file)", "demo", "--out", "{out}",
        setup="out_file", timeout=600),
    # trace: inputs and options.
    cli("trace_not_image", "`rrm trace notanimage.png` (a text file)", "trace",
        "{fx}/notanimage.png", "--out", "{out}"),
    cli("trace_missing_image", "`rrm trace missing.png` (no such file)", "trace",
        "{fx}/missing.png", "--out", "{out}"),
    cli("trace_wrong_size", "`rrm trace wrong_size.png` (40x30 PNG; digits-vit takes 24x24)",
        "trace", "{fx}/wrong_size.png", "--out", "{out}"),
    cli("trace_index_oob", "`rrm trace 5000` (held-out set has 359 images)", "trace", "5000",
        "--out", "{out}"),
    cli("trace_unknown_model", "`rrm trace 0 --model nope`", *TRACE, "--model", "nope"),
    cli("trace_unknown_release", "`rrm trace 0 --release nope`", *TRACE, "--release", "nope"),
    cli("trace_target_oob", "`rrm trace 0 --target 10` (classes 0..9)", *TRACE, "--target",
        "10"),
    cli("trace_target_negative", "`rrm trace 0 --target -3`", *TRACE, "--target", "-3"),
    cli("trace_node_threshold", "`rrm trace 0 --node-threshold 1.5`", *TRACE,
        "--node-threshold", "1.5"),
    cli("trace_missing_baselines", "`rrm trace 0 --baselines missing.safetensors`", *TRACE,
        "--baselines", "{fx}/missing.safetensors"),
    cli("trace_sae_width", "`rrm trace digit.png --model OWN48 --release rrm-digits-vit` "
        "(SAEs of width 64 on a d_model 48 model)", "trace", "{fx}/digit.png", "--out", "{out}",
        "--model", "{fx}/model48", "--release", "rrm-digits-vit"),
    cli("trace_unknown_option", "`rrm trace 0 --bogus`", *TRACE, "--bogus"),
    # lens.
    cli("lens_saes_nope", "`rrm lens --saes nope`", "lens", "--out", "{out}", "--saes", "nope"),
    cli("lens_release_nope", "`rrm lens --release nope`", "lens", "--out", "{out}", "--release",
        "nope"),
    cli("lens_batch0", "`rrm lens --batch-size 0`", "lens", "--out", "{out}", "--batch-size",
        "0"),
    cli("lens_n_images0", "`rrm lens --n-images 0`", "lens", "--out", "{out}", "--n-images",
        "0"),
    cli("lens_images_not_image", "`rrm lens --images notanimage.png`", "lens", "--out",
        "{out}", "--images", "{fx}/notanimage.png"),
    # baselines, faithfulness, eval-saes.
    cli("baselines_release_nope", "`rrm baselines --release nope`", "baselines", "--release",
        "nope"),
    cli("baselines_batch0", "`rrm baselines --batch-size 0 --out FILE`", "baselines",
        "--batch-size", "0", "--out", "{case}/b.safetensors"),
    cli("baselines_n_images0", "`rrm baselines --n-images 0 --out FILE`", "baselines",
        "--n-images", "0", "--out", "{case}/b.safetensors"),
    cli("faithfulness_batch0", "`rrm faithfulness --batch-size 0`", "faithfulness", "--out",
        "{out}", "--batch-size", "0"),
    cli("faithfulness_n_images0", "`rrm faithfulness --n-images 0`", "faithfulness", "--out",
        "{out}", "--n-images", "0"),
    cli("faithfulness_missing_images", "`rrm faithfulness --images missing.png`",
        "faithfulness", "--out", "{out}", "--images", "{fx}/missing.png"),
    cli("eval_saes_batch0", "`rrm eval-saes --batch-size 0`", "eval-saes", "--out",
        "{case}/e.json", "--batch-size", "0"),
    # Python API.
    api("api_pixels_255", "`attribute(...)` on images scaled 0..255", """
        graphs = attribute(model, saes, images * 255, baselines=baselines)
        return f"returned {len(graphs)} graphs (value {graphs[0].value:.3g})"
        """),
    api("api_float64", "`attribute(...)` on float64 images (float32 model)", """
        graphs = attribute(model, saes, images.double(), baselines=baselines)
        return f"returned {len(graphs)} graphs"
        """),
    api("api_float16", "`attribute(...)` on float16 images (float32 model)", """
        graphs = attribute(model, saes, images.half(), baselines=baselines)
        return f"returned {len(graphs)} graphs"
        """),
    api("api_bfloat16", "`attribute(...)` on bfloat16 images (float32 model)", """
        graphs = attribute(model, saes, images.bfloat16(), baselines=baselines)
        return f"returned {len(graphs)} graphs"
        """),
    api("api_nan_image", "`attribute(...)` on an image with a NaN pixel", """
        bad = images.clone()
        bad[0, 0, 0, 0] = float("nan")
        graphs = attribute(model, saes, bad, baselines=baselines)
        return f"returned {len(graphs)} graphs"
        """),
    api("api_classes_float", "`attribute(..., classes=3.5)`", """
        graphs = attribute(model, saes, images, baselines=baselines, classes=3.5)
        return f"target classes {[g.target_class for g in graphs]}"
        """),
    api("api_classes_str", "`attribute(..., classes=\"3\")`", """
        graphs = attribute(model, saes, images, baselines=baselines, classes="3")
        return f"target classes {[g.target_class for g in graphs]}"
        """),
    api("api_baselines_none", "`attribute(..., baselines=None)`", """
        graphs = attribute(model, saes, images, baselines=None)
        return f"returned {len(graphs)} graphs"
        """),
    api("api_scale_nan", "`FeatureIntervention(..., scale=nan)` inside `splice_saes()`", """
        edit = rrm_plugin.FeatureIntervention("blocks.1.hook_resid_post", features=[5],
                                              scale=float("nan"))
        with rrm_plugin.splice_saes(model, saes):
            logits = model.run_with_hooks(images, fwd_hooks=rrm_plugin.intervention_hooks([edit]))
        return f"logits finite: {bool(torch.isfinite(logits).all())}"
        """),
    api("api_intervention_outside", "intervention outside `splice_saes()`, as in the README "
        "(`intervention_hooks([edit])`)", """
        edit = rrm_plugin.FeatureIntervention("blocks.1.hook_resid_post", features=[5],
                                              scale=0.0)
        logits = model.run_with_hooks(images, fwd_hooks=rrm_plugin.intervention_hooks([edit]))
        return f"returned logits {list(logits.shape)}"
        """),
    api("api_intervention_outside_model", "intervention outside `splice_saes()`, "
        "`intervention_hooks([edit], model=model)` where that exists", """
        edit = rrm_plugin.FeatureIntervention("blocks.1.hook_resid_post", features=[5],
                                              scale=0.0)
        try:
            hooks = rrm_plugin.intervention_hooks([edit], model=model)
        except TypeError as err:
            if "model" not in str(err):
                raise
            hooks = rrm_plugin.intervention_hooks([edit])  # no model= in this tree
        logits = model.run_with_hooks(images, fwd_hooks=hooks)
        return f"returned logits {list(logits.shape)}"
        """),
    api("api_unknown_release", "`load_saes(\"nope\")`", """
        return f"returned {len(rrm_plugin.load_saes('nope'))} SAEs"
        """),
    api("api_sae_width", "`splice_saes(model48, saes of d_in 64)`", """
        from rrm_plugin.zoo.models import load_model_from_directory
        own = load_model_from_directory(Path("{fx}/model48"))
        with rrm_plugin.splice_saes(own, saes):
            logits = own(images)
        return f"returned logits {list(logits.shape)}"
        """),
    api("graph_class", "`Graph.load`: target class edited to 42 (10 classes)",
        GRAPH_LOAD % "class"),
    api("graph_metric", "`Graph.load`: metric edited to \"foo\"", GRAPH_LOAD % "metric"),
    api("graph_granularity", "`Graph.load`: granularity edited to \"pixel\"",
        GRAPH_LOAD % "granularity"),
    api("graph_value", "`Graph.load`: stored metric value edited (+1)", GRAPH_LOAD % "value"),
    api("graph_block", "`Graph.load`: layer 1's block edited to 3", GRAPH_LOAD % "block"),
    api("graph_d_sae", "`Graph.load`: layer 0's d_sae edited to 2", GRAPH_LOAD % "d_sae"),
    api("graph_feature_index", "`Graph.load`: a feature index set beyond d_sae (tensor file)",
        GRAPH_LOAD % "feature_index"),
    api("graph_removed_layer", "`Graph.load`: last layer removed from the JSON",
        GRAPH_LOAD % "removed_layer"),
]

# Shared by the API cases: the embedded model, its SAEs, two held-out images, the baselines.
API_PRELUDE = """
import json, sys, traceback
from pathlib import Path
import torch
import rrm_plugin
from rrm_plugin.attribution import Graph, attribute
from rrm_plugin.zoo.baselines import load_release_baselines
model = rrm_plugin.load_model("digits-vit")
saes = rrm_plugin.load_saes("rrm-digits-vit")
images = rrm_plugin.load_test_set("digits-vit").images[:2]
baselines = load_release_baselines("rrm-digits-vit")

def describe(g):
    return (f"loaded: class {g.target_class}, metric {g.metric}, granularity {g.granularity}, "
            f"blocks {[layer.block for layer in g.layers]}, d_sae {[l.d_sae for l in g.layers]}")

def body():
"""

API_EPILOGUE = """
try:
    result = {"outcome": "returned", "detail": str(body())}
except Exception as err:
    frames = traceback.extract_tb(err.__traceback__)
    text = err.args[0] if isinstance(err, KeyError) and err.args else err  # unquoted
    lines = str(text).strip().splitlines() or [""]
    result = {"outcome": "raised", "exc_type": type(err).__name__, "message": lines[0],
              "raised_in": frames[-1].filename if frames else "",
              "raising_line": (frames[-1].line or "").strip() if frames else ""}
print("SURVEY-RESULT " + json.dumps(result))
"""

# Fixtures, made once per tree by the tree's own code.
FIXTURES = """
import dataclasses, json, shutil, sys
from pathlib import Path
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
import rrm_plugin
from rrm_plugin.attribution import attribute
from rrm_plugin.zoo.baselines import load_release_baselines
from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.zoo.models import digits_vit_config, save_model

fx = Path(sys.argv[1])
fx.mkdir(parents=True, exist_ok=True)
(fx / "notanimage.png").write_text("this is a text file, not a PNG\\n")
Image.new("RGB", (40, 30), (200, 80, 40)).save(fx / "wrong_size.png")
test = rrm_plugin.load_test_set("digits-vit")
pixels = (test.images[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
Image.fromarray(pixels).save(fx / "digit.png")
cfg = dataclasses.replace(digits_vit_config(), d_model=48, d_head=12)
save_model(build_hooked_vit(cfg, seed=0).eval(), fx / "model48")

model = rrm_plugin.load_model("digits-vit")
saes = rrm_plugin.load_saes("rrm-digits-vit")
graph = attribute(model, saes, test.images[:1],
                  baselines=load_release_baselines("rrm-digits-vit"))[0]
graph.save(fx / "graph")
meta = json.loads((fx / "graph.json").read_text())

def edited(name, edit_meta=None, edit_tensors=None):
    m = json.loads(json.dumps(meta))
    if edit_meta:
        edit_meta(m)
    m["tensor_file"] = f"graph_{name}.safetensors"
    (fx / f"graph_{name}.json").write_text(json.dumps(m))
    tensors = load_file(fx / "graph.safetensors")
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, fx / f"graph_{name}.safetensors")

def setitem(*keys, value):
    def edit(m):
        for key in keys[:-1]:
            m = m[key]
        m[keys[-1]] = value(m[keys[-1]]) if callable(value) else value
    return edit

def feature_beyond(t):
    t["layers.0.features"][0] = meta["layers"][0]["d_sae"] + 100

edited("class", setitem("target", "class", value=42))
edited("metric", setitem("target", "metric", value="foo"))
edited("granularity", setitem("granularity", value="pixel"))
edited("value", setitem("target", "value", value=lambda v: v + 1.0))
edited("block", setitem("layers", 1, "block", value=3))
edited("d_sae", setitem("layers", 0, "d_sae", value=2))
edited("feature_index", edit_tensors=feature_beyond)
edited("removed_layer", lambda m: m["layers"].pop())
print("fixtures ready")
"""


# ---- running ------------------------------------------------------------------------------------
def file_hashes(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def mtimes(root: Path, depth: int = 2) -> dict[str, tuple[int, int]]:
    """(mtime, size) of the files under `root`, `depth` levels down (hidden folders too)."""
    found = {}
    try:
        entries = list(os.scandir(root))
    except OSError:  # removed while we looked
        return found
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                st = entry.stat()
                found[entry.path] = (st.st_mtime_ns, st.st_size)
            elif depth > 1 and entry.is_dir(follow_symlinks=False):
                found.update(mtimes(Path(entry.path), depth - 1))
        except OSError:
            pass
    return found


def case_env(tree: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RRM_PLUGIN_", "XDG_"))
           and k not in ("HF_HOME", "HF_HUB_CACHE", "TORCH_HOME", "PYTHONPATH")}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), PYTHONPATH=str(tree),
               HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    return env


def child_setup(*, nice: int) -> None:
    """In the child before exec: Ctrl-C as in a terminal (a shell's background job inherits
    SIGINT ignored, and Python then installs no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if nice:
        os.nice(nice)


@dataclass
class Run:
    rc: int | None
    wall_s: float
    stdout: str
    stderr: str
    interrupted_after_s: float | None = None


def run_process(cmd: list[str], *, tree: Path, home: Path, logs: Path, timeout: int,
                watch: Path | None = None) -> Run:
    """Run `cmd` in `tree`; with `watch`, send SIGINT as soon as a file under it is written
    (the command then runs at nice 10, so that this watcher gets the CPU on a loaded machine)."""
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / "stdout.txt", logs / "stderr.txt"
    before = mtimes(watch) if watch else {}
    interrupted = None
    start = time.monotonic()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=tree, env=case_env(tree, home), stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=lambda: child_setup(nice=10 if watch else 0))
        try:
            if watch is None:
                proc.wait(timeout=timeout)
            else:
                while proc.poll() is None:
                    if time.monotonic() - start > timeout:
                        raise subprocess.TimeoutExpired(cmd, timeout)
                    if interrupted is None and mtimes(watch) != before:
                        proc.send_signal(signal.SIGINT)
                        interrupted = time.monotonic() - start
                    time.sleep(0.002 if interrupted is None else 0.1)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this call started
            proc.wait()
            rc = None
    wall = time.monotonic() - start
    return Run(rc, round(wall, 2), out_path.read_text(errors="replace"),
               err_path.read_text(errors="replace"), interrupted)


def cli_command(python: str, argv: list[str]) -> list[str]:
    return [python, "-m", "rrm_plugin.cli.main", *argv]


def stderr_lines(text: str) -> list[str]:
    """Lines as a terminal shows them (a progress bar's carriage returns keep the last state)."""
    return [line.split("\r")[-1] for line in text.splitlines() if line.split("\r")[-1].strip()]


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*")


def first_error_line(text: str) -> str:
    lines = stderr_lines(text)
    for line in lines:
        if re.match(r"^(rrm|usage: rrm)[\w -]*: error:", line) or line.startswith("rrm: error"):
            return line[:120]
    if TRACEBACK in text:
        after = lines[lines.index(TRACEBACK) + 1:] if TRACEBACK in lines else lines
        for line in after:
            if EXCEPTION_LINE.match(line):
                return line[:120]
    for line in lines:
        if "error" in line.lower():
            return line.strip()[:120]
    return lines[-1].strip()[:120] if lines else ""


def progress_totals(text: str, desc: str) -> list[int]:
    pattern = re.compile(re.escape(desc) + r"[^:\r\n]*:\s*\d+%\|[^|]*\|\s*\d+/(\d+)")
    return sorted({int(total) for total in pattern.findall(text)})


class Survey:
    def __init__(self, tree: Path, scratch: Path, python: str):
        self.tree, self.scratch, self.python = tree, scratch, python
        self.shipped = tree / SHIPPED
        self.backup = scratch / "shipped_backup"
        self.fx = scratch / "fixtures"
        self.meta: dict = {}

    def prepare(self) -> None:
        if self.scratch.exists():
            for ro in self.scratch.glob("cases/*/ro"):
                subprocess.run(["chattr", "-i", str(ro)], check=False)
            shutil.rmtree(self.scratch)
        self.scratch.mkdir(parents=True)
        shutil.copytree(self.shipped, self.backup)
        self.pristine = file_hashes(self.shipped)
        run = run_process([self.python, "-c", FIXTURES, str(self.fx)], tree=self.tree,
                          home=self.scratch / "home" / "fixtures",
                          logs=self.scratch / "logs" / "fixtures", timeout=600)
        if run.rc != 0:
            raise SystemExit(f"fixtures failed (exit {run.rc}):\n{run.stderr[-3000:]}")
        self.restore_shipped()  # fixtures never write there, but be sure

    def restore_shipped(self) -> list[str]:
        now = file_hashes(self.shipped)
        changed = sorted(k for k in set(now) | set(self.pristine)
                         if now.get(k) != self.pristine.get(k))
        if changed:
            shutil.rmtree(self.shipped)
            shutil.copytree(self.backup, self.shipped)
        return changed

    def substitute(self, text: str, case_dir: Path) -> str:
        return text.replace("{fx}", str(self.fx)).replace("{out}", str(case_dir / "out")) \
            .replace("{case}", str(case_dir))

    def run_case(self, case: Case) -> dict:
        case_dir = self.scratch / "cases" / case.id
        case_dir.mkdir(parents=True)
        home, logs = self.scratch / "home" / case.id, self.scratch / "logs" / case.id
        out = case_dir / "out"
        record: dict = {"id": case.id, "title": case.title, "kind": "api" if case.code else "cli",
                        "expect": case.expect}
        guarded_before = self.setup(case, case_dir, out, record)
        try:
            if case.code:
                body = textwrap.indent(self.substitute(case.code, case_dir), "    ")
                cmd = [self.python, "-c", API_PRELUDE + body + API_EPILOGUE]
                run = run_process(cmd, tree=self.tree, home=home, logs=logs,
                                  timeout=case.timeout)
            elif case.expect == "fast":
                runs = [run_process(cli_command(self.python, list(case.argv)), tree=self.tree,
                                    home=home, logs=logs / str(i), timeout=case.timeout)
                        for i in range(3)]
                run = runs[-1]
                record["help_walls_s"] = [r.wall_s for r in runs]
                run.wall_s = statistics.median(r.wall_s for r in runs)
            else:
                argv = [self.substitute(a, case_dir) for a in case.argv]
                record["argv"] = ["rrm", *(a.replace(str(self.scratch), "$S") for a in argv)]
                if case.setup == "previous_trace":
                    run = self.interrupt_attempts(argv, case, case_dir, record)
                else:
                    run = run_process(cli_command(self.python, argv), tree=self.tree,
                                      home=home, logs=logs, timeout=case.timeout)
        finally:
            if case.setup == "readonly":
                subprocess.run(["chattr", "-i", str(case_dir / "ro")], check=False)
        record.update(self.observe(run, case, case_dir, out, guarded_before))
        record["shipped_changed"] = self.restore_shipped()
        record["verdict"], record["why"] = judge(record)
        return record

    def interrupt_attempts(self, argv: list[str], case: Case, case_dir: Path,
                           record: dict, attempts: int = 4) -> Run:
        """SIGINT as soon as the run writes a file; repeated (the earlier trace put back each
        time) until --out is left mixed or `attempts` runs: the writing window is short."""
        out, earlier = case_dir / "out", self.scratch / "earlier_trace"
        shutil.copytree(out, earlier)
        record["attempts"] = []
        for k in range(attempts):
            for path in case_dir.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            shutil.copytree(earlier, out)  # keeps the earlier files' modification times
            started = time.time_ns()
            run = run_process(cli_command(self.python, argv), tree=self.tree,
                              home=self.scratch / "home" / case.id / str(k),
                              logs=self.scratch / "logs" / case.id / str(k),
                              timeout=case.timeout, watch=case_dir)
            written = {str(p.relative_to(out)): p.stat().st_mtime_ns >= started
                       for p in out.rglob("*") if p.is_file()}
            changed = sorted(name for name, new in written.items() if new)
            files = len(written)
            leftovers = sorted(p.name for p in case_dir.iterdir() if p.name != "out")
            state = "unchanged" if not changed else "all replaced" if len(changed) == files \
                else "mixed"
            record["attempts"].append({
                "rc": run.rc, "interrupted_after_s": run.interrupted_after_s,
                "wall_s": run.wall_s, "out": state, "changed": changed, "files": files,
                "leftovers": leftovers, "tracebacks": (run.stderr + run.stdout).count(TRACEBACK)})
            if state == "mixed" or leftovers:
                break
        return run

    def redact(self, text: str) -> str:
        """Scratch and tree paths as $S and $TREE (the same text for both trees)."""
        return text.replace(str(self.scratch), "$S").replace(str(self.tree), "$TREE")

    def setup(self, case: Case, case_dir: Path, out: Path, record: dict) -> dict[str, str]:
        """Prepare --out as the case needs; returns the hashes of what must stay untouched."""
        if case.setup == "out_file":
            out.write_text("a user's file that --out must not replace\n")
        elif case.setup == "out_other":
            out.mkdir()
            (out / "lens.json").write_text('{"summary": "output of rrm lens"}\n')
            (out / "rrm-output.json").write_text('{"command": "lens", "files": ["lens.json"]}\n')
            (out / "notes.txt").write_text("a user's notes\n")
        elif case.setup == "readonly":
            (case_dir / "ro").mkdir()
            done = subprocess.run(["chattr", "+i", str(case_dir / "ro")], capture_output=True)
            record["readonly_how"] = "chattr +i" if done.returncode == 0 else \
                f"chattr failed: {done.stderr.decode().strip()}"
        elif case.setup == "previous_trace":
            first = run_process(cli_command(self.python, ["trace", "0", "--out", str(out)]),
                                tree=self.tree, home=self.scratch / "home" / "previous_trace",
                                logs=self.scratch / "logs" / "previous_trace", timeout=600)
            record["previous_trace"] = {"rc": first.rc, "wall_s": first.wall_s}
            self.meta["full_trace_s"] = first.wall_s
        return file_hashes(out)

    def observe(self, run: Run, case: Case, case_dir: Path, out: Path,
                guarded_before: dict[str, str]) -> dict:
        text = run.stderr + run.stdout
        stderr = self.redact(run.stderr)
        found: dict = {
            "rc": run.rc, "timed_out": run.rc is None, "wall_s": run.wall_s,
            "tracebacks": text.count(TRACEBACK), "stderr_lines": len(stderr_lines(stderr)),
            "error_line": first_error_line(stderr) if run.rc or TRACEBACK in text else "",
            "stderr_tail": "\n".join(stderr_lines(stderr)[-6:])[-1500:],
        }
        ours = re.findall(r'File "\$TREE/(rrm_plugin/[^"]+)", line (\d+), in (\w+)', stderr)
        if ours:  # the innermost frame of ours in the (last) traceback
            found["raised_at"] = "{}:{} ({})".format(*ours[-1])
        if case.code:
            results = [line[len(RESULT_TAG):] for line in run.stdout.splitlines()
                       if line.startswith(RESULT_TAG)]
            found["api"] = json.loads(self.redact(results[-1])) if results else None
            if found["api"] and found["api"].get("raised_in"):
                path = found["api"]["raised_in"]
                for root in ("$TREE/", "site-packages/", "lib/python3.11/"):
                    if root in path:
                        path = path.split(root, 1)[1]
                found["api"]["raised_in"] = path
        if case.setup in ("out_file", "out_other"):
            after = file_hashes(out)
            found["out_changed"] = sorted(k for k in set(after) | set(guarded_before)
                                          if after.get(k) != guarded_before.get(k))
            found["out_files"] = len(after)
            found["leftovers"] = sorted(p.name for p in case_dir.iterdir() if p.name != "out")
        if case.expect == "steps5":
            found["sae_progress_totals"] = progress_totals(run.stderr, "SAE blocks")
        if case.setup == "readonly":
            found["full_trace_s"] = self.meta.get("full_trace_s")
        return found

    def run(self, only: list[str] | None) -> dict:
        self.prepare()
        records = []
        order = sorted(CASES, key=lambda c: c.setup != "previous_trace")  # full trace time first
        for case in order:
            if only and case.id not in only:
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {case.id} ...", end=" ", flush=True)
            record = self.run_case(case)
            print(f"{record['verdict']} ({record['why']}; {record['wall_s']} s)", flush=True)
            records.append(record)
        rank = {case.id: k for k, case in enumerate(CASES)}
        records.sort(key=lambda r: rank[r["id"]])
        return {"tree": str(self.tree), "python": self.python, "date": time.ctime(),
                "load_average": os.getloadavg(), "cases": records, **self.meta}


# ---- verdicts ------------------------------------------------------------------------------------
def judge(r: dict) -> tuple[str, str]:
    """("ok" | "bad" | "timeout" | "inconclusive", the reasons) of one record."""
    problems = []
    if r["shipped_changed"]:
        problems.append(f"shipped files overwritten ({len(r['shipped_changed'])})")
    if r["timed_out"]:
        problems.append(f"no answer within {r['wall_s']:.0f} s")
    expect = r["expect"]
    if expect == "fast":
        if r["wall_s"] >= 2.0:
            problems.append(f"median {r['wall_s']:.2f} s over 3 runs (limit 2 s)")
    elif expect == "api_error":
        result = r.get("api")
        if result is None:
            problems.append("no result (the interpreter died)")
        elif result["outcome"] == "returned":
            problems.append(f"silently accepted: {result['detail']}")
        # A check of ours is a `raise` statement in rrm_plugin, not an error that torch or
        # the host raised from inside one of our lines.
        elif not (result["raised_in"].startswith("rrm_plugin/")
                  and result["raising_line"].startswith("raise")):
            problems.append(f"{result['exc_type']} raised by `{result['raising_line'][:60]}`"
                            f" in {result['raised_in']}")
    if expect == "steps5" and r["sae_progress_totals"] != [5]:  # seen even when killed
        problems.append(f"SAE progress bars ran {r['sae_progress_totals']} steps")
    if r["kind"] == "cli" and not r["timed_out"]:
        if expect == "untouched":
            problems += interrupt_problems(r["attempts"])
        elif r.get("out_changed"):
            problems.append(f"--out changed ({len(r['out_changed'])} files)")
        if expect == "error" and r["rc"] == 0:
            problems.append("exit 0: bad input accepted")
        if r["tracebacks"] and expect != "untouched":  # counted per attempt there
            problems.append(f"{r['tracebacks']} traceback(s)")
    if expect == "untouched" and not problems and \
            all(a["out"] == "all replaced" for a in r["attempts"]):
        return "inconclusive", "every interrupt landed after the run had finished writing"
    if problems:
        return ("timeout" if r["timed_out"] and len(problems) == 1 else "bad"), \
            "; ".join(problems)
    return "ok", {"fast": f"median {r['wall_s']:.2f} s over 3 runs",
                  "api_error": "raised by rrm_plugin's own check",
                  "no_shipped_write": "shipped files unchanged",
                  "steps5": "SAE progress bars ran 5 steps",
                  "untouched": "--out as it was, no leftovers"}.get(expect, "readable error")


def interrupt_problems(attempts: list[dict]) -> list[str]:
    problems = []
    for k, a in enumerate(attempts, 1):
        if a["out"] == "mixed":
            problems.append(f"attempt {k}: --out mixed, {len(a['changed'])} of {a['files']} "
                            f"files written by this run ({', '.join(a['changed'])}), the "
                            "rest from the earlier trace")
        if a["leftovers"]:
            problems.append(f"attempt {k}: leftovers {a['leftovers']}")
        if a["tracebacks"] and a["out"] != "all replaced":
            problems.append(f"attempt {k}: KeyboardInterrupt traceback")
    return problems


# ---- markdown ------------------------------------------------------------------------------------
def md(text: str, limit: int = 80) -> str:
    """Text for a table cell: no pipes or backticks, at most `limit` characters."""
    text = " ".join(text.split()).replace("|", "\\|").replace("`", "'")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def exit_text(rc: int) -> str:
    return f"exit {rc}" if rc >= 0 else f"died of {signal.Signals(-rc).name}"


def interrupt_cell(attempts: list[dict]) -> str:
    parts = []
    for a in attempts:
        when = "no SIGINT" if a["interrupted_after_s"] is None else \
            f"SIGINT at {a['interrupted_after_s']:.0f} s"
        state = {"mixed": f"--out mixed ({', '.join(a['changed'])} new, the other "
                          f"{a['files'] - len(a['changed'])} files still image 0's)",
                 "unchanged": "--out as it was",
                 "all replaced": "the run had finished"}[a["out"]]
        tb = " with a traceback" if a["tracebacks"] else ""
        parts.append(f"{when}: {exit_text(a['rc'])}{tb}, {state}"
                     + (f", leftovers {a['leftovers']}" if a["leftovers"] else ""))
    if len(set(p.split(": ", 1)[1] for p in parts)) == 1 and len(parts) > 1:
        return f"{len(parts)} tries, each {parts[0].split(': ', 1)[1]}"
    return "; ".join(f"try {k}, {p}" for k, p in enumerate(parts, 1))


def cell(r: dict | None) -> str:
    """One short cell of docs/bad_inputs.md."""
    if r is None:
        return "not run"
    mark = {"ok": "ok", "bad": "**BAD**", "timeout": "**TIMEOUT**",
            "inconclusive": "inconclusive"}[r["verdict"]] + ": "
    if r["kind"] == "api":
        result = r["api"] or {}
        if result.get("outcome") == "returned":
            return mark + f"no error; {md(result['detail'], 110)}"
        if r["verdict"] == "ok":
            return mark + f"`{result['exc_type']}`: {md(result['message'])}"
        return mark + (f"`{result['exc_type']}` from `{md(result['raising_line'], 40)}` in "
                       f"{result['raised_in']}: {md(result['message'], 60)}")
    if r["id"] == "help":
        return mark + f"{r['wall_s']:.2f} s (median of 3)"
    if r["expect"] == "untouched":
        return mark + interrupt_cell(r["attempts"])
    text = f"killed after {r['wall_s']:.0f} s" if r["timed_out"] else exit_text(r["rc"])
    if r["tracebacks"]:
        text += f", {'two chained tracebacks' if r['tracebacks'] == 2 else 'traceback'} " \
                f"({r['stderr_lines']} lines)"
    if r.get("readonly_how"):
        text += f" after {r['wall_s']:.0f} s"
        if r.get("raised_at"):
            text += f" (at {r['raised_at'].split(' ')[0]})"
    if r["shipped_changed"]:
        files = ", ".join(r["shipped_changed"])
        text += f", shipped file{'s' if len(r['shipped_changed']) > 1 else ''} overwritten " \
                f"({files})"
    if r["expect"] == "steps5":
        totals = r["sae_progress_totals"]
        text += f", SAE progress bars ran {totals[0] if len(totals) == 1 else totals} steps"
    if r.get("out_changed"):
        text += f", {len(r['out_changed'])} trace files written into the folder"
    if r["expect"] == "error" and r["rc"] == 0:
        text += ", accepted"
    if r["error_line"]:
        text += f": `{md(r['error_line'])}`"
    return mark + text


def table(old: dict, new: dict) -> str:
    for result in (old, new):  # judged again: the table follows the rules of this script
        for r in result["cases"]:
            r["verdict"], r["why"] = judge(r)
    by_old = {r["id"]: r for r in old["cases"]}
    by_new = {r["id"]: r for r in new["cases"]}
    rows = ["| case | before (8f38167) | now |", "|---|---|---|"]
    for case in CASES:
        rows.append(f"| {case.title} | {cell(by_old.get(case.id))} | "
                    f"{cell(by_new.get(case.id))} |")
    rows.append("")
    for name, result in (("before", old), ("now", new)):
        counts = {v: sum(r["verdict"] == v for r in result["cases"])
                  for v in ("ok", "bad", "timeout", "inconclusive")}
        rows.append(f"- {name}: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n)
                    + f" of {len(result['cases'])}")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, help="a source tree (`git archive` export)")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="scratch folder (default /tmp/survey_<tree name>; emptied first)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with the deps")
    parser.add_argument("--only", nargs="+", default=None, metavar="CASE", help="case ids")
    parser.add_argument("--table", nargs=2, type=Path, metavar=("OLD", "NEW"),
                        help="print the markdown table of two result files and exit")
    args = parser.parse_args()
    if args.table:
        old, new = (json.loads(p.read_text()) for p in args.table)
        print(table(old, new))
        return 0
    if args.tree is None or args.out is None:
        parser.error("give --tree and --out (or --table OLD NEW)")
    tree = args.tree.resolve()
    scratch = args.scratch or Path(f"/tmp/survey_{tree.name}")
    result = Survey(tree, scratch, args.python).run(args.only)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    bad = [r["id"] for r in result["cases"] if r["verdict"] != "ok"]
    print(f"{len(bad)} of {len(result['cases'])} cases bad: {', '.join(bad)}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
