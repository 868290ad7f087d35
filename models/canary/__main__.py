"""``python -m models.canary build --data DIR [--size N] [--out FILE]``: build the frozen
vocabulary from a CLINC150-style train split's in-scope queries."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from models.canary.lexicon import VOCAB_FILE, build_vocabulary
from models.ood.data import load_split


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m models.canary", description=__doc__)
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--data", type=Path, required=True, help="folder with train.jsonl")
    parser.add_argument("--size", type=int, default=2000, help="words kept")
    parser.add_argument("--out", type=Path, default=VOCAB_FILE)
    args = parser.parse_args()
    split = load_split(args.data, "train").in_scope()
    vocab = build_vocabulary(split.texts, args.size)
    version = hashlib.sha256("\n".join(vocab).encode()).hexdigest()[:12]
    args.out.write_text(
        f"# lexicon {version}\n# the {len(vocab)} most frequent words of CLINC150 train "
        "(in-scope), most frequent first\n" + "\n".join(vocab) + "\n",
        encoding="utf-8",
    )
    print(f"{args.out}: {len(vocab)} words, version {version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
