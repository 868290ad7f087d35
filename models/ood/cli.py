"""``python -m models.ood fit|eval``: fit an artifact on CLINC150-style data, evaluate it.

fit   embeds the reference split's in-scope queries, fits the scorer, calibrates the
      threshold on the calibration split's in-scope queries, saves the artifact.
eval  scores a split's in-scope and out-of-scope queries with an artifact and prints
      AUROC, FPR@95, the share of out-of-scope caught and of in-scope kept at the
      calibrated threshold, and per-request latency; the last line is one JSON object.

Progress goes to stderr; results to stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.ood.artifact import OodError, check_encoder, load_artifact, save_artifact
from models.ood.calibrate import DEFAULT_KEEP, evaluate
from models.ood.data import load_split
from models.ood.detector import OodDetector, data_info, embed_split, fit_artifact
from models.ood.embed import load_encoder
from models.ood.encoding import EncoderConfig, fingerprint
from models.ood.latency import measure_latency
from models.ood.scoring import METHODS, ScorerConfig


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.ood",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", required=True, type=Path, help="folder of <split>.jsonl")
    common.add_argument("--cache-dir", type=Path, help="reuse embeddings across runs")
    common.add_argument("--threads", type=int, help="torch intra-op threads")
    common.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    common.add_argument("--model-dir", help="encoder folder (default: the bundled MiniLM)")

    fit = sub.add_parser("fit", parents=[common], help="fit and calibrate an artifact")
    fit.add_argument("--out", required=True, type=Path, help="artifact folder to write")
    fit.add_argument("--method", choices=METHODS, default="combined")
    fit.add_argument("--k", type=int, default=5, help="k-NN neighbour rank")
    fit.add_argument("--shrinkage", type=float, default=1e-4, help="covariance ridge")
    fit.add_argument("--layers", type=_ints, default=(2, 4, 6), help="e.g. 2,4,6")
    fit.add_argument("--max-length", type=int, default=128, help="tokens per text")
    fit.add_argument("--keep", type=float, default=DEFAULT_KEEP, help="in-scope share kept")
    fit.add_argument("--reference-split", default="train")
    fit.add_argument("--calibration-split", default="val")

    ev = sub.add_parser("eval", parents=[common], help="evaluate an artifact")
    ev.add_argument("--artifact", required=True, type=Path)
    ev.add_argument("--split", default="val")
    ev.add_argument("--latency-requests", type=int, default=200, help="0: skip latency")
    ev.add_argument("--batch-sizes", type=_ints, default=(8, 32))
    return parser


class _Steps:
    """Prints ``fit: <step> (<elapsed> s)`` to stderr: where a long fit is, and since when."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.began = time.monotonic()

    def __call__(self, step: str) -> None:
        took = time.monotonic() - self.began
        print(f"{self.command}: {step} ({took:.0f} s)", file=sys.stderr, flush=True)


def fit_command(args: argparse.Namespace) -> dict[str, Any]:
    say = _Steps("fit")
    scorer = ScorerConfig(method=args.method, k=args.k, shrinkage=args.shrinkage)
    say("loading the encoder")
    encoder = load_encoder(
        EncoderConfig(
            model_dir=args.model_dir,
            layers=args.layers,
            max_length=args.max_length,
            batch_size=args.batch_size,
            num_threads=args.threads,
        )
    )
    reference = load_split(args.data, args.reference_split).in_scope()
    calibration = load_split(args.data, args.calibration_split).in_scope()
    cached = f", cache {args.cache_dir}" if args.cache_dir else ", no cache"
    say(f"embedding {len(reference)} reference queries{cached}")
    reference_x = embed_split(encoder, reference, args.cache_dir)
    say(f"embedding {len(calibration)} calibration queries")
    calibration_x = embed_split(encoder, calibration, args.cache_dir)
    say(f"fitting the {scorer.method} scorer")
    artifact = fit_artifact(
        config=scorer,
        encoder=encoder.info,
        reference=(reference_x, reference.intents),
        calibration=calibration_x,
        data=data_info(reference, calibration),
        keep=args.keep,
    )
    saved = save_artifact(artifact, args.out)
    say(f"saved {args.out}")
    return {
        "artifact": str(args.out),
        "artifact_version": saved.version,
        "method": scorer.method,
        "threshold": saved.threshold,
        "keep": saved.keep,
        "reference_size": len(reference),
        "calibration_size": len(calibration),
    }


def eval_command(args: argparse.Namespace) -> dict[str, Any]:
    artifact = load_artifact(args.artifact)
    config = EncoderConfig(
        name=artifact.encoder.name,
        model_dir=args.model_dir,
        layers=artifact.encoder.layers,
        max_length=artifact.encoder.max_length,
        batch_size=args.batch_size,
        num_threads=args.threads,
    )
    check_encoder(artifact, fingerprint(config))  # before loading any weights
    detector = OodDetector(load_encoder(config), artifact)
    split = load_split(args.data, args.split)
    inside, outside = split.in_scope(), split.out_of_scope()
    s_in = detector.scorer.score(embed_split(detector.encoder, inside, args.cache_dir))
    s_out = detector.scorer.score(embed_split(detector.encoder, outside, args.cache_dir))
    metrics = evaluate(s_in, s_out, artifact.threshold)
    result: dict[str, Any] = {
        "split": args.split,
        "method": detector.method,
        "artifact_version": artifact.version,
        **metrics.as_dict(),
        "calibrated_on_this_split": inside.sha256() == artifact.data.calibration_sha256,
        "torch_threads": torch.get_num_threads(),
    }
    if args.latency_requests > 0:
        texts = list(inside.texts + outside.texts)
        random.Random(0).shuffle(texts)  # noqa: S311 - a fixed order, not crypto
        result["latency_ms"] = measure_latency(
            detector, texts, requests=args.latency_requests, batch_sizes=args.batch_sizes
        )
    return result


def _summary(result: dict[str, Any]) -> list[str]:
    lines = [f"{k}: {v}" for k, v in result.items() if not isinstance(v, dict)]
    for name, report in result.get("latency_ms", {}).items():
        figures = ", ".join(f"{k}={v:.2f}" for k, v in report.items())
        lines.append(f"latency {name} (ms): {figures}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = fit_command(args) if args.command == "fit" else eval_command(args)
    except (OodError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in _summary(result):
        print(line)
    print(json.dumps(result, sort_keys=True))
    return 0
