"""Cost of the timestamp-embedding methods relative to the scene embedding.

Compares, on the same clips and in the same run: the scene embedding; the
token grid from 1, 2 and 4 shifted passes (interpolated to 50 ms); and the
original wrapper's method, a separate 0.48 s window around every 50 ms
timestamp. Prints a Markdown table; ``--json`` writes the raw figures.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import hear_ced.hear as hear
from hear_ced.hear import CEDEmbedder
from hear_ced.model import build_model


@torch.no_grad()
def windowed_timestamps(
    embedder: CEDEmbedder, audio: torch.Tensor, hop_ms: float = 50.0
) -> torch.Tensor:
    """The original wrapper: 48-frame (3x4 token) windows centred on each timestamp."""
    model = embedder.model
    mel = model.mel(audio)
    half = 24
    padded = torch.nn.functional.pad(mel, (half, half), value=float(mel.min()))
    n_frames = mel.shape[-1]
    centres = torch.arange(0, n_frames, hop_ms / 10).long()
    windows = torch.stack([padded[..., c : c + 2 * half] for c in centres.tolist()], dim=1)
    b, n = windows.shape[:2]
    tokens = model.tokens(windows.flatten(0, 1))
    return tokens.mean(dim=(1, 2)).view(b, n, -1)


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="mini")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write raw figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.variant).eval()
    audio = torch.randn(args.clips, int(args.seconds * 16000)) * 0.1
    audio_seconds = args.clips * args.seconds
    rows = {}
    scene = median_seconds(
        lambda: hear.get_scene_embeddings(audio, CEDEmbedder(model)), args.repeats
    )
    rows["scene embedding"] = (scene, "whole clip")
    for passes in (1, 2, 4):
        embedder = CEDEmbedder(model, passes=passes)
        took = median_seconds(
            lambda e=embedder: hear.get_timestamp_embeddings(audio, e), args.repeats
        )
        rows[f"timestamps, {passes} pass{'es' if passes > 1 else ''}"] = (
            took,
            f"{160 / passes:g} ms grid",
        )
    took = median_seconds(lambda: windowed_timestamps(CEDEmbedder(model), audio), args.repeats)
    rows["timestamps, 0.48 s windows (original wrapper)"] = (took, "50 ms, 0.48 s context")
    print(f"CED-{args.variant}, {args.clips} x {args.seconds:g} s clips, {args.threads} threads\n")
    print("| method | time resolution | audio s / wall s | cost vs scene |")
    print("|---|---|---|---|")
    for name, (took, resolution) in rows.items():
        print(f"| {name} | {resolution} | {audio_seconds / took:.1f} | {took / scene:.2f}x |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {k: {"seconds": v[0], "resolution": v[1]} for k, v in rows.items()}, fh, indent=2
            )


if __name__ == "__main__":
    main()
