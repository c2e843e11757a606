"""Cost of the timestamp-embedding methods relative to the scene embedding.

Compares, on the same clips and in the same run: the scene embedding; the
token grid from 1, 2 and 4 shifted passes (interpolated to 50 ms); and the
original wrapper's method (``load_model(published=True)``, see
``hear_ced.published``): its scene embedding and a separate 0.48 s window
around every 50 ms timestamp. Prints a Markdown table; ``--json`` writes the
raw figures.
"""

from __future__ import annotations

import argparse
import logging

import torch

import hear_ced.hear as hear
from bench.common import interleaved, paired_ratio
from ced_common import logs
from ced_common.files import write_json
from ced_common.tables import markdown_table
from hear_ced.hear import CEDEmbedder
from hear_ced.model import build_model
from hear_ced.published import PublishedEmbedder

# The module's own name also under ``python -m`` (where ``__name__`` is "__main__"),
# so its records follow the "bench" logger that ``logs.configure`` sets up.
log = logging.getLogger(__spec__.name if __spec__ else __name__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="mini")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write raw figures here")
    args = parser.parse_args()
    logs.configure()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.variant).eval()
    audio = torch.randn(args.clips, int(args.seconds * 16000)) * 0.1
    audio_seconds = args.clips * args.seconds
    default, published = CEDEmbedder(model), PublishedEmbedder(model)
    # name -> (what it resolves, the call); timed round-robin so all see the same load.
    methods = {"scene embedding": ("whole clip", lambda: hear.get_scene_embeddings(audio, default))}
    for passes in (1, 2, 4):
        embedder = CEDEmbedder(model, passes=passes)
        methods[f"timestamps, {passes} pass{'es' if passes > 1 else ''}"] = (
            f"{160 / passes:g} ms grid",
            lambda e=embedder: hear.get_timestamp_embeddings(audio, e),
        )
    methods["scene embedding, published=True"] = (
        "whole clip",
        lambda: hear.get_scene_embeddings(audio, published),
    )
    methods["timestamps, published=True (0.48 s window each)"] = (
        "50 ms, 0.48 s context",
        lambda: hear.get_timestamp_embeddings(audio, published),
    )
    log.info("timing %d methods, %d rounds", len(methods), args.repeats)
    timings = interleaved(
        {name: fn for name, (_, fn) in methods.items()},
        budget_s=float("inf"),
        max_rounds=args.repeats,
    )
    scene = timings["scene embedding"]
    print(f"CED-{args.variant}, {args.clips} x {args.seconds:g} s clips, {args.threads} threads")
    print(f"median of {args.repeats} interleaved rounds; cost: median per-round ratio\n")
    rows = [
        [
            name,
            resolution,
            f"{audio_seconds / timings[name].median:.1f}",
            f"{paired_ratio(timings[name], scene):.2f}x",
        ]
        for name, (resolution, _) in methods.items()
    ]
    header = ["method", "time resolution", "audio s / wall s", "cost vs scene"]
    print(markdown_table(header, rows))
    published_cost = {
        "scene": paired_ratio(timings["scene embedding, published=True"], scene),
        "timestamps": paired_ratio(
            timings["timestamps, published=True (0.48 s window each)"],
            timings["timestamps, 2 passes"],
        ),
    }
    print(
        f"\npublished=True vs default: scene {published_cost['scene']:.2f}x, "
        f"timestamps {published_cost['timestamps']:.2f}x"
    )
    if args.json:
        figures = {
            name: {**timings[name].to_dict(), "resolution": resolution}
            for name, (resolution, _) in methods.items()
        }
        figures["published_vs_default"] = published_cost
        write_json(args.json, figures)


if __name__ == "__main__":
    main()
