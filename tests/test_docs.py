"""Every command block of README.md and docs/*.md runs as written, or is marked an excerpt.

A command block is a fenced block in a shell (``bash``, ``sh``, ``console``) or ``python``;
every fenced block names its language (``text`` for layouts and synopses). A block whose
opening fence follows the line ``<!-- excerpt -->`` is not run: it needs the real data sets,
the network, a GPU or hours. Every other command block runs here, in a fresh folder holding
the files the docs name (``home``: random-weight models, short synthetic clips, a small
synthetic corpus), with the substitutions of ``SUBSTITUTIONS`` applied:

- shell blocks run with bash (``set -euo pipefail``); a ``console`` block runs its ``$ ``
  lines and must print the output lines it shows;
- python blocks run as a script, ``python block.py``.

The published weights are random models of the same sizes (``$HEAR_CED_WEIGHTS``), and
downloads are off. ``hear-ced``, ``ced-distill``, ``ced-eval`` and ``python`` are served by
one process that imports torch and the CLIs once and forks a child per command, which
then runs with the command's own folder, environment, standard streams and exit status
(forking spares each of the dozens of commands its seconds of importing torch).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXCERPT = "<!-- excerpt -->"
SHELLS = {"bash", "sh", "console"}
COMMAND_LANGUAGES = SHELLS | {"python"}

TINY_STUDENT = " ".join(
    f"--set {setting}"
    for setting in (
        "model.embed_dim=32",
        "model.depth=1",
        "model.num_heads=2",
        "model.num_classes=24",
        "data.labels=corpus/class_labels_indices.csv",
        "optim.epochs=1",
        "optim.batch_size=4",
        "optim.warmup_steps=1",
        "optim.adam_8bit=false",
        "eval.every_epochs=1",
        "num_workers=0",
    )
)

# What a block runs instead of what it says, and why: (document, text, replacement, reason).
# Each entry must still match its document's text (checked below).
SUBSTITUTIONS = [
    (
        "*",
        "arecord -q -f S16_LE -c 1 -r 16000 -t raw",
        "python pcm.py 16000",
        "no microphone: clip.wav as raw 16-bit PCM",
    ),
    (
        "docs/tag.md",
        "ffmpeg -loglevel quiet -i stream.mp3 -f s16le -ac 1 -ar 8000 -",
        "python pcm.py 8000",
        "no ffmpeg or stream: clip.wav as raw 16-bit PCM at 8 kHz",
    ),
    (
        "*",
        "hf upload your-name/my-ced my-ced",
        "test -f my-ced/config.json",
        "no network: the folder that would be uploaded is checked instead",
    ),
    (
        "docs/tag.md",
        "export-onnx tiny.onnx -m tiny",
        "export-onnx tiny.onnx --model my_student.safetensors",
        "a small model (the README's block exports CED-Tiny)",
    ),
    (
        "docs/embed.md",
        "export-onnx tiny-emb.onnx -m tiny",
        "export-onnx tiny-emb.onnx --model my_student.safetensors",
        "a small model (exporting CED-Tiny takes longer)",
    ),
    (
        "docs/embed.md",
        "import csv\n",
        "import csv\nfrom hear_ced.cli import main\n"
        "main(['embed', 'recordings/', 'clip.wav', '--out', 'emb/'], standalone_mode=False)\n"
        "main(['embed', 'recordings/', '--out', 'emb-ts/', '--embeddings', 'both', '-m', 'tiny'],"
        " standalone_mode=False)\n",
        "the folders the block before writes",
    ),
    (
        "docs/deploy.md",
        "-m tiny",
        "--model my_student.safetensors",
        "a small model (the README's block exports CED-Tiny)",
    ),
    (
        "docs/deploy.md",
        "$ HEAR_CED_OFFLINE=1",
        "$ unset HEAR_CED_WEIGHTS; HEAR_CED_OFFLINE=1",
        "no weights folder, as the example assumes",
    ),
    (
        "docs/tag.md",
        "hear-ced tag recordings/ --device cuda --batch-size 64",
        "hear-ced tag recordings/ --device cpu --batch-size 64",
        "no GPU",
    ),
    (
        "*",
        "--init mini --out runs/my-tagger",
        "--init my_student.safetensors --out runs/my-tagger",
        "a head fitted on a one-block 32-wide model: seconds, where CED-Mini takes longer",
    ),
    (
        "docs/deploy.md",
        "hear-ced tag clip.wav --model my-ced ",
        "hear-ced convert runs/my-tagger/final.safetensors my-ced --to hf\n"
        "hear-ced tag clip.wav --model my-ced ",
        "the folder that hf download fetches",
    ),
    (
        "docs/deploy.md",
        'model = load_model_file("my-ced")',
        "from hear_ced.checkpoints import save_huggingface\n"
        'save_huggingface(load_model_file("runs/my-tagger/final.safetensors"), "my-ced")\n'
        'model = load_model_file("my-ced")',
        "the folder that hf download fetches",
    ),
    (
        "docs/finetune.md",
        "--out runs/my-tagger --epochs 20",
        "--out runs/other --epochs 1",
        "one short epoch, a second run folder",
    ),
    ("docs/finetune.md", "--set epochs=20", "--set epochs=1", "one short epoch"),
    ("*", "--k 20 --epochs 40 --mixup", "--k 20 --epochs 1 --mixup", "one stored epoch"),
    (
        "*",
        "ced-distill train distill/configs/as20k_mini.yaml",
        "ced-distill train distill/configs/as20k_mini.yaml " + TINY_STUDENT,
        "a one-block 32-wide student for one epoch, 32-bit Adam (8-bit Adam needs CUDA), "
        "the synthetic corpus's class names",
    ),
    (
        "docs/distill.md",
        "--train 1000 --eval 300 --seconds 10",
        "--train 8 --eval 4 --seconds 1",
        "a few short clips",
    ),
    (
        "docs/distill.md",
        "--teacher t2.pt",
        "--teacher t2.safetensors",
        "the teachers here are native files",
    ),
    ("docs/distill.md", "--k 20 --epochs 10", "--k 20 --epochs 1", "one stored epoch"),
    (
        "docs/performance.md",
        "from hear_ced.model import build_model\n",
        "import torch\nfrom hear_ced.model import build_model\nwaveform = torch.rand(1, 16000) - 0.5\n",
        "the block's waveform: one second of noise",
    ),
    (
        "docs/performance.md",
        "from hear_ced.export import export_onnx\n",
        "import numpy as np\nfrom hear_ced.export import export_onnx\nfrom hear_ced.model import "
        "build_model\nmodel = build_model('tiny', depth=1)\n"
        "waveform_np = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 16000)).astype('float32')\n",
        "the block's model and waveform: one-block CED-Tiny, one second of noise",
    ),
    (
        "docs/xares.md",
        "frames = encoder(audio)",
        "import torch\naudio = torch.rand(2, 32000) - 0.5\nframes = encoder(audio)",
        "the block's audio: two seconds of noise",
    ),
]


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository
    line: int  # of the opening fence
    language: str
    text: str
    excerpt: bool

    @property
    def name(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, start = [], None
    for number, line in enumerate(lines):
        fence = re.match(r"^\s*```(\S*)", line)
        if not fence:
            continue
        if start is None:
            start, language = number, fence.group(1)
            continue
        found.append(
            Block(
                doc=str(path.relative_to(ROOT)),
                line=start + 1,
                language=language,
                text="\n".join(lines[start + 1 : number]) + "\n",
                excerpt=start > 0 and lines[start - 1].strip() == EXCERPT,
            )
        )
        start = None
    assert start is None, f"{path.relative_to(ROOT)}:{start + 1}: fence never closed"
    return found


ALL_BLOCKS = [block for doc in DOCS for block in blocks(doc)]
# Blocks another test runs as written, on artefacts it builds: (text in the block, the test).
RUN_ELSEWHERE = (
    ("trust_remote_code=True", "tests/hear_ced/test_hf_remote.py, on an exported student"),
)
RUN_BLOCKS = [
    b
    for b in ALL_BLOCKS
    if b.language in COMMAND_LANGUAGES
    and not b.excerpt
    and not any(needle in b.text for needle, _ in RUN_ELSEWHERE)
]


def test_blocks_run_elsewhere_exist():
    for needle, test in RUN_ELSEWHERE:
        assert any(needle in b.text for b in ALL_BLOCKS), f"no block holds {needle!r} ({test})"


def substituted(block: Block) -> str:
    text = block.text
    for doc, old, new, _ in SUBSTITUTIONS:
        if doc in ("*", block.doc):
            text = text.replace(old, new)
    return text


def test_every_block_names_its_language():
    unnamed = [b.name for b in ALL_BLOCKS if not b.language]
    assert not unnamed, (
        f"fenced blocks without a language (bash/sh/console/python run here unless marked "
        f"{EXCERPT!r}; text for the others): {', '.join(unnamed)}"
    )


def test_every_substitution_applies():
    stale = [
        (doc, old)
        for doc, old, _, _ in SUBSTITUTIONS
        if not any(old in b.text for b in RUN_BLOCKS if doc in ("*", b.doc))
    ]
    assert not stale, f"substitutions that no run block contains any more: {stale}"


# ---------------------------------------------------------------------------------------
# The command server: one process imports torch and the CLIs; each command is a fork.

CLIENT = """
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(os.environ["DOCS_SERVER"])
request = {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}
socket.send_fds(s, [json.dumps(request).encode()], [0, 1, 2])
sys.exit(int(s.recv(16) or b"1"))
"""

SHELL_PRELUDE = """
served() { "$DOCS_PYTHON" -S -c "$DOCS_CLIENT" "$@"; }
hear-ced() { served hear-ced "$@"; }
ced-distill() { served ced-distill "$@"; }
ced-eval() { served ced-eval "$@"; }
python() { served python "$@"; }
"""


def run_command(argv: list[str]) -> int:
    """Run one served command in this (forked) process; returns its exit status."""
    import runpy
    import traceback

    import hear_ced.cli
    import hear_ced.distill.cli
    import hear_ced.eval.cli

    mains = {
        "hear-ced": hear_ced.cli.main,
        "ced-distill": hear_ced.distill.cli.main,
        "ced-eval": hear_ced.eval.cli.main,
    }
    name, args = argv[0], argv[1:]
    try:
        if name == "python" and args[:1] == ["-m"]:
            sys.argv = args[1:]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        elif name == "python" and args[:1] == ["-c"]:
            sys.argv = ["-c", *args[2:]]
            exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
        elif name == "python":
            sys.argv = args
            runpy.run_path(args[0], run_name="__main__")
        else:
            mains[name](args=args, prog_name=name)
        return 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


# Imported once by the server rather than by every command: what the commands spend most
# of their time importing (torch's compiler stack comes with its optimizers).
PRELOADED = [
    "torch",
    "torch._dynamo",
    "sklearn.metrics",
    "matplotlib.pyplot",
    "onnx",
    "onnxruntime",
    "hear_ced.cli",
    "hear_ced.export",
    "hear_ced.tagging",
    "hear_ced.distill.cli",
    "hear_ced.distill.finetune",
    "hear_ced.distill.train",
    "hear_ced.distill.extract",
    "hear_ced.eval.cli",
]


def serve(address: str) -> None:
    """Accept commands forever; each runs in a child with the client's streams."""
    import importlib
    import threading

    for module in PRELOADED:
        importlib.import_module(module)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(address)
    listener.listen(8)

    def answer(pid: int, conn: socket.socket) -> None:
        _, status = os.waitpid(pid, 0)
        conn.send(str(os.waitstatus_to_exitcode(status) % 256).encode())
        conn.close()

    while True:
        conn, _ = listener.accept()
        message, fds, _, _ = socket.recv_fds(conn, 1 << 18, 3)
        request = json.loads(message)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            listener.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            os._exit(run_command(request["argv"]))
        for fd in fds:
            os.close(fd)
        threading.Thread(target=answer, args=(pid, conn), daemon=True).start()


# ---------------------------------------------------------------------------------------
# The files the docs name.

PCM = """import sys
import numpy as np, soundfile as sf, soxr
audio, rate = sf.read("clip.wav", dtype="float32")
audio = soxr.resample(audio, rate, int(sys.argv[1]))
sys.stdout.buffer.write((audio * 32767).astype("<i2").tobytes())
"""


def write_home(home: Path, weights: Path) -> None:
    """Everything the blocks read, in a folder each block gets a copy of."""
    import numpy as np
    import soundfile as sf
    import torch

    from hear_ced.checkpoints import load_model_file, save_model
    from hear_ced.distill.data import prepare
    from hear_ced.distill.extract import SaveLogitsConfig, save_logits
    from hear_ced.distill.synth import SYNTH_CLASSES, synthesize
    from hear_ced.export import export_onnx
    from hear_ced.model import CED, CEDConfig, build_model
    from tests.hear_ced.layouts import save_original

    rng = np.random.default_rng(0)

    def noise(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
        return rng.uniform(-0.3, 0.3, (int(seconds * rate), channels)).astype("float32")

    torch.manual_seed(0)
    weights.mkdir()
    for size in ("tiny", "mini"):  # the published sizes' shapes, random weights
        save_model(build_model(size), weights / f"{size}.safetensors")
    save_original(build_model("mini"), home / "audiotransformer_mini_mAP_4896.pt")

    sf.write(home / "clip.wav", noise(2), 16000)
    sf.write(home / "other.flac", noise(1.5, 44100, 2), 44100)
    sf.write(home / "meeting.wav", noise(5), 16000)
    sf.write(home / "new_recording.wav", noise(1), 16000)
    (home / "recordings" / "hall").mkdir(parents=True)
    sf.write(home / "recordings" / "a.wav", noise(1), 16000)
    sf.write(home / "recordings" / "hall" / "b.flac", noise(1.2, 22050), 22050)
    rows = ["filename,labels"]
    for label in ("dog", "door"):
        (home / "sounds" / label).mkdir(parents=True)
        (home / "held_out" / label).mkdir(parents=True)
        sf.write(home / "held_out" / label / "0.wav", noise(1), 16000)
        for i in range(4):
            sf.write(home / "sounds" / label / f"{i}.wav", noise(1), 16000)
            rows.append(f"sounds/{label}/{i}.wav,{label}")
    (home / "sounds.csv").write_text("\n".join(rows) + "\n")
    (home / "finetune.yaml").write_text(
        "data: sounds\ninit: my_student.safetensors\nout_dir: runs/from-yaml\n"
    )
    (home / "pcm.py").write_text(PCM)

    small = CEDConfig(embed_dim=32, depth=1, num_heads=2, num_classes=len(SYNTH_CLASSES))
    student = CED(small).eval()
    save_model(student, home / "my_student.safetensors", labels=list(SYNTH_CLASSES))
    (home / "runs" / "my-tagger").mkdir(parents=True)
    tagger = CED(CEDConfig(embed_dim=32, depth=1, num_heads=2, num_classes=2)).eval()
    save_model(tagger, home / "runs" / "my-tagger" / "final.safetensors", labels=["dog", "door"])
    export_onnx(load_model_file(home / "my_student.safetensors"), home / "tiny.onnx")

    # The distillation recipe's inputs: wav lists, two teachers, a prepared corpus, its logits.
    corpus = synthesize(home / "corpus", 12, 6, clip_seconds=1.0, seed=0)
    shutil.copy(corpus / "train.tsv", home / "balanced.tsv")
    shutil.copy(corpus / "eval.tsv", home / "eval.tsv")
    teachers = []
    for i in (1, 2):
        torch.manual_seed(i)
        teachers.append(str(save_model(CED(small), home / f"t{i}.safetensors")))
    train_tsv = prepare(corpus / "train.tsv", home / "data", progress=False).labels_tsv
    save_logits(
        SaveLogitsConfig(
            teachers=teachers,
            train_tsv=str(train_tsv),
            out_dir=str(home / "logits"),
            k=20,
            epochs=1,
            batch_size=8,
        ),
        progress=False,
    )
    shutil.copytree(ROOT / "distill" / "configs", home / "distill" / "configs")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The home folder, the command server and the environment the blocks run in."""
    top = tmp_path_factory.mktemp("docs")
    home, weights = top / "home", top / "weights"
    home.mkdir()
    write_home(home, weights)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(top),
        "HEAR_CED_WEIGHTS": str(weights),
        "HEAR_CED_CACHE": str(top / "cache"),
        "HEAR_CED_FAST_CACHE": str(top / "fast-auto.json"),
        "HEAR_CED_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(top / "hf"),
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        # a short path: a socket's address is limited to about 100 bytes
        "DOCS_SERVER": os.path.join(tempfile.mkdtemp(prefix="docs"), "sock"),
        "DOCS_PYTHON": sys.executable,
        "DOCS_CLIENT": CLIENT,
    }
    server = subprocess.Popen(
        [sys.executable, "-c", f"from tests.test_docs import serve; serve({env['DOCS_SERVER']!r})"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not Path(env["DOCS_SERVER"]).exists():
        assert server.poll() is None and time.monotonic() < deadline, "command server did not start"
        time.sleep(0.1)
    yield home, env
    server.kill()
    server.wait()
    shutil.rmtree(os.path.dirname(env["DOCS_SERVER"]))


def console_script(text: str) -> tuple[str, list[str]]:
    """A console transcript's commands (``$ `` lines) and the output lines it shows."""
    commands, shown = [], []
    for line in text.splitlines():
        if line.startswith("$ "):
            commands.append(line[2:])
        elif line.strip() and line.strip() != "...":
            shown.append(line.strip())
    return "\n".join(commands) + "\n", shown


@pytest.mark.slow  # every command of the docs: about a minute of CPU in all, most of it set-up
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.name for b in RUN_BLOCKS])
def test_block_runs(block: Block, served, tmp_path):
    home, env = served
    folder = tmp_path / "work"
    shutil.copytree(home, folder, copy_function=os.link)
    text = substituted(block)
    shown: list[str] = []
    if block.language == "python":
        (folder / "block.py").write_text(text)
        script = "python block.py\n"
    elif block.language == "console":
        script, shown = console_script(text)
    else:
        script = text
    strict = "" if block.language == "console" else "set -euo pipefail\n"
    result = subprocess.run(
        ["bash", "-c", SHELL_PRELUDE + strict + script],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    where = f"{block.name} (mark it {EXCERPT!r} if it cannot run here)"
    assert block.language == "console" or result.returncode == 0, f"{where} failed:\n{output}"
    missing = [line for line in shown if line not in output]
    assert not missing, f"{where} does not print {missing}:\n{output}"
